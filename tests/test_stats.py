import math

import numpy as np
import pandas as pd
import pytest

from kdpipe.metrics import FUNCTIONAL_METRICS, HIGHER_IS_CLOSER
from kdpipe.stats import (adjust_pvalues, asymmetry, compare_methods, mann_whitney, scaling,
                          toward_teacher)

NAN = float("nan")
P_SEPARATED_5_5 = 2 / math.comb(10, 5)  # exact two-sided p of fully separated samples of 5 and 5


def model(setup, method, alpha, temperature, width, seed, teacher_id=None, **values):
    """One student row of the models table; metrics not given are NaN."""
    row = {"setup": setup, "dataset": "toy", "arch": "mlp", "role": "student",
           "teacher_id": teacher_id or f"{setup}-t0", "method": method, "alpha": alpha,
           "temperature": temperature, "width": float(width), "seed": seed}
    row.update({metric: NAN for metric in FUNCTIONAL_METRICS})
    row.update(values)
    return row


def siddo(setup, width, seed, teacher_id=None, **values):
    return model(setup, "siddo", 0.0, NAN, width, seed, teacher_id, **values)


def teacher(setup):
    row = model(setup, "", NAN, NAN, 1, 0, accuracy=0.9)
    row["role"] = "teacher"
    return row


def all_metrics(base, seed):
    return {metric: base + 0.01 * seed for metric in FUNCTIONAL_METRICS}


# ---- mann_whitney -----------------------------------------------------------------------------

def test_mann_whitney_fully_separated():
    high, low = [6, 7, 8, 9, 10], [1, 2, 3, 4, 5]
    result = mann_whitney(high, low)
    assert (result["n1"], result["n2"]) == (5, 5)
    assert result["u"] == 25 and result["effect_size"] == 1.0
    assert result["p"] == pytest.approx(P_SEPARATED_5_5, rel=1e-12)
    assert (result["median_1"], result["median_2"]) == (8.0, 3.0)
    reverse = mann_whitney(low, high)
    assert reverse["u"] == 0 and reverse["effect_size"] == -1.0
    assert reverse["p"] == pytest.approx(P_SEPARATED_5_5, rel=1e-12)


def test_mann_whitney_ties_count_half():
    # pairs with x > y: (3, 2); tied: (2, 2) -> U = 1.5 of 6 pairs, effect 2 * 1.5 / 6 - 1
    result = mann_whitney([1, 2, 3], [2, 4])
    assert result["u"] == 1.5
    assert result["effect_size"] == pytest.approx(-0.5)
    assert 0 < result["p"] <= 1


def test_mann_whitney_drops_nan_and_handles_empty_side():
    result = mann_whitney([1.0, NAN, 2.0], [3.0, 4.0, NAN])
    assert (result["n1"], result["n2"], result["u"]) == (2, 2, 0.0)
    empty = mann_whitney([NAN], [1.0, 2.0])
    assert (empty["n1"], empty["n2"]) == (0, 2)
    assert all(math.isnan(empty[k]) for k in ("u", "p", "effect_size", "median_1"))
    assert empty["median_2"] == 1.5


# ---- toward_teacher ---------------------------------------------------------------------------

def test_toward_teacher_directions():
    for metric in HIGHER_IS_CLOSER:
        assert toward_teacher(metric, 0.9, 0.8) and not toward_teacher(metric, 0.8, 0.9)
    for metric in ("activation_distance", "js_divergence", "rank_disagreement"):
        assert toward_teacher(metric, 0.1, 0.2) and not toward_teacher(metric, 0.2, 0.1)


def test_toward_teacher_false_on_equality_or_nan_and_rejects_other_metrics():
    assert not toward_teacher("correct_agreement", 0.5, 0.5)
    assert not toward_teacher("js_divergence", 0.5, 0.5)
    assert not toward_teacher("correct_agreement", NAN, 0.5)
    assert not toward_teacher("js_divergence", 0.5, NAN)
    with pytest.raises(ValueError):
        toward_teacher("accuracy", 0.9, 0.8)


# ---- adjust_pvalues ---------------------------------------------------------------------------

