import itertools
import math

import numpy as np
import pandas as pd
import pytest

from scipy.stats import binomtest, mannwhitneyu, wilcoxon

from kdpipe import methods, power
from kdpipe.metrics import FUNCTIONAL_METRICS, HIGHER_IS_CLOSER, PERFORMANCE_METRICS
from kdpipe.stats import (adjust_pvalues, asymmetry, claims, claims_table, compare_methods,
                          mann_whitney, no_difference, scaling, toward_teacher,
                          untestable_summary, wilcoxon_p, wilcoxon_paired)

NAN = float("nan")
P_SEPARATED_5_5 = 2 / math.comb(10, 5)  # exact two-sided p of fully separated samples of 5 and 5


def model(setup, method, alpha, temperature, width, seed, teacher_id=None, **values):
    """One student row of the models table; metrics not given are NaN. Its teacher gets 800 test
    samples right and 200 wrong, unless n_teacher_correct / n_teacher_incorrect are given."""
    row = {"setup": setup, "dataset": "toy", "arch": "mlp", "role": "student",
           "teacher_id": teacher_id or f"{setup}-t0", "method": method, "alpha": alpha,
           "temperature": temperature, "width": float(width), "seed": seed,
           "n_teacher_correct": 800, "n_teacher_incorrect": 200}
    row.update({metric: NAN for metric in FUNCTIONAL_METRICS + PERFORMANCE_METRICS})
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

def test_toward_teacher_follows_the_effect_size():
    for metric in HIGHER_IS_CLOSER:
        assert toward_teacher(metric, 0.3) and not toward_teacher(metric, -0.3)
    for metric in ("activation_distance", "js_divergence", "rank_disagreement"):
        assert toward_teacher(metric, -0.3) and not toward_teacher(metric, 0.3)


def test_toward_teacher_false_on_zero_or_nan_none_for_performance_and_rejects_others():
    assert not toward_teacher("correct_agreement", 0.0)
    assert not toward_teacher("js_divergence", 0.0)
    assert not toward_teacher("correct_agreement", NAN)
    assert not toward_teacher("js_divergence", NAN)
    assert toward_teacher("accuracy", 0.5) is None and toward_teacher("loss", -0.5) is None
    with pytest.raises(ValueError):
        toward_teacher("train_loss", 0.5)


def test_direction_is_the_effect_size_not_the_medians():
    # x has the higher median (5 > 4) but tends to be smaller (effect -0.28)
    x, y = [0, 0, 5, 5, 5], [4, 4, 4, 6, 6]
    test = mann_whitney(x, y)
    assert test["median_1"] > test["median_2"]
    assert test["u"] == 9 and test["effect_size"] == pytest.approx(-0.28)
    rows = [model("a", "kd", 0.5, 1.0, 1, seed, correct_agreement=x[seed] / 8,
                  incorrect_agreement=x[seed] / 8) for seed in range(5)]
    rows += [siddo("a", 1, seed, correct_agreement=y[seed] / 8, incorrect_agreement=y[seed] / 8)
             for seed in range(5)]
    table = compare_methods(pd.DataFrame(rows), metrics=["correct_agreement"])
    row = table[table["comparison"] == "kd_vs_siddo"].iloc[0]
    assert row["median_1"] > row["median_2"] and row["effect_size"] < 0
    assert not row["toward_teacher"]


# ---- wilcoxon_paired --------------------------------------------------------------------------

def test_wilcoxon_paired_against_the_sign_distribution():
    # 8 pairs, all differences positive and distinct: the exact two-sided p is 2 / 2^8, the same
    # as a two-sided sign test's (binomial) for 8 successes out of 8
    x = np.arange(8) + 1.0
    y = x - np.arange(1, 9) * 0.1
    result = wilcoxon_paired(x, y)
    assert result["n_pairs"] == 8 and result["p_paired_note"] == ""
    assert result["p_paired"] == pytest.approx(binomtest(8, 8).pvalue, rel=1e-12)
    assert result["p_paired"] == pytest.approx(2 / 2**8, rel=1e-12)


def test_wilcoxon_paired_with_ties_by_hand():
    # differences 1, 1, 2, -3: ranks 1.5, 1.5, 3, 4 and T+ = 6. Of the 16 sign flips, 6 give
    # T+ >= 6 (7, 6, 7, 8.5, 8.5, 10) and 11 give T+ <= 6: two-sided p = 2 * 6 / 16
    result = wilcoxon_paired([2.0, 3.0, 5.0, 0.0], [1.0, 2.0, 3.0, 3.0])
    assert result["p_paired"] == pytest.approx(0.75, rel=1e-12)


def test_wilcoxon_p_is_scipys_with_ties_zeros_and_large_samples():
    rng = np.random.default_rng(0)
    for n in [1, 2, 3, 5, 8, 8, 8, 13, 14, 20]:
        for _ in range(6):
            d = rng.integers(-3, 4, n) * 0.25  # ties and zeros
            if not d.any():
                continue
            assert wilcoxon_p(d) == pytest.approx(wilcoxon(d).pvalue, rel=1e-12), d
        d = rng.normal(size=n)  # no ties: scipy's exact or asymptotic test
        assert wilcoxon_p(d) == pytest.approx(wilcoxon(d).pvalue, rel=1e-12)


def test_wilcoxon_p_refuses_non_finite_differences():
    with pytest.raises(ValueError, match="finite"):
        wilcoxon_p([0.5, float("nan"), 1.0])


