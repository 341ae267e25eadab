import math

import matplotlib as mpl
import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest

from kdpipe import plots, stats
from kdpipe.metrics import FUNCTIONAL_METRICS
from kdpipe.plan import figure_stems

SETUPS = ("cifar10_resnet18", "svhn_cnn")
ALPHAS = (0.1, 0.5, 0.9)
WIDTHS = (0.5, 1.0, 2.0)
SEEDS = (0, 1, 2, 3)
NAN = float("nan")


def synthetic_models(temperatures, rng_seed=0) -> pd.DataFrame:
    """A plausible models table: kd pulls the student toward the teacher with alpha (and less
    with T), rcd barely, wider students agree more on the teacher's errors. The second setup's
    teacher makes no test errors, so its incorrect agreement is NaN throughout."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    for i, setup in enumerate(SETUPS):
        dataset, arch = setup.split("_")
        teacher_id = f"{setup}-t0"
        n_incorrect = 120 if i == 0 else 0
        base = {"setup": setup, "dataset": dataset, "arch": arch, "teacher_id": teacher_id,
                "n_teacher_correct": 1000 - n_incorrect, "n_teacher_incorrect": n_incorrect,
                "labels_path": f"{setup}/labels.npy"}
        rows.append({**base, "role": "teacher", "method": "", "alpha": NAN, "temperature": NAN, "width": 1.0,
                     "seed": 0, "accuracy": 0.88 if i == 0 else 1.0, "loss": 0.4, "train_loss": 0.02 * 10**i,
                     "ece": 0.02, "logits_path": f"{setup}/teacher/logits.npy"})
        arms = [("siddo", 0.0, NAN)] + [(m, a, t) for m in ("kd", "rcd") for a in ALPHAS for t in temperatures]
        for width in WIDTHS:
            for seed in SEEDS:
                for method, alpha, temperature in arms:
                    pull = alpha / (temperature if method == "kd" else 10 * temperature) if alpha else 0.0
                    noise = rng.normal(0.0, 0.01, size=4)
                    correct = 0.93 + 0.04 * pull + 0.005 * math.log2(width) + noise[0]
                    incorrect = 0.35 + 0.25 * pull + 0.04 * math.log2(width) + 3 * noise[1]
                    # shares of whole test samples, as a real metric is
                    correct = round(min(correct, 1.0) * (1000 - n_incorrect)) / (1000 - n_incorrect)
                    incorrect = round(incorrect * n_incorrect) / n_incorrect if n_incorrect else NAN
                    distance = 0.25 - 0.15 * pull - 0.02 * math.log2(width) + noise[2]
                    rows.append({
                        **base, "role": "student", "method": method, "alpha": alpha, "temperature": temperature,
                        "width": width, "seed": seed, "accuracy": 0.86 + 0.02 * (method == "kd") + noise[3],
                        "loss": 0.45, "ece": 0.03 + abs(noise[3]),
                        "train_loss": 0.01, "activation_distance": distance, "js_divergence": distance**2 / 2,
                        "prediction_agreement": correct * 0.88 + incorrect * 0.12,
                        "correct_agreement": correct, "incorrect_agreement": incorrect,
                        "rank_disagreement": 0.1 + distance / 4,
                        "logits_path": f"{setup}/{method}/{alpha}/{temperature}/{width}/{seed}.npy",
                    })
    return pd.DataFrame(rows)


def write_tables(directory, temperatures, scaling_widths="all"):
    models = synthetic_models(temperatures)
    directory.mkdir(parents=True, exist_ok=True)
    tables = {"models": models, "stats": stats.compare_methods(models), "asymmetry": stats.asymmetry(models),
              "scaling": stats.scaling(models, widths=scaling_widths)}
    for name, table in tables.items():
        table.to_parquet(directory / f"{name}.parquet", index=False)
    return tables


@pytest.fixture(scope="module")
def one_t(tmp_path_factory):
    """Tables with one temperature and their figures in both default formats at 30 dpi, drawn
    in two processes."""
    root = tmp_path_factory.mktemp("one_t")
    tables = write_tables(root / "tables", [1.0])
    paths = plots.make_figures(root / "tables", root / "figures", {"dpi": 30}, workers=2)
    return root, tables, paths


@pytest.fixture(scope="module")
def two_t(tmp_path_factory):
    """Tables with two temperatures and their PNGs at 15 dpi in another seaborn style, with the
    global matplotlib state (rcParams, backend) before and after: drawn in this process."""
    root = tmp_path_factory.mktemp("two_t")
    write_tables(root / "tables", [1.0, 4.0])
    before = (dict(mpl.rcParams), mpl.get_backend())
    paths = plots.make_figures(root / "tables", root / "figures", {"formats": ["png"], "dpi": 15, "style": "dark"},
                               workers=1)
    return root, paths, before, (dict(mpl.rcParams), mpl.get_backend())


def test_make_figures_writes_exactly_the_stems(one_t):
    root, _, paths = one_t
    expected = [f"{stem}.{fmt}" for stem in figure_stems(list(SETUPS), [1.0]) for fmt in ("png", "pdf")]
    assert [p.name for p in paths] == expected
    assert sorted(p.name for p in (root / "figures").iterdir()) == sorted(expected)  # no temp files left
    assert not any("fig6" in name for name in expected)
    for path in paths:
        assert path.stat().st_size > 1000
        if path.suffix == ".pdf":
            assert path.read_bytes().startswith(b"%PDF")
        else:
            height, width = mpimg.imread(path).shape[:2]
            # every figure is 4 to 16 inches a side: 120 to 480 pixels at 30 dpi
            assert 120 <= height <= 480 and 120 <= width <= 480, (path.name, height, width)


def test_figures_drawn_in_parallel_are_the_serial_ones(one_t, tmp_path):
    root, _, paths = one_t
    serial = plots.make_figures(root / "tables", tmp_path, {"dpi": 30}, workers=1)
    assert [p.name for p in serial] == [p.name for p in paths]
    for parallel, alone in zip(paths, serial):
        assert parallel.read_bytes() == alone.read_bytes(), parallel.name


def test_several_temperatures_add_the_sweep(two_t):
    _, paths, _, _ = two_t
    assert [p.name for p in paths] == [f"{s}.png" for s in figure_stems(list(SETUPS), [1.0, 4.0])]
    assert {p.name for p in paths if p.name.startswith("fig6")} == {f"fig6_temperature_{s}.png" for s in SETUPS}
    for path in paths:
        assert mpimg.imread(path).size > 0


def test_dpi_scales_the_png(one_t, two_t):
    name = f"fig1_functional_{SETUPS[0]}.png"  # its size does not depend on the temperatures
    at_30 = mpimg.imread(one_t[0] / "figures" / name).shape[:2]
    at_15 = mpimg.imread(two_t[0] / "figures" / name).shape[:2]
    assert at_30[0] == pytest.approx(2 * at_15[0], abs=2) and at_30[1] == pytest.approx(2 * at_15[1], abs=2)


def test_make_figures_leaves_global_matplotlib_state_alone(two_t):
    _, _, before, after = two_t
    assert after[1] == before[1]
    assert after[0] == before[0]


def synthetic_history(models: pd.DataFrame, epochs: int = 6) -> pd.DataFrame:
    """A history table of the models: every model's loss falls and its accuracy rises with the
    epoch, faster for kd and by seed; the last seed of each group stops one epoch early (a
    target loss)."""
    rows = []
    for model in models.to_dict("records"):
        speed = 1.5 if model["method"] == "kd" else 1.0
        for epoch in range(1, epochs + (model["seed"] != SEEDS[-1])):
            rows.append({**{k: model[k] for k in ("setup", "teacher_id", "role", "method", "alpha",
                                                  "temperature", "width", "seed")},
                         "epoch": epoch, "loss": (2.0 + 0.2 * model["seed"]) / (speed * epoch),
                         "lr": 1e-3,
                         "accuracy": 1 - 0.5 / (speed * epoch), "seconds": 0.1})
    return pd.DataFrame(rows)


def test_the_training_curves_are_drawn_only_when_asked(tmp_path):
    tables = write_tables(tmp_path / "tables", [1.0])
    synthetic_history(tables["models"]).to_parquet(tmp_path / "tables/history.parquet")
    options = {"formats": ["png"], "dpi": 30, "training_curves": True}
    paths = plots.make_figures(tmp_path / "tables", tmp_path / "figures", options, workers=1)
    curves = [p for p in paths if p.name.startswith("fig9_training")]
    assert [p.name for p in curves] == [f"fig9_training_{s}.png" for s in SETUPS]
    assert [p.name for p in paths] == [f"{s}.png" for s in figure_stems(
        list(SETUPS), [1.0], training_curves=True)]
    assert all(mpimg.imread(p).size > 0 for p in curves)
    off = plots.make_figures(tmp_path / "tables", tmp_path / "off", {"formats": ["png"], "dpi": 30},
                             workers=1)
    assert not any(p.name.startswith("fig9") for p in off)


def test_the_training_curves_show_the_median_and_quartiles_over_seeds():
    models = synthetic_models([1.0])
    history = synthetic_history(models)
    fig = plots.fig9_training(history, SETUPS[0], 1.0, 1.0, plots.method_colors())
    loss = fig.axes[0]  # alpha 0.1, the loss
    kd = history[(history["method"] == "kd") & (history["alpha"] == 0.1)
                 & (history["width"] == 1.0) & (history["setup"] == SETUPS[0])]
    median = kd.groupby("epoch")["loss"].median()
    # 4 seeds: the mean of the middle two; the last epoch, 3 seeds: the middle one
    assert median.iloc[0] == pytest.approx((2.2 + 2.4) / 2 / 1.5)
    assert median.iloc[-1] == pytest.approx(2.2 / (1.5 * 6))
    drawn = [line for line in loss.lines if np.allclose(line.get_xdata(), median.index)
             and np.allclose(line.get_ydata(), median)]
    assert drawn, "kd's median loss curve is not drawn"
    assert len(fig.axes) >= 2 * len(ALPHAS) and loss.collections  # the bands


def test_unknown_option_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="dpis"):
        plots.make_figures(tmp_path, tmp_path, {"dpis": 300})


def test_shown_width_and_temperature_fall_back_to_the_closest_trained(one_t):
    _, tables, _ = one_t
    assert plots.shown_widths_and_temperature(tables["models"], 1.0, 1.0) == ({s: 1.0 for s in SETUPS}, 1.0)
    assert plots.shown_widths_and_temperature(tables["models"], 3.0, 8.0) == ({s: 2.0 for s in SETUPS}, 1.0)
    models = synthetic_models([1.0, 4.0])
    models = models[~((models["setup"] == SETUPS[1]) & (models["width"] == 2.0))]
    assert plots.shown_widths_and_temperature(models, 1.9, 3.0) == ({SETUPS[0]: 2.0, SETUPS[1]: 1.0}, 4.0)


def test_fig1_stars_mark_exactly_the_significant_alphas(one_t):
    _, tables, _ = one_t
    setup, table = SETUPS[0], tables["stats"]
    fig = plots.fig1_functional(tables["models"], table, setup, 1.0, 1.0, plots.method_colors())
    n_stars = 0
    for ax, metric in zip(fig.axes, FUNCTIONAL_METRICS):
        stars = [x for line in ax.lines if line.get_gid() == "significant" for x in line.get_xdata()]
        marked = table[(table["setup"] == setup) & (table["comparison"] == "kd_vs_siddo") & (table["width"] == 1.0)
                       & (table["metric"] == metric) & (table["p"] < 0.05) & table["toward_teacher"]]
        assert sorted(stars) == sorted(ALPHAS.index(alpha) for alpha in marked["alpha"]), metric
        n_stars += len(stars)
    assert 0 < n_stars < len(ALPHAS) * len(FUNCTIONAL_METRICS)


def test_fig4_lines_have_the_scaling_slopes(one_t):
    _, tables, _ = one_t
    setup = SETUPS[0]
    fig = plots.fig4_width(tables["models"], tables["scaling"], setup, 1.0, plots.method_colors())
    scaling = tables["scaling"][tables["scaling"]["setup"] == setup].set_index(["method", "alpha"])
    checked = 0
    for ax, (row, col) in zip(fig.axes, np.ndindex(2, len(ALPHAS))):
        column = ("slope_correct", "slope_incorrect")[row]
        for line in ax.lines:
            if line.get_gid() and line.get_gid().startswith("fit:"):
                method = line.get_gid()[4:]
                (x0, x1), (y0, y1) = line.get_xdata(), line.get_ydata()
                expected = scaling.loc[(method, 0.0 if method == "siddo" else ALPHAS[col]), column]
                assert (y1 - y0) / (x1 - x0) == pytest.approx(expected)
                assert f"{expected:+.3f}" in line.get_label()
                checked += 1
    assert checked == 2 * len(ALPHAS) * (len(plots.SHOWN) + 1)


def test_fig4_incorrect_legend_has_the_slope_ratio_and_its_interval(one_t):
    _, tables, _ = one_t
    setup = SETUPS[0]
    fig = plots.fig4_width(tables["models"], tables["scaling"], setup, 1.0, plots.method_colors())
    scaling = tables["scaling"][tables["scaling"]["setup"] == setup].set_index(["method", "alpha"])
    for ax, (row, col) in zip(fig.axes, np.ndindex(2, len(ALPHAS))):
        texts = [text.get_text() for text in ax.get_legend().get_texts()]
        assert len(texts) == len(plots.SHOWN) + 1
        for method, text in zip((*plots.SHOWN, plots.REFERENCE), texts):
            if row == 0:
                assert "ratio" not in text
                continue
            ratio, low, high = scaling.loc[(method, 0.0 if method == "siddo" else ALPHAS[col]),
                                           ["slope_ratio", "slope_ratio_low", "slope_ratio_high"]]
            assert low < high
            assert text.endswith(f"; ratio {ratio:.3g} [{low:.3g}, {high:.3g}]")


def test_fig4_without_finite_incorrect_agreement_draws_no_line(one_t):
    _, tables, _ = one_t
    fig = plots.fig4_width(tables["models"], tables["scaling"], SETUPS[1], 1.0, plots.method_colors())
    incorrect_row = fig.axes[len(ALPHAS):2 * len(ALPHAS)]
    assert not any(line.get_gid() for ax in incorrect_row for line in ax.lines)
    assert all(any(t.get_text() == "no finite values" for t in ax.texts) for ax in incorrect_row)


def test_teacher_transfer_matches_the_asymmetry_table_with_one_teacher(one_t):
    _, tables, _ = one_t
    transfer = plots.teacher_transfer(tables["models"], {s: 1.0 for s in SETUPS}, 1.0)
    asym = tables["asymmetry"]
    kd = asym[(asym["method"] == "kd") & (asym["width"] == 1.0)]
    merged = transfer.merge(kd, on=["setup", "alpha"], suffixes=("", "_table"))
    assert len(merged) == len(SETUPS) * len(ALPHAS)
    np.testing.assert_allclose(merged["delta_correct"], merged["delta_correct_table"])
    np.testing.assert_allclose(merged["delta_incorrect"], merged["delta_incorrect_table"])  # NaN == NaN
    assert set(merged["teacher_train_loss"]) == {0.02, 0.2}


def test_teacher_transfer_splits_by_teacher():
    models = synthetic_models([1.0])
    models = models[models["setup"] == SETUPS[0]].copy()
    second = models.copy()
    second["teacher_id"] = "other"
    second.loc[second["role"] == "teacher", "train_loss"] = 0.5
    kd = second["method"] == "kd"
    second.loc[kd, "correct_agreement"] += 11 / 880  # this teacher's kd students agree on 11 more
    transfer = plots.teacher_transfer(pd.concat([models, second]), {SETUPS[0]: 1.0}, 1.0)
    by_teacher = transfer.set_index(["teacher_id", "alpha"])
    for alpha in ALPHAS:
        gain = by_teacher.loc[("other", alpha), "delta_correct"] - by_teacher.loc[(f"{SETUPS[0]}-t0", alpha),
                                                                                  "delta_correct"]
        assert gain == pytest.approx(11 / 880)
    assert by_teacher.loc[("other", ALPHAS[0]), "teacher_train_loss"] == 0.5


def test_fig3_writes_the_accuracy_tests_above_each_alpha(one_t):
    _, tables, _ = one_t
    setup, table = SETUPS[0], tables["stats"]
    fig = plots.fig3_accuracy(tables["models"], table, setup, 1.0, 1.0, plots.method_colors())
    texts = {(t.get_gid(), t.get_position()[0]): t.get_text() for t in fig.axes[0].texts
             if (t.get_gid() or "").startswith("accuracy:")}
    rows = table[(table["setup"] == setup) & (table["metric"] == "accuracy") & (table["width"] == 1.0)
                 & table["comparison"].isin(["kd_vs_siddo", "kd_vs_rcd", "rcd_vs_siddo"])]
    assert len(texts) == len(rows) == 3 * len(ALPHAS)
    for row in rows.itertuples():
        text = texts[(f"accuracy:{row.comparison}", ALPHAS.index(row.alpha))]
        assert f"p {row.p:.2g}" in text
        assert text.endswith("*") == bool(row.p < 0.05)
    assert any(text.endswith("*") for text in texts.values())  # the synthetic kd is more accurate


def test_fig4_says_which_widths_the_slopes_are_fitted_on(tmp_path):
    tables = write_tables(tmp_path, [1.0], scaling_widths="fresh-init")
    setup = SETUPS[0]
    fig = plots.fig4_width(tables["models"], tables["scaling"], setup, 1.0, plots.method_colors())
    assert "every width but 1" in fig.get_suptitle()
    # the lines span the fitted widths only: 0.5 to 2, and have the table's slopes
    scaling = tables["scaling"][tables["scaling"]["setup"] == setup].set_index(["method", "alpha"])
    for line in fig.axes[0].lines:
        if (line.get_gid() or "").startswith("fit:"):
            method = line.get_gid()[4:]
            (x0, x1), (y0, y1) = line.get_xdata(), line.get_ydata()
            expected = scaling.loc[(method, 0.0 if method == "siddo" else ALPHAS[0]), "slope_correct"]
            assert (y1 - y0) / (x1 - x0) == pytest.approx(expected)
    every = write_tables(tmp_path / "all", [1.0])
    fig = plots.fig4_width(every["models"], every["scaling"], setup, 1.0, plots.method_colors())
    assert fig.get_suptitle().endswith("of every width")
    # students of another architecture start fresh at width 1 too: fitted, and the title says so
    fresh_everywhere = every["models"].assign(from_theta0=False)
    scaling = stats.scaling(fresh_everywhere, widths="fresh-init")
    fig = plots.fig4_width(fresh_everywhere, scaling, setup, 1.0, plots.method_colors())
    assert fig.get_suptitle().endswith(
        "of every width\n(fresh-init: no student starts from the teacher's initial weights)")
    # with the slopes fitted on every width
    fitted = every["scaling"][every["scaling"]["setup"] == setup].set_index(["method", "alpha"])
    lines = [line for line in fig.axes[0].lines if (line.get_gid() or "").startswith("fit:")]
    assert len(lines) == 3
    for line in lines:
        method = line.get_gid()[4:]
        (x0, x1), (y0, y1) = line.get_xdata(), line.get_ydata()
        expected = fitted.loc[(method, 0.0 if method == "siddo" else ALPHAS[0]), "slope_correct"]
        assert (y1 - y0) / (x1 - x0) == pytest.approx(expected)


def three_seed_tables():
    """The one-temperature models with kd's fourth seed dropped at alphas 0.1 and 0.5: there kd
    vs siddo has 3 and 4 seeds (smallest p 2 / 35 = 0.057: untestable at 0.05), at 0.9 still 4
    and 4 (2 / 70)."""
    models = synthetic_models([1.0])
    models = models[~((models["method"] == "kd") & (models["seed"] == 3) & (models["alpha"] < 0.7))]
    return models, stats.compare_methods(models)


def legend_texts(fig) -> list[str]:
    return [text.get_text() for legend in fig.legends for text in legend.get_texts()]


def test_fig1_marks_untestable_alphas_n_a_and_explains_it():
    models, table = three_seed_tables()
    setup = SETUPS[0]
    fig = plots.fig1_functional(models, table, setup, 1.0, 1.0, plots.method_colors())
    for ax, metric in zip(fig.axes, FUNCTIONAL_METRICS):
        marks = {line.get_gid(): sorted(line.get_xdata()) for line in ax.lines
                 if line.get_gid() in ("significant", "untestable")}
        assert marks["untestable"] == [0, 1], metric  # alphas 0.1 and 0.5
        untestable = [line for line in ax.lines if line.get_gid() == "untestable"][0]
        assert untestable.get_marker() == r"$\mathrm{n/a}$"
        # a star only where the 4-and-4 test is significant, never on an untestable alpha
        rows = table[(table["setup"] == setup) & (table["comparison"] == "kd_vs_siddo")
                     & (table["width"] == 1.0) & (table["metric"] == metric) & (table["alpha"] == 0.9)]
        assert marks.get("significant", []) == ([2] if rows["significant"].iloc[0] else []), metric
    assert "n/a: too few seeds to reject at 0.05" in legend_texts(fig)


def test_fig3_and_fig6_mark_untestable_tests_n_a():
    models, table = three_seed_tables()
    setup = SETUPS[0]
    fig = plots.fig3_accuracy(models, table, setup, 1.0, 1.0, plots.method_colors())
    ax = fig.axes[0]
    texts = {(t.get_gid(), t.get_position()[0]): t.get_text() for t in ax.texts
             if (t.get_gid() or "").startswith("accuracy:")}
    # kd vs rcd and kd vs siddo at alphas 0.1 and 0.5 have 3 kd seeds; rcd vs siddo has 4 and 4
    for (gid, x), text in texts.items():
        untestable = x in (0, 1) and gid != "accuracy:rcd_vs_siddo"
        assert text.endswith(" n/a") == untestable, (gid, x, text)
        assert not (untestable and "*" in text)
    assert ax.get_title().endswith("\nn/a: too few seeds to reject at 0.05")
    fig = plots.fig6_temperature(models, table, setup, 1.0, plots.method_colors())
    for i, ax in enumerate(fig.axes):  # one row per metric, one column per alpha
        marks = [x for line in ax.lines if line.get_gid() == "untestable" for x in line.get_xdata()]
        assert marks == ([0] if ALPHAS[i % len(ALPHAS)] < 0.7 else []), (i, marks)
    assert "n/a: too few seeds to reject at 0.05" in legend_texts(fig)


def test_no_n_a_mark_where_every_test_is_testable(one_t):
    _, tables, _ = one_t
    for setup in SETUPS:  # the second setup's incorrect agreement has no p: no mark either
        fig = plots.fig1_functional(tables["models"], tables["stats"], setup, 1.0, 1.0,
                                    plots.method_colors())
        assert not any(line.get_gid() == "untestable" for ax in fig.axes for line in ax.lines)
        assert not any(text.startswith("n/a") for text in legend_texts(fig))
        assert "kd vs siddo: Mann-Whitney p < 0.05, toward the teacher" in legend_texts(fig)