def test_adjust_pvalues_hand_worked():
    p = [0.01, 0.04, 0.03, 0.5]
    # Holm: sorted 0.01, 0.03, 0.04, 0.5 times 4, 3, 2, 1 = 0.04, 0.09, 0.08, 0.5 -> running max
    np.testing.assert_allclose(adjust_pvalues(p, "holm"), [0.04, 0.09, 0.09, 0.5])
    # BH: sorted times 4/1, 4/2, 4/3, 4/4 = 0.04, 0.06, 0.0533, 0.5 -> running min from the top
    np.testing.assert_allclose(adjust_pvalues(p, "bh"), [0.04, 0.16 / 3, 0.16 / 3, 0.5])
    np.testing.assert_array_equal(adjust_pvalues(p, "none"), p)


def test_adjust_pvalues_clips_and_keeps_nan_out_of_the_family():
    np.testing.assert_allclose(adjust_pvalues([0.6, 0.7], "holm"), [1.0, 1.0])
    np.testing.assert_allclose(adjust_pvalues([0.6, 0.7], "bh"), [0.7, 0.7])
    # the NaN does not count: the family has size 2, as above
    holm = adjust_pvalues([0.02, NAN, 0.03], "holm")
    np.testing.assert_allclose(holm, [0.04, NAN, 0.04])
    bh = adjust_pvalues([0.02, NAN, 0.03], "bh")
    np.testing.assert_allclose(bh, [0.03, NAN, 0.03])
    with pytest.raises(ValueError):
        adjust_pvalues([0.1], "bonferroni")


# ---- compare_methods --------------------------------------------------------------------------

def comparison_models():
    """Setup "a", T = 1, width 1: kd (high values, low js_divergence) and rcd at alphas 0.1 and
    0.5; siddo once per seed. Decoys that must not be matched: siddo of another width, siddo of
    another teacher, an rcd group without kd, a teacher row."""
    rows = [teacher("a")]
    for seed in range(5):
        for alpha in (0.1, 0.5):
            rows.append(model("a", "kd", alpha, 1.0, 1, seed,
                              **{**all_metrics(0.9, seed), "js_divergence": 0.1 + 0.01 * seed}))
            rows.append(model("a", "rcd", alpha, 1.0, 1, seed, **all_metrics(0.501, seed)))
        rows.append(model("a", "rcd", 0.9, 1.0, 1, seed, **all_metrics(0.501, seed)))
        rows.append(siddo("a", 1, seed, **all_metrics(0.5, seed)))
        rows.append(siddo("a", 2, seed, **all_metrics(0.0, seed)))
        rows.append(siddo("a", 1, seed, teacher_id="a-t9", **all_metrics(0.0, seed)))
    return pd.DataFrame(rows)


def test_compare_methods_table():
    table = compare_methods(comparison_models())
    assert list(table.columns) == ["setup", "teacher_id", "alpha", "temperature", "width", "metric",
                                   "comparison", "n1", "n2", "u", "p", "effect_size", "median_1",
                                   "median_2", "toward_teacher", "significant"]
    # two kd groups (alpha 0.1, 0.5) x six metrics x three comparisons; rcd at 0.9 has no kd
    assert len(table) == 2 * 6 * 3
    assert sorted(table["alpha"].unique()) == [0.1, 0.5]
    key = ["setup", "alpha", "temperature", "width", "metric", "comparison"]
    pd.testing.assert_frame_equal(table, table.sort_values(key, ignore_index=True))
    # the same five siddo models serve both alphas; the decoys are not among them
    versus_siddo = table[table["comparison"] != "kd_vs_rcd"]
    assert (versus_siddo["n2"] == 5).all()
    np.testing.assert_allclose(versus_siddo["median_2"], 0.52)