def test_wilcoxon_paired_degenerate_cases_are_nan_with_a_reason():
    zero = wilcoxon_paired([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert math.isnan(zero["p_paired"]) and zero["p_paired_note"] == "all 3 paired differences are zero"
    none = wilcoxon_paired([1.0, NAN], [NAN, 2.0])
    assert none["n_pairs"] == 0 and math.isnan(none["p_paired"]) and none["p_paired_note"]


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
            rows.append(model("a", "rcd", alpha, 1.0, 1, seed, **all_metrics(0.505, seed)))
        rows.append(model("a", "rcd", 0.9, 1.0, 1, seed, **all_metrics(0.505, seed)))
        rows.append(siddo("a", 1, seed, **all_metrics(0.5, seed)))
        rows.append(siddo("a", 2, seed, **all_metrics(0.0, seed)))
        rows.append(siddo("a", 1, seed, teacher_id="a-t9", **all_metrics(0.0, seed)))
    return pd.DataFrame(rows)


def test_compare_methods_table():
    table = compare_methods(comparison_models())
    assert list(table.columns) == ["setup", "teacher_id", "alpha", "temperature", "width", "metric",
                                   "comparison", "n1", "n2", "u", "p", "effect_size", "median_1",
                                   "median_2", "toward_teacher", "n_pairs", "p_paired",
                                   "p_paired_note", "significant", "level", "p_min", "testable",
                                   "verdict_note"]
    # two kd groups (alpha 0.1, 0.5) x nine metrics (six functional, accuracy, loss, ece) x
    # three comparisons; rcd at 0.9 has no kd
    assert len(table) == 2 * 9 * 3
    assert set(table["metric"]) == set(FUNCTIONAL_METRICS + PERFORMANCE_METRICS)
    assert sorted(table["alpha"].unique()) == [0.1, 0.5]
    key = ["setup", "alpha", "temperature", "width", "metric", "comparison"]
    pd.testing.assert_frame_equal(table, table.sort_values(key, ignore_index=True))
    # the same five siddo models serve both alphas; the decoys are not among them
    versus_siddo = table[(table["comparison"] != "kd_vs_rcd")
                         & table["metric"].isin(FUNCTIONAL_METRICS)]
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
                # kd - control is the same positive (or negative) number at all 5 seeds: the
                # exact two-sided signed-rank p is 2 / 2^5
                assert row["n_pairs"] == 5 and row["p_paired"] == pytest.approx(2 / 2**5)
            # rcd is 0.005 above siddo seed by seed: rcd_i > siddo_j for j <= i, U = 15 of 25
            row = table.loc[(alpha, metric, "rcd_vs_siddo")]
            assert row["u"] == 15 and row["effect_size"] == pytest.approx(0.2)
            assert row["p"] > 0.05 and not row["significant"]


def test_accuracy_and_loss_are_tested_without_a_direction():
    models = comparison_models()
    kd, rcd = models["method"] == "kd", models["method"] == "rcd"
    models.loc[kd, "accuracy"] = 0.9 + 0.001 * models.loc[kd, "seed"]  # kd more accurate
    models.loc[rcd, "accuracy"] = 0.8 + 0.001 * models.loc[rcd, "seed"]
    models.loc[kd | rcd, "loss"] = 0.5  # equal losses everywhere
    table = compare_methods(models, metrics=["accuracy", "loss"])
    assert table["toward_teacher"].isna().all()
    accuracy = table[(table["metric"] == "accuracy") & (table["comparison"] == "kd_vs_rcd")]
    assert len(accuracy) == 2
    assert (accuracy["effect_size"] == 1.0).all() and accuracy["significant"].all()
    assert accuracy["p"].to_numpy() == pytest.approx(P_SEPARATED_5_5)
    loss = table[(table["metric"] == "loss") & (table["comparison"] == "kd_vs_rcd")]
    assert (loss["p"] == 1.0).all() and not loss["significant"].any()
    assert loss["p_paired"].isna().all()
    assert (loss["p_paired_note"] == "all 5 paired differences are zero").all()
    # claim (2): rcd's accuracy is significantly below kd's at both alphas
    claim = claims(table)
    assert list(claim["alpha"]) == [0.1, 0.5]
    assert claim["rcd_below_kd"].all() and not claim["claim_holds"].any()
    np.testing.assert_allclose(claim["median_accuracy_kd"], 0.902)
    np.testing.assert_allclose(claim["median_accuracy_rcd"], 0.802)
    models.loc[rcd, "accuracy"] = 0.9 + 0.001 * models.loc[rcd, "seed"]  # as accurate as kd
    claim = claims(compare_methods(models, metrics=["accuracy"]))
    assert claim["claim_holds"].all() and not claim["rcd_below_kd"].any()


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
    columns = list(holm.columns)
    assert columns[columns.index("significant") + 1:] == [
        "p_adjusted", "level", "p_min", "p_min_adjusted", "testable", "verdict_note"]
    # 36 tests in the family: Holm multiplies the smallest p by 36, so nothing survives; nothing
    # could have (5 and 5 seeds at their smallest p are adjusted to 36 / 126 too): no verdict
    assert holm["p_adjusted"].min() == pytest.approx(36 * P_SEPARATED_5_5)
    tested = holm["p"].notna()
    assert holm.loc[tested, "p_min_adjusted"].to_numpy() == pytest.approx(36 * P_SEPARATED_5_5)
    assert holm["significant"].isna().all() and not holm["testable"].any()
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
    # at a level equal to the smallest p of 5 and 5 seeds no test can be below it: no verdict
    at_floor = compare_methods(models, level=P_SEPARATED_5_5)
    assert at_floor["significant"].isna().all() and not at_floor["testable"].any()
    just_above = compare_methods(models, level=P_SEPARATED_5_5 * 1.001)
    tested = just_above["p"].notna()
    assert just_above.loc[tested, "testable"].all() and just_above["significant"].any()
    no_rcd = compare_methods(models[models["method"] != "rcd"], metrics=["correct_agreement"])
    missing = no_rcd[no_rcd["comparison"] != "kd_vs_siddo"]
    assert len(no_rcd) == 6 and len(missing) == 4
    assert missing["p"].isna().all() and missing["p_min"].isna().all()
    assert missing["significant"].isna().all() and not missing["testable"].any()
    assert set(missing["verdict_note"]) == {"no test: 0 and 5 seeds with a finite value",
                                            "no test: 5 and 0 seeds with a finite value"}


def test_methods_comparisons_and_reference_are_arguments():
    """Methods named outside the registry: "x" and its control "y" at two alphas against the
    reference "ref", which has no alpha or T and is matched by setup, teacher and width alone."""
    rng = np.random.default_rng(3)
    rows, values = [teacher("a")], {}
    for seed in range(6):
        for alpha in (0.1, 0.5):
            for method in ("x", "y"):
                value = rng.random()
                values.setdefault((method, alpha), []).append(value)
                rows.append(model("a", method, alpha, 1.0, 1, seed, accuracy=value,
                                  correct_agreement=(400 + seed) / 800,
                                  incorrect_agreement=(100 + 10 * seed) / 200))
        value = rng.random()
        values.setdefault("ref", []).append(value)
        rows.append(model("a", "ref", NAN, NAN, 1, seed, accuracy=value,
                          correct_agreement=400 / 800, incorrect_agreement=100 / 200))
        rows.append(model("a", "ref", NAN, NAN, 2, seed, accuracy=9.0))  # another width
    models = pd.DataFrame(rows)
    comparisons = {"x": (methods.versus("x", "ref"), methods.versus("x", "y"))}
    table = compare_methods(models, metrics=["accuracy"], comparisons=comparisons,
                            reference="ref").set_index(["alpha", "comparison"])
    assert sorted(table.index) == [(a, c) for a in (0.1, 0.5) for c in ("x_vs_ref", "x_vs_y")]
    for alpha in (0.1, 0.5):
        assert table.loc[(alpha, "x_vs_ref"), "p"] == pytest.approx(
            mannwhitneyu(values[("x", alpha)], values["ref"]).pvalue)
        assert table.loc[(alpha, "x_vs_y"), "p"] == pytest.approx(
            mannwhitneyu(values[("x", alpha)], values[("y", alpha)]).pvalue)
        assert table.loc[(alpha, "x_vs_ref"), "p_paired"] == pytest.approx(
            wilcoxon(np.subtract(values[("x", alpha)], values["ref"])).pvalue)
    # the reference's columns are named after it; x's median count is 402.5 of 800 against 400
    payoff = asymmetry(models, methods=("x", "y"), reference="ref")
    assert {"median_correct_ref", "median_incorrect_ref"} <= set(payoff.columns)
    x = payoff[payoff["method"] == "x"]
    np.testing.assert_allclose(x["delta_correct"], 2.5 / 800)
    np.testing.assert_allclose(x["delta_incorrect"], 25 / 200)
    fits = scaling(models, bootstrap=0, methods=("x", "y"), reference="ref")
    assert set(fits["method"]) == {"x", "y", "ref"} and "n_pairs_vs_ref" in fits
    # the claim: y's accuracy against x's, where x_vs_y was tested
    claim = claims(compare_methods(models, metrics=["accuracy"], comparisons=comparisons,
                                   reference="ref"), lead="x", control="y")
    assert list(claim["alpha"]) == [0.1, 0.5]
    assert {"median_accuracy_x", "median_accuracy_y", "y_below_x"} <= set(claim.columns)
    assert (claim["claim"] == "y accuracy not significantly below x").all()
    with pytest.raises(ValueError, match="reference method 'ref' is among the methods"):
        asymmetry(models, methods=("x", "ref"), reference="ref")


# ---- power: what a test of so many seeds can reject ------------------------------------------

@pytest.mark.parametrize("n1, n2", [(1, 1), (1, 2), (2, 2), (2, 3), (3, 3), (1, 9), (3, 4),
                                    (4, 4), (5, 5), (4, 7), (8, 8)])
def test_min_p_is_scipys_exact_p_of_fully_separated_samples(n1, n2):
    low, high = np.arange(n2, dtype=float), n2 + np.arange(n1, dtype=float)
    for x, y in ((high, low), (high - 100, low)):  # x above y, then below
        exact = mannwhitneyu(x, y, alternative="two-sided", method="exact").pvalue
        assert power.min_p(n1, n2) == pytest.approx(exact, rel=1e-12)
    assert power.min_p(n1, n2) == power.min_p(n2, n1)


def test_no_arrangement_of_the_exact_test_goes_below_min_p():
    # every split of the ranks 0..6 into 3 and 4: the smallest exact p is that of separation
    n1, n2 = 3, 4
    values = np.arange(n1 + n2, dtype=float)
    smallest = min(mannwhitneyu(values[list(chosen)], np.delete(values, chosen),
                                method="exact").pvalue
                   for chosen in itertools.combinations(range(n1 + n2), n1))
    assert smallest == pytest.approx(power.min_p(n1, n2), rel=1e-12)
    assert power.min_p(n1, n2) == pytest.approx(2 / 35)


def test_min_p_by_hand_and_its_domain():
    assert power.min_p(1, 1) == 1.0  # 2 / C(2, 1) = 1
    assert power.min_p(1, 5) == pytest.approx(1 / 3)  # 2 / 6
    assert power.min_p(2, 2) == pytest.approx(1 / 3)
    assert power.min_p(3, 3) == pytest.approx(0.1)  # 2 / 20
    assert power.min_p(4, 4) == pytest.approx(2 / 70)
    assert power.min_p(600, 600) == 0.0  # below the smallest float, not an error
    with pytest.raises(ValueError, match="at least one value a side"):
        power.min_p(0, 5)


def test_scipys_auto_method_with_ties_can_go_below_the_exact_floor():
    # scipy's method "auto" uses the normal approximation when the samples have ties: here it
    # says p < 0.05 where no exact test of 3 and 3 values can go below 0.1
    tied = mannwhitneyu([1.0, 1.0, 1.0], [0.0, 0.0, 0.0], method="auto").pvalue
    assert tied < 0.05 < power.min_p(3, 3)
    assert mann_whitney([1.0, 1.0, 1.0], [0.0, 0.0, 0.0])["p"] == pytest.approx(tied)
    # such a row stays untestable: no verdict, and the note says where its p comes from
    rows = [model("a", "kd", 0.5, 1.0, 1, seed, accuracy=0.9) for seed in range(3)]
    rows += [model("a", "rcd", 0.5, 1.0, 1, seed, accuracy=0.8) for seed in range(3)]
    rows += [siddo("a", 1, seed, accuracy=0.8) for seed in range(3)]
    row = compare_methods(pd.DataFrame(rows), metrics=["accuracy"]).set_index("comparison").loc[
        "kd_vs_rcd"]
    assert row["p"] == pytest.approx(tied) and not row["testable"]
    assert pd.isna(row["significant"])
    assert row["verdict_note"] == (
        "3 and 3 seeds: the smallest two-sided p is 0.1, not below the level 0.05; this test "
        f"cannot reject (its p {tied:.2g} is scipy's normal approximation for tied values, below "
        "what an exact test can give at these sizes)")


def test_best_case_p_under_each_correction_by_hand():
    p = 2 / 70  # 4 and 4 seeds
    assert power.best_case_p(4, 4, "none", tests=30) == pytest.approx(p)
    assert power.best_case_p(4, 4, "holm", tests=30) == pytest.approx(30 * p)  # 0.857
    assert power.best_case_p(4, 4, "bh", tests=30) == pytest.approx(p)
    assert power.best_case_p(2, 2, "holm", tests=10) == 1.0  # capped
    # the same as correcting a family of that many tests all at their smallest p
    for correction in ("holm", "bh"):
        np.testing.assert_allclose(adjust_pvalues(np.full(30, p), correction),
                                   power.best_case_p(4, 4, correction, tests=30))
    with pytest.raises(ValueError, match="bonferroni"):
        power.best_case_p(4, 4, "bonferroni")


def test_fewest_seeds_by_hand():
    # 3 and 3: 2 / 20 = 0.1; 4 and 4: 2 / 70 = 0.029
    assert power.fewest_seeds(0.05) == 4 and power.fewest_seeds(0.05, "bh", tests=100) == 4
    assert power.fewest_seeds(0.1) == 4  # 0.1 is not below 0.1
    assert power.fewest_seeds(0.11) == 3
    # Holm over 48 tests: 6 seeds give 48 * 2 / 924 = 0.104, 7 give 48 * 2 / 3432 = 0.028
    assert power.fewest_seeds(0.05, "holm", tests=48) == 7


def seeds_models(n_seeds, separated=True, metric="prediction_agreement"):
    """kd, rcd and siddo students at one (alpha, T, width) with ``n_seeds`` seeds each. kd is
    above both controls at every seed (``separated``) or interleaved with them (kd 0.51, 0.53,
    ... against rcd and siddo 0.50, 0.52, ...: U = n (n + 1) / 2 of n^2, far from separation)."""
    rows = []
    for seed in range(n_seeds):
        kd = 0.9 + 0.01 * seed if separated else 0.51 + 0.02 * seed
        rows.append(model("a", "kd", 0.5, 1.0, 1, seed, **{metric: kd}))
        rows.append(model("a", "rcd", 0.5, 1.0, 1, seed, **{metric: 0.5 + 0.02 * seed}))
        rows.append(siddo("a", 1, seed, **{metric: 0.5 + 0.02 * seed}))
    return pd.DataFrame(rows)


@pytest.mark.parametrize("n_seeds, smallest", [(1, "1"), (2, "0.33"), (3, "0.1")])
def test_too_few_seeds_give_no_verdict_with_a_note(n_seeds, smallest):
    for separated in (True, False):
        table = compare_methods(seeds_models(n_seeds, separated), metrics=["prediction_agreement"])
        assert len(table) == 3
        assert table["significant"].isna().all() and not table["testable"].any()
        assert table["p_min"].to_numpy() == pytest.approx(2 / math.comb(2 * n_seeds, n_seeds)
                                                          if n_seeds > 1 else 1.0)
        assert (table["level"] == 0.05).all()
        assert (table["verdict_note"] == f"{n_seeds} and {n_seeds} seeds: the smallest two-sided p "
                f"is {smallest}, not below the level 0.05; this test cannot reject").all()
        # the direction is no verdict: it stays (kd is the larger here, if not always)
        kd_vs_siddo = table.set_index("comparison").loc["kd_vs_siddo"]
        assert kd_vs_siddo["effect_size"] > 0 and kd_vs_siddo["toward_teacher"]


@pytest.mark.parametrize("n_seeds", [4, 5, 6])
def test_enough_seeds_keep_true_and_false(n_seeds):
    separated = compare_methods(seeds_models(n_seeds), metrics=["prediction_agreement"])
    interleaved = compare_methods(seeds_models(n_seeds, separated=False),
                                  metrics=["prediction_agreement"])
    for table in (separated, interleaved):
        assert table["testable"].all() and (table["verdict_note"] == "").all()
        assert table["significant"].notna().all()
    separated = separated.set_index("comparison")
    assert separated.loc["kd_vs_siddo", "significant"] and separated.loc["kd_vs_rcd", "significant"]
    assert separated.loc["kd_vs_siddo", "p"] == pytest.approx(2 / math.comb(2 * n_seeds, n_seeds))
    assert not separated.loc["rcd_vs_siddo", "significant"]  # the same values: p = 1
    assert not interleaved["significant"].any()


def test_claims_are_na_with_the_note_where_untestable():
    few = claims(compare_methods(seeds_models(2, metric="accuracy"), metrics=["accuracy"]))
    assert list(few.columns)[-7:] == ["claim", "rcd_below_kd", "claim_holds", "level", "p_min",
                                      "testable", "verdict_note"]
    row = few.iloc[0]
    assert row["effect_size"] == 1.0 and row["p"] == pytest.approx(1 / 3)
    assert pd.isna(row["rcd_below_kd"]) and pd.isna(row["claim_holds"]) and not row["testable"]
    assert row["verdict_note"] == ("2 and 2 seeds: the smallest two-sided p is 0.33, not below the "
                                   "level 0.05; this test cannot reject")
    # with 4 seeds the same data gives a verdict: rcd is significantly below kd
    enough = claims(compare_methods(seeds_models(4, metric="accuracy"), metrics=["accuracy"]))
    row = enough.iloc[0]
    assert row["rcd_below_kd"] and not row["claim_holds"] and row["verdict_note"] == ""


def ls_models(n_seeds):
    """kd, rcd, siddo and ls at alphas 0.1 and 0.5, ``n_seeds`` seeds each: at 0.1, ls is far
    from rcd in activation distance (further from the teacher) and in loss, and equal to it
    elsewhere; at 0.5 equal to rcd in every metric."""
    rows = []
    for seed, alpha in itertools.product(range(n_seeds), (0.1, 0.5)):
        same = {**all_metrics(0.5, seed), "accuracy": 0.8, "loss": 0.4, "ece": 0.1}
        apart = {**same, "activation_distance": 0.9 + 0.01 * seed, "loss": 0.7 + 0.01 * seed}
        rows += [model("a", "kd", alpha, 1.0, 1, seed, **same),
                 model("a", "rcd", alpha, 1.0, 1, seed, **same),
                 model("a", "ls", alpha, 1.0, 1, seed, **(apart if alpha == 0.1 else same))]
        if alpha == 0.1:
            rows.append(siddo("a", 1, seed, **same))
    return pd.DataFrame(rows)


def test_the_ls_claim_says_per_cell_whether_ls_and_rcd_differ_on_any_metric():
    """A metric differs where its two-sided test is significant, whichever way (ls further from
    the teacher counts); "no difference" is a verdict only where every test can reject."""
    tests = compare_methods(ls_models(4))
    claim = no_difference(tests, "ls", "rcd").set_index("alpha")
    assert list(claim["metrics_tested"]) == [9, 9]
    assert claim.loc[0.1, "metrics_differing"] == "activation_distance, loss"
    assert mannwhitneyu([0.9, 0.91, 0.92, 0.93], [0.5, 0.51, 0.52, 0.53]).pvalue < 0.05
    assert claim.loc[0.1, "ls_differs_from_rcd"] and not claim.loc[0.1, "claim_holds"]
    assert claim.loc[0.5, "metrics_differing"] == "" and claim.loc[0.5, "claim_holds"]
    assert claim["testable"].all() and (claim["verdict_note"] == "").all()
    assert (claim["claim"]
            == "rcd and ls do not differ significantly on any tested metric").all()
    few = no_difference(compare_methods(ls_models(2)), "ls", "rcd")
    assert few["claim_holds"].isna().all() and few["ls_differs_from_rcd"].isna().all()
    assert not few["testable"].any() and few["verdict_note"].str.contains("cannot reject").all()
    # the claims table: kd's claim, then ls's, each claim's columns empty on the other's rows
    assert (methods.NO_DIFFERENCE, "ls", "rcd") in methods.CLAIMS
    table = claims_table(tests)
    assert list(table["claim"].str.startswith("rcd accuracy")) == [True, True, False, False]
    for column in ("ls_differs_from_rcd", "rcd_below_kd", "claim_holds"):
        assert table[column].dtype == "boolean"
    assert table["ls_differs_from_rcd"][:2].isna().all()
    assert table["median_accuracy_kd"][2:].isna().all()
    kd = claims(tests)
    pd.testing.assert_frame_equal(table.iloc[:2][list(kd.columns)].astype(kd.dtypes.to_dict()), kd)
    # without ls students, the claims table is kd's claim as it is
    only_kd = compare_methods(ls_models(4)[lambda m: m["method"] != "ls"])
    pd.testing.assert_frame_equal(claims_table(only_kd), claims(only_kd))


def family_models():
    """Accuracy of kd and rcd at 4 seeds and of siddo at 6: a family of three tests, kd vs rcd
    of 4 and 4 (smallest p 2 / 70) and two of 4 and 6 (2 / 210), each fully separated."""
    rows = [model("a", "kd", 0.5, 1.0, 1, seed, accuracy=0.9 + 0.01 * seed) for seed in range(4)]
    rows += [model("a", "rcd", 0.5, 1.0, 1, seed, accuracy=0.8 + 0.01 * seed) for seed in range(4)]
    rows += [siddo("a", 1, seed, accuracy=0.7 + 0.01 * seed) for seed in range(6)]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("correction, level, best, testable", [
    # smallest p: kd_vs_rcd 2 / 70 = 0.0286, kd_vs_siddo and rcd_vs_siddo 2 / 210 = 0.0095
    ("none", 0.05, [2 / 70, 2 / 210, 2 / 210], [True, True, True]),
    ("none", 0.025, [2 / 70, 2 / 210, 2 / 210], [False, True, True]),
    # Holm: sorted 2/210, 2/210, 2/70 times 3, 2, 1 = 0.0286, 0.019, 0.0286, running maximum
    # 0.0286 for all: kd_vs_rcd reaches 0.05 when the others reject first, though 3 * 2 / 70
    # would not
    ("holm", 0.05, [2 / 70, 2 / 70, 2 / 70], [True, True, True]),
    ("holm", 0.025, [2 / 70, 2 / 70, 2 / 70], [False, False, False]),
    # BH: sorted times 3/1, 3/2, 3/3 = 0.0286, 0.0143, 0.0286, running minimum from the top
    ("bh", 0.025, [2 / 70, 1.5 * 2 / 210, 1.5 * 2 / 210], [False, True, True]),
])
def test_testable_is_the_best_case_after_the_correction(correction, level, best, testable):
    table = compare_methods(family_models(), metrics=["accuracy"], level=level,
                            correction=correction).set_index("comparison")
    order = ["kd_vs_rcd", "kd_vs_siddo", "rcd_vs_siddo"]
    np.testing.assert_allclose(table.loc[order, "p_min"], [2 / 70, 2 / 210, 2 / 210])
    column = "p_min" if correction == "none" else "p_min_adjusted"
    np.testing.assert_allclose(table.loc[order, column], best)
    assert list(table.loc[order, "testable"]) == testable
    # every test here is fully separated, so each testable one is significant
    assert list(table.loc[order, "significant"].fillna(False)) == testable
    assert (table.loc[order, "verdict_note"] == "").tolist() == testable


def test_untestable_summary_names_the_cells_in_one_line_per_group():
    rows = [teacher("a")]
    for width in (0.5, 1.0):
        for seed in range(2):
            for alpha in (0.1, 0.5):
                rows.append(model("a", "kd", alpha, 1.0, width, seed, **all_metrics(0.9, seed)))
                rows.append(model("a", "rcd", alpha, 1.0, width, seed, **all_metrics(0.5, seed)))
            rows.append(siddo("a", width, seed, **all_metrics(0.5, seed)))
    # two more seeds of every model at width 1, alpha 0.5: those tests are testable
    for seed in (2, 3):
        rows.append(model("a", "kd", 0.5, 1.0, 1.0, seed, **all_metrics(0.9, seed)))
        rows.append(model("a", "rcd", 0.5, 1.0, 1.0, seed, **all_metrics(0.5, seed)))
        rows.append(siddo("a", 1.0, seed, **all_metrics(0.5, seed)))
    table = compare_methods(pd.DataFrame(rows), metrics=FUNCTIONAL_METRICS)
    # 12 cells of 6 metrics; at width 1, alpha 0.1 has 2 seeds of kd and rcd against 4 of siddo
    # (2 / C(6, 2) = 0.13), alpha 0.5 is testable: 7 cells of 2 and 2, 2 of 2 and 4 seeds
    assert untestable_summary(table) == [
        "warning: 54 of 72 Mann-Whitney tests cannot reach p < 0.05 whatever the data (too few "
        "seeds); their significant, rcd_below_kd and claim_holds are NA (stats: testable False, "
        "verdict_note):",
        "  setup a, teacher a-t0, 2 and 2 seeds (smallest p 0.33): alpha 0.1, 0.5; T 1; width "
        "0.5, 1; kd_vs_rcd, kd_vs_siddo, rcd_vs_siddo (7 of these 12 combinations)",
        "  setup a, teacher a-t0, 2 and 4 seeds (smallest p 0.13): alpha 0.1; T 1; width 1; "
        "kd_vs_siddo, rcd_vs_siddo"]
    assert untestable_summary(compare_methods(seeds_models(4))) == []


def test_seeds_warning_at_parse_by_hand():
    config = {"setups": {"a": {"teachers": {"teacher": {}}},
                         "b": {"teachers": {"t1": {}, "t2": {}}}},
              "alphas": [0.1, 0.5], "temperatures": [1], "widths": [0.5, 1], "seeds": [0, 1, 2],
              "stats": {"level": 0.05, "correction": "none", "metrics": ["accuracy", "loss"]}}
    # 3 teachers x 2 widths x 2 alphas x 1 T x 3 comparisons x 2 metrics
    assert power.planned_tests(config) == 72
    # Holm over 72 tests: 7 seeds give 72 * 2 / 3432 = 0.042
    assert power.seeds_warning(config) == (
        "warning: with 3 seeds per group no Mann-Whitney test can reach p < 0.05 (smallest p "
        "0.1); every significance verdict and claim will be NA (untestable). Use at least 4 "
        "seeds (7 with Holm over 72 tests).")
    config["stats"]["correction"] = "holm"
    config["seeds"] = [0, 1, 2, 3, 4]  # 72 * 2 / 252 = 0.57
    assert power.seeds_warning(config) == (
        "warning: with 5 seeds per group no Mann-Whitney test can reach p < 0.05 after Holm over "
        "72 tests (smallest p 0.0079, 0.57 after Holm); every significance verdict and claim "
        "will be NA (untestable). Use at least 7 seeds.")
    config["stats"]["correction"] = "bh"
    assert power.seeds_warning(config) is None
    config["seeds"] = [7]
    assert power.seeds_warning(config).startswith(
        "warning: with 1 seed per group no Mann-Whitney test can reach p < 0.05 (smallest p 1);")


def test_planned_tests_counts_the_tests_compare_methods_runs():
    config = {"setups": {"a": {"teachers": {"t1": {}, "t2": {}}}}, "alphas": [0.1, 0.5],
              "temperatures": [1, 4], "widths": [0.5, 1, 2], "seeds": [0, 1],
              "kd_masked": {"enabled": True}, "feature_matching": {"enabled": True},
              "stats": {"metrics": ["accuracy", "correct_agreement"]}}
    rng = np.random.default_rng(0)
    rows = []
    for teacher_id in ("t1", "t2"):
        for width in config["widths"]:
            for seed in config["seeds"]:
                for name in methods.enabled(config):
                    m = methods.method(name)
                    for alpha in config["alphas"] if m.uses_alpha else [0.0]:
                        for temperature in config["temperatures"] if m.uses_temperature else [NAN]:
                            rows.append(model("a", name, alpha, temperature, width, seed,
                                              teacher_id, accuracy=rng.random(),
                                              correct_agreement=rng.random()))
    table = compare_methods(pd.DataFrame(rows), metrics=config["stats"]["metrics"])
    # per teacher and width: kd's 3 and kd-masked's 4 comparisons at 2 alphas x 2 T, fm's 3 at
    # 2 alphas; times 2 metrics
    assert power.planned_tests(config) == len(table) == 2 * 3 * (7 * 4 + 3 * 2) * 2


def test_planned_tests_count_a_setups_own_widths():
    """A setup with its own widths is tested at those: 1 width of setup a and the study's 3 of
    setup b, each with kd's 3 comparisons at 2 alphas, of 1 metric."""
    config = {"setups": {"a": {"teachers": {"t": {}}, "widths": [1]}, "b": {"teachers": {"t": {}}}},
              "alphas": [0.1, 0.5], "temperatures": [1], "widths": [0.5, 1, 2], "seeds": [0],
              "stats": {"metrics": ["accuracy"]}}
    assert power.planned_tests(config) == (1 + 3) * 2 * 3


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
                                   "method", "n_teacher_correct", "n_teacher_incorrect",
                                   "median_correct", "median_incorrect", "median_correct_siddo",
                                   "median_incorrect_siddo", "delta_correct", "delta_incorrect",
                                   "ratio", "ratio_note"]
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
    assert (rcd["ratio_note"] == "delta_correct is 0 (equal median counts)").all()
    assert (kd["ratio_note"] == "").all()


def test_asymmetry_equal_medians_of_an_even_number_of_seeds_give_no_ratio():
    # n = 1258: kd's counts 1258 and 1256 have the median 1257, siddo's is 1257 too. As floats,
    # (1258/1258 + 1256/1258) / 2 - 1257/1258 is about 1e-16, which made the ratio about 1e14.
    n_correct, n_incorrect = 1258, 142
    rows = []
    for seed, (k_kd, k_siddo) in enumerate([(1258, 1257), (1256, 1257)]):
        rows.append(model("a", "kd", 0.5, 1.0, 1, seed, correct_agreement=k_kd / n_correct,
                          incorrect_agreement=(70 + seed) / n_incorrect,
                          n_teacher_correct=n_correct, n_teacher_incorrect=n_incorrect))
        rows.append(siddo("a", 1, seed, correct_agreement=k_siddo / n_correct,
                          incorrect_agreement=60 / n_incorrect, n_teacher_correct=n_correct,
                          n_teacher_incorrect=n_incorrect))
    row = asymmetry(pd.DataFrame(rows)).iloc[0]
    assert (row["n_teacher_correct"], row["n_teacher_incorrect"]) == (n_correct, n_incorrect)
    assert row["delta_correct"] == 0.0
    assert row["delta_incorrect"] == pytest.approx(10.5 / n_incorrect, rel=1e-12)
    assert math.isnan(row["ratio"]) and row["ratio_note"] == "delta_correct is 0 (equal median counts)"
    # one count more for kd: an exact delta of 0.5 / n
    rows[0]["correct_agreement"] = 1257 / n_correct
    rows[2]["correct_agreement"] = 1258 / n_correct
    row = asymmetry(pd.DataFrame(rows)).iloc[0]
    assert row["delta_correct"] == pytest.approx(0.5 / n_correct, rel=1e-12)
    assert row["ratio"] == pytest.approx((10.5 / n_incorrect) / (0.5 / n_correct), rel=1e-12)


def test_asymmetry_refuses_shares_that_are_not_counts():
    rows = [model("a", "kd", 0.5, 1.0, 1, 0, correct_agreement=0.5001, incorrect_agreement=0.5),
            siddo("a", 1, 0, correct_agreement=0.5, incorrect_agreement=0.5)]
    with pytest.raises(ValueError, match="correct_agreement \\* n_teacher_correct"):
        asymmetry(pd.DataFrame(rows))


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
    assert list(table.columns) == [
        "teacher_id", "alpha", "temperature", "widths", "n_widths", "n_models", "slope_correct",
        "slope_incorrect", "slope_ratio", "slope_ratio_low", "slope_ratio_high", "bootstrap",
        "n_pairs_vs_siddo", "slope_correct_vs_siddo", "slope_correct_vs_siddo_low",
        "slope_correct_vs_siddo_high", "slope_incorrect_vs_siddo", "slope_incorrect_vs_siddo_low",
        "slope_incorrect_vs_siddo_high", "slope_ratio_vs_siddo", "slope_ratio_vs_siddo_low",
        "slope_ratio_vs_siddo_high"]
    assert (table["widths"] == "all").all()
    assert len(table) == 4

    kd = table.loc[("a", "kd")]
    assert (kd["n_widths"], kd["n_models"]) == (4, 9)
    assert kd["slope_correct"] == pytest.approx(0.01)
    assert kd["slope_incorrect"] == pytest.approx(0.05)
    assert kd["slope_ratio"] == pytest.approx(5.0)
    # relative to siddo: kd - siddo of the 8 (width, seed) pairs both have, fitted by numpy
    frame = pd.DataFrame(rows)
    pairs = frame[frame["method"] == "kd"].merge(frame[frame["method"] == "siddo"],
                                                 on=["setup", "width", "seed"])
    x = np.log2(pairs["width"])
    for name in ("correct", "incorrect"):
        difference = pairs[f"{name}_agreement_x"] - pairs[f"{name}_agreement_y"]
        assert kd[f"slope_{name}_vs_siddo"] == pytest.approx(np.polyfit(x, difference, 1)[0])
    assert kd["n_pairs_vs_siddo"] == 8
    assert kd["slope_ratio_vs_siddo"] == pytest.approx(
        kd["slope_incorrect_vs_siddo"] / kd["slope_correct_vs_siddo"])

    # siddo keeps its NaN temperature as a group key; the NaN incorrect agreement is skipped
    s = table.loc[("a", "siddo")]
    assert s["alpha"] == 0.0 and math.isnan(s["temperature"])
    assert (s["n_widths"], s["n_models"]) == (5, 9)
    assert s["slope_correct"] == pytest.approx(0.02) and s["slope_incorrect"] == pytest.approx(0.02)
    assert s["slope_ratio"] == pytest.approx(1.0)
    assert s["n_pairs_vs_siddo"] == 0 and math.isnan(s["slope_correct_vs_siddo"])

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


def shared_seed_models(widths=(0.5, 1, 2, 4), n_seeds=6, bump=0.0):
    """kd and siddo students that share a per-seed offset (same init and data order), so that kd
    - siddo is exactly 0.1 + 0.01 log2(width) (correct) and 0.1 + 0.08 log2(width) (incorrect);
    ``bump`` lifts every width-1 student (the teacher's own init)."""
    rng = np.random.default_rng(5)
    rows = []
    for width in widths:
        x = math.log2(width)
        lift = bump if width == 1 else 0.0
        for seed in range(n_seeds):
            shared = rng.normal(0.0, 0.02)
            rows.append(model("a", "kd", 0.5, 1.0, width, seed,
                              correct_agreement=0.8 + 0.03 * x + shared + lift,
                              incorrect_agreement=0.3 + 0.1 * x + shared + 2 * lift))
            rows.append(siddo("a", width, seed, correct_agreement=0.7 + 0.02 * x + shared + lift,
                              incorrect_agreement=0.2 + 0.02 * x + shared + 2 * lift))
    return pd.DataFrame(rows)


def test_scaling_relative_to_siddo_pairs_models_by_seed():
    kd = scaling(shared_seed_models(), bootstrap=300).set_index("method").loc["kd"]
    assert kd["n_pairs_vs_siddo"] == 24
    assert kd["slope_correct_vs_siddo"] == pytest.approx(0.01)
    assert kd["slope_incorrect_vs_siddo"] == pytest.approx(0.08)
    assert kd["slope_ratio_vs_siddo"] == pytest.approx(8.0)
    # the seed's shared offset cancels in every pair, so every resample of pairs has the same
    # slopes; resampling kd and siddo separately would not
    for name, value in (("correct", 0.01), ("incorrect", 0.08), ("ratio", 8.0)):
        assert kd[f"slope_{name}_vs_siddo_low"] == pytest.approx(value)
        assert kd[f"slope_{name}_vs_siddo_high"] == pytest.approx(value)
    # the method's own slopes carry the shared noise: its interval is not a point
    assert kd["slope_ratio_low"] < kd["slope_ratio_high"]


def test_scaling_fresh_init_leaves_out_width_one():
    models = shared_seed_models(bump=0.05)
    every = scaling(models, bootstrap=0).set_index("method")
    fresh = scaling(models, bootstrap=0, widths="fresh-init").set_index("method")
    assert (every["widths"] == "all").all() and (fresh["widths"] == "fresh-init").all()
    assert (every["n_widths"] == 4).all() and (fresh["n_widths"] == 3).all()
    # width 1's lift bends every method's fit, but not the fit without it
    kd_every, kd_fresh = every.loc["kd"], fresh.loc["kd"]
    rows = models[(models["method"] == "kd") & (models["width"] != 1)]
    expected = np.polyfit(np.log2(rows["width"]), rows["correct_agreement"], 1)[0]
    assert kd_fresh["slope_correct"] == pytest.approx(expected)
    assert kd_fresh["slope_correct"] != pytest.approx(kd_every["slope_correct"])
    assert kd_fresh["slope_correct_vs_siddo"] == pytest.approx(0.01)
    with pytest.raises(ValueError, match="fresh"):
        scaling(models, widths="fresh")


def test_scaling_fresh_init_goes_by_from_theta0_where_the_table_has_it():
    """A table without from_theta0 (collected before it) leaves out width 1; one with it leaves
    out the students marked, so that width-1 students of another architecture, which start
    fresh, stay in the fit."""
    models = shared_seed_models(bump=0.05)
    without = scaling(models, bootstrap=0, widths="fresh-init")
    marked = scaling(models.assign(from_theta0=models["width"] == 1), bootstrap=0,
                     widths="fresh-init")
    pd.testing.assert_frame_equal(marked, without)
    every = scaling(models, bootstrap=0)
    other_arch = scaling(models.assign(from_theta0=False), bootstrap=0, widths="fresh-init")
    assert (other_arch["n_widths"] == 4).all()
    columns = [c for c in every.columns if c != "widths"]
    pd.testing.assert_frame_equal(other_arch[columns], every[columns])


def test_scaling_slope_that_is_zero_in_exact_arithmetic_gives_no_ratio():
    # widths 0.5, 0.5, 2 with counts 1256, 1258, 1257 of 1258: the exact slope is 0, in floats
    # about 3e-17, which made the slope ratio about 1e15
    n = 1258
    rows = [model("a", "kd", 0.5, 1.0, width, seed, correct_agreement=k / n,
                  incorrect_agreement=(50 + 10 * seed) / 142, n_teacher_correct=n,
                  n_teacher_incorrect=142)
            for seed, (width, k) in enumerate([(0.5, 1256), (0.5, 1258), (2.0, 1257)])]
    rows += [siddo("a", width, seed, correct_agreement=0.5, incorrect_agreement=0.5)
             for seed, width in enumerate([0.5, 0.5, 2.0])]
    kd = scaling(pd.DataFrame(rows), bootstrap=200).set_index("method").loc["kd"]
    assert kd["slope_correct"] == 0.0 and math.isnan(kd["slope_ratio"])
    assert kd["slope_correct_vs_siddo"] == 0.0 and math.isnan(kd["slope_ratio_vs_siddo"])
    for column in ("slope_ratio_low", "slope_ratio_high", "slope_ratio_vs_siddo_low",
                   "slope_ratio_vs_siddo_high"):
        assert not abs(kd[column]) > 1e6, column