def test_compare_methods_values_and_significance():
    table = compare_methods(comparison_models()).set_index(["alpha", "metric", "comparison"])
    for alpha in (0.1, 0.5):
        for metric in FUNCTIONAL_METRICS:
            for comparison in ("kd_vs_siddo", "kd_vs_rcd"):
                row = table.loc[(alpha, metric, comparison)]
                assert row["p"] == pytest.approx(P_SEPARATED_5_5)
                # kd is above its controls everywhere but in js_divergence
                above = metric != "js_divergence"
                assert row["u"] == (25 if above else 0)
                assert row["effect_size"] == (1.0 if above else -1.0)
                closer = (metric in HIGHER_IS_CLOSER) == above
                assert row["toward_teacher"] == closer and row["significant"] == closer
            # rcd is 0.001 above siddo seed by seed: rcd_i > siddo_j for j <= i, U = 15 of 25
            row = table.loc[(alpha, metric, "rcd_vs_siddo")]
            assert row["u"] == 15 and row["effect_size"] == pytest.approx(0.2)
            assert row["p"] > 0.05 and not row["significant"]


def test_masked_comparisons_appear_only_where_kd_masked_was_trained():
    models = comparison_models()
    masked = [model("a", "kd-masked", 0.1, 1.0, 1, seed, **all_metrics(0.7, seed)) for seed in range(5)]
    masked += [model("a", "rcd-masked", 0.1, 1.0, 1, seed, **all_metrics(0.6, seed)) for seed in range(5)]
    table = compare_methods(pd.concat([models, pd.DataFrame(masked)], ignore_index=True))
    at_01 = table[table["alpha"] == 0.1]
    assert set(at_01["comparison"]) == {"kd_vs_siddo", "kd_vs_rcd", "rcd_vs_siddo",
                                        "kd-masked_vs_siddo", "kd-masked_vs_rcd-masked",
                                        "rcd-masked_vs_siddo", "kd-masked_vs_kd"}
    assert set(table.loc[table["alpha"] == 0.5, "comparison"]) == {
        "kd_vs_siddo", "kd_vs_rcd", "rcd_vs_siddo"}
    row = at_01[(at_01["metric"] == "prediction_agreement")
                & (at_01["comparison"] == "kd-masked_vs_kd")].iloc[0]
    # kd-masked sits below kd at every seed: fully separated, not toward the teacher
    assert row["u"] == 0 and row["effect_size"] == -1 and not row["toward_teacher"]
    assert set(asymmetry(pd.concat([models, pd.DataFrame(masked)])).method) == {
        "kd", "rcd", "kd-masked", "rcd-masked"}


def test_compare_methods_corrections():
    models = comparison_models()
    holm = compare_methods(models, correction="holm")
    assert list(holm.columns)[-1] == "p_adjusted"
    # 36 tests in the family: Holm multiplies the smallest p by 36, so nothing survives
    assert holm["p_adjusted"].min() == pytest.approx(36 * P_SEPARATED_5_5)
    assert not holm["significant"].any()
    # BH: the 24 tied smallest p are multiplied by 36 / 24, and stay below 0.05
    bh = compare_methods(models, correction="bh")
    plain = compare_methods(models)
    smallest = bh["p"] == bh["p"].min()
    assert smallest.sum() == 24
    assert bh.loc[smallest, "p_adjusted"].to_numpy() == pytest.approx(1.5 * P_SEPARATED_5_5)
    assert (bh["significant"] == plain["significant"]).all()
    assert "p_adjusted" not in plain.columns


def test_compare_methods_level_and_missing_arm():
    models = comparison_models()
    assert not compare_methods(models, level=P_SEPARATED_5_5)["significant"].any()
    no_rcd = compare_methods(models[models["method"] != "rcd"], metrics=["correct_agreement"])
    missing = no_rcd[no_rcd["comparison"] != "kd_vs_siddo"]
    assert len(no_rcd) == 6 and len(missing) == 4
    assert missing["p"].isna().all() and not missing["significant"].any()


# ---- asymmetry --------------------------------------------------------------------------------

def test_asymmetry_deltas_and_ratio():
    rows = [teacher("a")]
    for seed in range(3):
        for alpha in (0.1, 0.9):
            rows.append(model("a", "kd", alpha, 1.0, 1, seed, correct_agreement=0.9 + 0.01 * seed,
                              incorrect_agreement=0.7 + 0.01 * seed))
            rows.append(model("a", "rcd", alpha, 1.0, 1, seed, correct_agreement=0.8 + 0.01 * seed,
                              incorrect_agreement=0.35 + 0.01 * seed))
        rows.append(siddo("a", 1, seed, correct_agreement=0.8 + 0.01 * seed,
                          incorrect_agreement=0.3 + 0.01 * seed))
    table = asymmetry(pd.DataFrame(rows))
    assert list(table.columns) == ["setup", "teacher_id", "alpha", "temperature", "width",
                                   "method", "median_correct", "median_incorrect", "median_correct_siddo",
                                   "median_incorrect_siddo", "delta_correct", "delta_incorrect",
                                   "ratio"]
    assert list(zip(table["alpha"], table["method"])) == [(0.1, "kd"), (0.1, "rcd"),
                                                          (0.9, "kd"), (0.9, "rcd")]
    kd = table[table["method"] == "kd"]
    np.testing.assert_allclose(kd["median_correct"], 0.91)
    np.testing.assert_allclose(kd["median_incorrect_siddo"], 0.31)
    np.testing.assert_allclose(kd["delta_correct"], 0.1)
    np.testing.assert_allclose(kd["delta_incorrect"], 0.4)
    np.testing.assert_allclose(kd["ratio"], 4.0)
    rcd = table[table["method"] == "rcd"]
    assert (rcd["delta_correct"] == 0).all()
    np.testing.assert_allclose(rcd["delta_incorrect"], 0.05)
    assert rcd["ratio"].isna().all()


# ---- scaling ----------------------------------------------------------------------------------

def test_scaling_slopes_over_models():
    widths = [0.5, 1, 2, 4]  # log2: -1, 0, 1, 2
    rows = [teacher("a")]
    for width in widths:
        x = math.log2(width)
        # kd seed offsets sum to 0 at each width, so the fit over models is exactly on the line;
        # at width 0.5 their median is -0.003, so a fit to per-width medians would not be
        offsets = (0.006, -0.003, -0.003) if width == 0.5 else (0.003, -0.003)
        for seed, offset in enumerate(offsets):
            rows.append(model("a", "kd", 0.5, 1.0, width, seed,
                              correct_agreement=0.8 + 0.01 * x + offset,
                              incorrect_agreement=0.2 + 0.05 * x + offset))
        for seed in range(2):
            rows.append(siddo("a", width, seed, correct_agreement=0.7 + 0.02 * x,
                              incorrect_agreement=0.1 + 0.02 * x))
        rows.append(model("a", "rcd", 0.5, 1.0, width, 0, correct_agreement=0.75,
                          incorrect_agreement=0.1 + 0.03 * x))
    # a group with a single width, and a model whose teacher-incorrect subset was empty
    rows.append(model("b", "kd", 0.5, 1.0, 1, 0, correct_agreement=0.8, incorrect_agreement=0.2))
    rows.append(siddo("a", 8, 2, correct_agreement=0.7 + 0.02 * 3, incorrect_agreement=NAN))
    table = scaling(pd.DataFrame(rows)).set_index(["setup", "method"])
    assert list(table.columns) == ["teacher_id", "alpha", "temperature", "n_widths", "n_models",
                                   "slope_correct",
                                   "slope_incorrect", "slope_ratio", "slope_ratio_low",
                                   "slope_ratio_high", "bootstrap"]
    assert len(table) == 4

    kd = table.loc[("a", "kd")]
    assert (kd["n_widths"], kd["n_models"]) == (4, 9)
    assert kd["slope_correct"] == pytest.approx(0.01)
    assert kd["slope_incorrect"] == pytest.approx(0.05)
    assert kd["slope_ratio"] == pytest.approx(5.0)

    # siddo keeps its NaN temperature as a group key; the NaN incorrect agreement is skipped
    s = table.loc[("a", "siddo")]
    assert s["alpha"] == 0.0 and math.isnan(s["temperature"])
    assert (s["n_widths"], s["n_models"]) == (5, 9)
    assert s["slope_correct"] == pytest.approx(0.02) and s["slope_incorrect"] == pytest.approx(0.02)
    assert s["slope_ratio"] == pytest.approx(1.0)

    rcd = table.loc[("a", "rcd")]
    assert rcd["slope_correct"] == pytest.approx(0.0, abs=1e-15) and math.isnan(rcd["slope_ratio"])
    # one model per width: every draw repeats the data, its ratio x / 0 is never finite
    assert rcd["bootstrap"] == 1000
    assert math.isnan(rcd["slope_ratio_low"]) and math.isnan(rcd["slope_ratio_high"])

    single = table.loc[("b", "kd")]
    assert single["n_widths"] == 1
    assert math.isnan(single["slope_correct"]) and math.isnan(single["slope_ratio"])
    assert single["bootstrap"] == 0
    assert math.isnan(single["slope_ratio_low"]) and math.isnan(single["slope_ratio_high"])


def noisy_scaling_models(n_seeds, widths=(0.5, 1, 2, 4), noise=0.01, rng_seed=0):
    """kd students whose correct and incorrect agreement grow by 0.02 and 0.1 per doubling of
    width (true slope ratio 5), with independent normal noise of sd ``noise`` on each."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    for width in widths:
        x = math.log2(width)
        for seed in range(n_seeds):
            correct, incorrect = rng.normal(0.0, noise, size=2)
            rows.append(model("a", "kd", 0.5, 1.0, width, seed,
                              correct_agreement=0.8 + 0.02 * x + correct,
                              incorrect_agreement=0.3 + 0.1 * x + incorrect))
    return pd.DataFrame(rows)


def test_scaling_bootstrap_is_deterministic_for_a_seed():
    models = noisy_scaling_models(5)
    columns = ["slope_ratio_low", "slope_ratio_high"]
    first = scaling(models, bootstrap=200, seed=3)
    pd.testing.assert_frame_equal(first, scaling(models, bootstrap=200, seed=3))
    other = scaling(models, bootstrap=200, seed=4)
    assert not np.allclose(first[columns].to_numpy(), other[columns].to_numpy())
    # the point estimates do not depend on the draws
    pd.testing.assert_frame_equal(first.drop(columns=columns), other.drop(columns=columns))


def test_scaling_interval_contains_the_estimate_and_narrows_with_more_seeds():
    spans = []
    for n_seeds in (4, 64):
        row = scaling(noisy_scaling_models(n_seeds), bootstrap=2000).iloc[0]
        assert row["bootstrap"] == 2000
        assert row["slope_ratio_low"] < row["slope_ratio"] < row["slope_ratio_high"]
        spans.append(row["slope_ratio_high"] - row["slope_ratio_low"])
    # the interval's width shrinks about as 1 / sqrt(seeds): here by about 4
    assert spans[1] < 0.5 * spans[0]


def test_scaling_bootstrap_keeps_the_models_of_each_width():
    # one model per width: a resample within widths reproduces the data, so every draw has the
    # point estimate's ratio; a resample across widths would not (or would lose a width)
    rows = [model("a", "kd", 0.5, 1.0, width, 0, correct_agreement=0.8 + 0.01 * i,
                  incorrect_agreement=0.2 + 0.03 * i) for i, width in enumerate([1, 2, 4])]
    rows += [model("a", "kd", 0.5, 1.0, 8, seed, correct_agreement=0.83 + 0.01 * seed,
                   incorrect_agreement=0.29 + 0.01 * seed) for seed in range(2)]
    row = scaling(pd.DataFrame(rows[:3]), bootstrap=50).iloc[0]
    assert row["slope_ratio"] == pytest.approx(3.0)
    assert row["slope_ratio_low"] == pytest.approx(3.0) and row["slope_ratio_high"] == pytest.approx(3.0)
    # a second model at width 8 is the only source of variation
    row = scaling(pd.DataFrame(rows), bootstrap=200).iloc[0]
    assert row["slope_ratio_low"] < row["slope_ratio_high"]


def test_scaling_without_bootstrap():
    table = scaling(noisy_scaling_models(3), bootstrap=0)
    row = table.iloc[0]
    assert row["bootstrap"] == 0 and math.isfinite(row["slope_ratio"])
    assert math.isnan(row["slope_ratio_low"]) and math.isnan(row["slope_ratio_high"])
    with pytest.raises(ValueError, match="bootstrap"):
        scaling(noisy_scaling_models(3), bootstrap=-1)
