"""Figures of the audit, drawn from the result tables alone (docs/protocol.md section 6).

make_figures reads models/stats/asymmetry/scaling.parquet (and, for the training curves,
history.parquet) from a tables folder and writes every figure that kdpipe.plan.figures names;
each figure is drawn by one function below that takes tables and returns a matplotlib Figure.

Figures are built as matplotlib.figure.Figure objects, never through pyplot: a caller's backend,
open figures and rcParams are left alone, PNG is rendered by Agg whatever backend is active, and
a figure is freed as soon as it is dropped (pyplot holds no reference that would need closing).
seaborn's style and context apply only while make_figures runs.

Conventions of every figure: methods in the registry's order, one colour each; a dot is one
student (one seed) and a bar joined by a line is the median over seeds. siddo does not depend on
alpha or T, so against those it is drawn as a reference across the panel: median line and
interquartile band. The methods drawn are arguments of the figures with the registry's defaults
(kdpipe.methods: the lead method kd, its control rcd, the reference siddo): figures 1-4 are drawn
for every lead method of the study (kd, and any other with STANDARD_FIGURES, a user's too)
against its control, and figures 1 and 2 also draw the groups of ``kdpipe compare``.
"""
from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from kdpipe.io import atomic_path
from kdpipe.methods import COMPARISONS_OF, CONTROL, LEAD, ORDER, REFERENCE, Registry, versus
from kdpipe.metrics import FUNCTIONAL_METRICS, HIGHER_IS_CLOSER
from kdpipe.plan import figures
from kdpipe.stats import asymmetry, fresh_init
from kdpipe.tables import of_teachers, primary_teachers

SHOWN = (LEAD, CONTROL)  # the methods drawn as dots against the reference: kd, rcd
TABLES = ("models", "stats", "asymmetry", "scaling")
DEFAULT_OPTIONS = {
    "formats": ["png", "pdf"],
    "dpi": 150,
    "width": 1.0,
    "temperature": 1.0,
    "training_curves": False,
    "style": "whitegrid",
    "context": "paper",
    "palette": "colorblind",
}

# metric -> (short name, what the value is, with its unit)
METRIC_LABELS = {
    "activation_distance": ("activation distance", r"mean $\|p_s - p_t\|_2$"),
    "js_divergence": ("Jensen-Shannon divergence", "mean JSD, nats"),
    "prediction_agreement": ("prediction agreement", "share of test samples"),
    "correct_agreement": ("agreement where the teacher is right", "share of teacher-correct samples"),
    "incorrect_agreement": ("agreement on the teacher's errors", "share of teacher-wrong samples"),
    "rank_disagreement": ("rank disagreement", "share of class pairs ordered differently"),
    "accuracy": ("test accuracy", "share of test samples correct"),
}
# Above a level where kd vs siddo is significant, a star; where that test cannot reject with so
# few seeds, "n/a" (mathtext, so that the legend shows the mark itself)
SIGNIFICANT_MARK = {"marker": "*", "markersize": 10}
UNTESTABLE_MARK = {"marker": r"$\mathrm{n/a}$", "markersize": 14}
# (agreement metric, its slope column in the scaling table, its delta column in the asymmetry table)
PAYOFF = (("correct_agreement", "slope_correct", "delta_correct"),
          ("incorrect_agreement", "slope_incorrect", "delta_incorrect"))


def method_colors(palette: str = "colorblind", methods=ORDER) -> dict:
    """The colour of each method: the first colours of a seaborn palette, in ``methods`` order
    (default: the registry's)."""
    return dict(zip(methods, sns.color_palette(palette, len(methods))))


def make_figures(tables_dir, out_dir, options: dict | None = None,
                 workers: int | None = None, user_methods: dict | None = None) -> list[Path]:
    """Draw every figure kdpipe.plan.figures names, from the four tables in ``tables_dir``, into
    ``out_dir``.

    The setups and temperatures are those of the models table; a setup with several teachers
    shows its primary one (kdpipe.tables.primary_teachers) except in figure 5, which plots
    every teacher's train loss against transfer. options, all optional:
      formats      file formats written for each figure (default ["png", "pdf"])
      dpi          raster resolution, dots per inch (default 150)
      width        student width multiplier shown by figures 1-3 and 5 (default 1.0:
                   self-distillation); a setup without it shows its closest trained width
      temperature  KD temperature shown by figures 1-5 (default 1.0, the protocol's); the closest
                   trained T where it is absent
      training_curves  also figure 9, the training curves of each setup (default False), from
                   history.parquet
      style, context, palette   seaborn axes style, plotting context and method palette
                   (defaults "whitegrid", "paper", "colorblind")
    workers: processes drawing the figures (default: the CPUs this process may use; 1 draws
    here). user_methods: the config's own methods (its ``methods`` section), whose students the
    tables may hold. Every file is written atomically. Returns the paths written, in the order
    of kdpipe.plan.figures.
    """
    options = {**DEFAULT_OPTIONS, **(options or {})}
    unknown = sorted(set(options) - set(DEFAULT_OPTIONS))
    if unknown:
        raise ValueError(f"unknown figure option(s) {', '.join(unknown)}; known: {', '.join(DEFAULT_OPTIONS)}")
    every = {name: pd.read_parquet(Path(tables_dir) / f"{name}.parquet") for name in TABLES}
    # a setup's own figures show its primary teacher's students; figure 5 shows every teacher
    primary = primary_teachers(every["models"]).values()
    tables = {name: of_teachers(table, primary) for name, table in every.items()}
    models, stats = tables["models"], tables["stats"]
    students = models[models["role"] == "student"]
    setups = sorted(students["setup"].unique())
    temperatures = sorted(students["temperature"].dropna().unique())
    widths, temperature = shown_widths_and_temperature(models, options["width"], options["temperature"])
    registry = Registry(user_methods)
    colors = method_colors(options["palette"], registry.order)
    history = None
    if options["training_curves"]:
        history = of_teachers(pd.read_parquet(Path(tables_dir) / "history.parquet"), primary)

    def shown(m):
        """A lead method and its control; the T shown, None for a method without T (every one)."""
        return (m, registry.method(m).control), temperature if registry.method(m).uses_temperature else None

    # figure -> the drawing of it for a setup (None: across setups) and method
    drawing = {
        "fig1_functional": lambda s, m: partial(fig1_functional, models, stats, s, widths[s], shown(m)[1],
                                                colors, shown(m)[0]),
        "fig2_payoff": lambda s, m: partial(fig2_payoff, models, stats, tables["asymmetry"], s, widths[s],
                                            shown(m)[1], colors, shown(m)[0]),
        "fig3_accuracy": lambda s, m: partial(fig3_accuracy, models, stats, s, widths[s], shown(m)[1], colors,
                                              shown(m)[0], comparisons=registry.comparisons_of[m]),
        "fig4_width": lambda s, m: partial(fig4_width, models, tables["scaling"], s, shown(m)[1], colors,
                                           shown(m)[0]),
        "fig5_teacher_loss": lambda s, m: partial(fig5_teacher_loss, every["models"], widths, temperature),
        "fig6_temperature": lambda s, m: partial(fig6_temperature, models, stats, s, widths[s], colors),
        "fig7_masked": lambda s, m: partial(fig7_masked, models, s, widths[s], temperature, colors,
                                            registry.method(m)),
        "fig8_fm": lambda s, m: partial(fig8_fm, models, s, widths[s], colors, registry.method(m)),
        "fig9_training": lambda s, m: partial(fig9_training, history, s, widths[s], temperature,
                                              colors, registry.order),
    }
    jobs = [(stem, drawing[figure](setup, method), Path(out_dir), options,
             chance_note(models if setup else every["models"], setup))
            for stem, figure, setup, method in figures(setups, temperatures, set(students["method"]),
                                                       options["training_curves"], registry)]
    return render(write_figure, jobs, workers, "figures")


def write_figure(stem: str, draw, out_dir: Path, options: dict,
                 note: str | None = None) -> list[Path]:
    """Draw one figure in the options' seaborn style and context, ``note`` (a warning) first in
    its title, and save it; the paths."""
    with sns.axes_style(options["style"]), sns.plotting_context(options["context"]):
        fig = draw()
        if note:
            fig.suptitle(f"{note}\n{fig.get_suptitle()}", wrap=True)
        return save_figure(fig, out_dir, stem, options["formats"], options["dpi"])


def chance_note(models, setup: str | None = None) -> str | None:
    """The warning a figure of ``setup`` (None: of every setup) carries where it shows students
    of a teacher at chance, which its setup's allow_chance_teacher let train: the models table's
    at_chance (collect's; a table from before that column has none to say)."""
    if "at_chance" not in models:
        return None
    teachers = models[(models["role"] == "teacher") & models["at_chance"].eq(True)]
    if setup is not None:
        teachers = teachers[teachers["setup"] == setup]
    if teachers.empty:
        return None
    named = ", ".join(f"{t.teacher_id} (test accuracy {t.accuracy:.3f}, chance "
                      f"{t.chance_accuracy:.3f})" for t in teachers.itertuples())
    return (f"WARNING: teacher at chance, whose students measure nothing (allowed by "
            f"allow_chance_teacher): {named}")


def save_figure(fig: Figure, out_dir: Path, stem: str, formats, dpi: float) -> list[Path]:
    """Write ``fig`` to out_dir/<stem>.<format> for every format, each atomically; the paths."""
    paths = []
    for fmt in formats:
        path = Path(out_dir) / f"{stem}.{fmt}"
        with atomic_path(path) as tmp:
            # no creation date in PDFs: the same tables and options give the same bytes
            fig.savefig(tmp, format=fmt, dpi=dpi,
                        metadata={"CreationDate": None} if fmt == "pdf" else None)
        paths.append(path)
    return paths


def render(write, jobs: list, workers: int | None = None, label: str = "figures") -> list[Path]:
    """``write(*job)`` for every job (it draws and saves figures, returning their paths), in up
    to ``workers`` processes (default: the CPUs this process may use; 1: here, one after
    another). Returns the paths in job order. Drawing and saving is most of a figures step's
    time, and one process draws one figure at a time."""
    from kdpipe.progress import Progress

    workers = min(workers or available_cpus(), len(jobs))
    paths = []
    with Progress(label, len(jobs), "figures") as progress:
        if workers <= 1:
            for job in jobs:
                paths += write(*job)
                progress.advance()
            return paths
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # Not forked from here, which holds pyarrow's threads: forked from a fresh server
        # process that imports the plotting modules once for all workers.
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["kdpipe.audit", "kdpipe.plots"])
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            for written in pool.map(write, *zip(*jobs)):
                paths += written
                progress.advance()
    return paths


def available_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def shown_widths_and_temperature(models, width: float, temperature: float) -> tuple[dict, float]:
    """The student width each setup's figures show (setup -> width) and the T figures 1-5 show.

    Each is the trained value closest to the one asked for (width per setup, T over all setups).
    """
    students = models[models["role"] == "student"]
    widths = {setup: _closest(rows["width"].unique(), width) for setup, rows in students.groupby("setup")}
    return widths, _closest(students["temperature"].dropna().unique(), temperature)


# ---- the figures -------------------------------------------------------------------------------

def fig1_functional(models, stats, setup, width, temperature, colors, methods=SHOWN,
                    reference=REFERENCE) -> Figure:
    """Every functional metric of the students of ``methods`` (default kd and rcd) by alpha, with
    the ``reference`` method (siddo) as reference band.

    A star marks an alpha where the lead, methods[0], differs from the reference significantly
    toward the teacher, "n/a" one where the test cannot reject with so few seeds (see
    _significance_marks). ``width`` or ``temperature`` None keeps every one: students without
    alpha (``kdpipe compare``'s groups) are drawn at one position.
    """
    lead = methods[0]
    students = _students(models, setup, width, temperature, reference)
    alphas = _levels(students, "alpha", methods)
    to_x = partial(_level_index, alphas)
    tests = _versus(stats, versus(lead, reference)[0], setup, width, temperature)
    fig = Figure(figsize=(11, 6.6), layout="constrained")
    axes = fig.subplots(2, 3, sharex=True)
    untestable = False
    for ax, metric in zip(axes.flat, FUNCTIONAL_METRICS):
        _metric_panel(ax, students, metric, "alpha", to_x, colors, methods, reference)
        untestable |= _significance_marks(ax, tests[tests["metric"] == metric], "alpha", to_x,
                                          colors[lead])
        ax.set_title(METRIC_LABELS[metric][0])
        ax.set_ylabel(_value_label(metric))
    for ax in axes[-1]:
        _level_axis(ax, alphas, "alpha (weight of the distillation term)")
    fig.suptitle(f"{setup}: functional similarity of the student to its teacher\n"
                 f"{_cell(width, temperature)}{_n_seeds(students)}")
    handles, labels = _method_legend(colors, stats, untestable, methods, reference)
    fig.legend(handles, labels, loc="outside lower center", ncols=2, frameon=False)
    return fig


def fig2_payoff(models, stats, asymmetry_table, setup, width, temperature, colors, methods=SHOWN,
                reference=REFERENCE) -> Figure:
    """Agreement where the teacher is right and where it is wrong, by alpha: the asymmetric payoff.

    Under each alpha: the lead's delta (median lead - median reference; default kd and siddo)
    from the asymmetry table. Methods, stars, "n/a" marks and None as in figure 1.
    """
    lead = methods[0]
    students = _students(models, setup, width, temperature, reference)
    alphas = _levels(students, "alpha", methods)
    to_x = partial(_level_index, alphas)
    tests = _versus(stats, versus(lead, reference)[0], setup, width, temperature)
    deltas = _cell_rows(asymmetry_table[asymmetry_table["method"] == lead], setup, width,
                        temperature)
    fig = Figure(figsize=(9, 4.8), layout="constrained")
    axes = fig.subplots(1, 2, sharex=True)
    untestable = False
    for ax, (metric, _, delta) in zip(axes, PAYOFF):
        _metric_panel(ax, students, metric, "alpha", to_x, colors, methods, reference)
        untestable |= _significance_marks(ax, tests[tests["metric"] == metric], "alpha", to_x,
                                          colors[lead])
        _delta_labels(ax, to_x(deltas["alpha"]), deltas[delta].to_numpy(dtype=float), colors[lead])
        ax.set_title(METRIC_LABELS[metric][0])
        ax.set_ylabel(_value_label(metric))
        _level_axis(ax, alphas, "alpha (weight of the distillation term)")
    fig.suptitle(f"{setup}: what {lead} transfers where the teacher is right vs. where it is "
                 "wrong\n"
                 f"{_cell(width, temperature)}{_n_seeds(students)}; "
                 rf"$\Delta$ = median {lead} $-$ median {reference}")
    handles, labels = _method_legend(colors, stats, untestable, methods, reference)
    fig.legend(handles, labels, loc="outside lower center", ncols=2, frameon=False)
    return fig


def fig3_accuracy(models, stats, setup, width, temperature, colors, methods=SHOWN,
                  reference=REFERENCE, comparisons=COMPARISONS_OF[LEAD]) -> Figure:
    """Student test accuracy by alpha for ``methods`` (default kd and rcd) and the ``reference``
    (siddo); the teacher's as a dashed line.

    Above each alpha, the two-sided Mann-Whitney p of the stats table's accuracy rows of
    ``comparisons`` (default kd vs siddo, kd vs rcd, rcd vs siddo), with a star where the row is
    significant and "n/a" where it has a p but cannot reject with so few seeds (the table's
    testable is False).
    """
    students = _students(models, setup, width, temperature, reference)
    alphas = _levels(students, "alpha", methods)
    to_x = partial(_level_index, alphas)
    teachers = models.loc[(models["role"] == "teacher") & (models["setup"] == setup), "accuracy"].dropna()
    fig = Figure(figsize=(7, 5.4), layout="constrained")
    ax = fig.subplots()
    _metric_panel(ax, students, "accuracy", "alpha", to_x, colors, methods, reference)
    handles, labels = _method_legend(colors, methods=methods, reference=reference)
    if len(teachers):
        ax.axhline(teachers.median(), color="black", ls="--", lw=1.2)
        handles.append(Line2D([], [], color="black", ls="--", lw=1.2))
        labels.append("teacher" if len(teachers) == 1 else f"teacher (median of {len(teachers)})")
    untestable = _accuracy_tests(ax, stats, setup, width, temperature, to_x, comparisons)
    ax.set_ylabel(_value_label("accuracy"))
    _level_axis(ax, alphas, "alpha (weight of the distillation term)")
    ax.set_title(f"{setup}: test accuracy of teacher and students\n"
                 f"{_cell(width, temperature)}{_n_seeds(students)}; "
                 "p: two-sided Mann-Whitney, * significant"
                 + (f"\n{_untestable_label(stats)}" if untestable else ""))
    fig.legend(handles, labels, loc="outside lower center", ncols=2, frameon=False)
    return fig


def _accuracy_tests(ax, stats, setup, width, temperature, to_x,
                    comparisons=COMPARISONS_OF[LEAD]) -> bool:
    """Write above each alpha the p of each accuracy comparison of ``comparisons`` ((name,
    first, second) triples), starred where significant,
    followed by "n/a" where the test has a p but is not testable; the y range grows to make
    room. Each text's gid is "accuracy:<comparison>". Whether an "n/a" was written."""
    rows = _cell_rows(stats[(stats["metric"] == "accuracy")
                            & stats["comparison"].isin([name for name, _, _ in comparisons])],
                      setup, width, temperature)
    if rows.empty:
        return False
    low, high = ax.get_ylim()
    ax.set_ylim(low, high + 0.25 * (high - low))
    p_column = "p_adjusted" if "p_adjusted" in rows else "p"
    untestable = False
    for line, (name, first, second) in enumerate(comparisons):
        for row in rows[rows["comparison"] == name].itertuples():
            p = getattr(row, p_column)
            text = f"{first}-{second} p " + (f"{p:.2g}" if np.isfinite(p) else "n/a")
            if row.testable:
                text += "*" if row.significant else ""
            elif np.isfinite(p):
                text += " n/a"
                untestable = True
            ax.text(to_x([row.alpha])[0], 0.97 - 0.055 * line, text, transform=ax.get_xaxis_transform(),
                    ha="center", va="top", fontsize="x-small", gid=f"accuracy:{name}")
    return untestable


def fig4_width(models, scaling_table, setup, temperature, colors, methods=SHOWN,
               reference=REFERENCE) -> Figure:
    """Correct and incorrect agreement against student width, one column per alpha, for
    ``methods`` (default kd and rcd) and the ``reference`` (siddo).

    Each method gets the least-squares line on log2(width) over all its models: the slope is the
    scaling table's, the intercept mean(y) - slope * mean(log2 width) over the same models. The
    legend of the incorrect-agreement panel adds the scaling table's slope ratio (incorrect /
    correct) and its 95% bootstrap interval over seeds, as they are ("n/a" where NaN).
    siddo has no alpha: the same siddo models appear in every column. Where the scaling table
    was fitted on the fresh-init students (its ``widths`` column), the lines leave out the
    students that start from the teacher's theta0 too (kdpipe.stats.fresh_init: width 1 of the
    teacher's architecture) and the title says which widths that leaves out.
    """
    def number(value):
        return f"{value:.3g}" if np.isfinite(value) else "n/a"

    students = _students(models, setup, None, temperature, reference)
    alphas = _levels(students, "alpha", methods)
    drawn = (*methods, reference)
    students = students[students["method"].isin(drawn)]
    widths = np.sort(students["width"].unique())
    fitted = scaling_table.loc[scaling_table["setup"] == setup, "widths"]
    fresh = len(fitted) > 0 and fitted.iloc[0] == "fresh-init"
    fitted_students = fresh_init(students) if fresh else students
    left_out = ", ".join(f"{w:g}" for w in sorted(
        students.loc[~students.index.isin(fitted_students.index), "width"].unique()))
    # a slope needs two widths among those fitted
    one_width = fitted_students["width"].nunique() < 2
    missing = "n/a (one width: no slope)" if one_width else "n/a"
    fig = Figure(figsize=(3.6 * len(alphas) + 0.8, 7), layout="constrained")
    axes = fig.subplots(2, len(alphas), sharex=True, sharey="row", squeeze=False)
    for col, alpha in enumerate(alphas):
        at_alpha = students[(students["method"] == reference) | _isclose(students["alpha"], alpha)]
        for row, (metric, slope_column, _) in enumerate(PAYOFF):
            ax = axes[row, col]
            if at_alpha[metric].isna().all():
                _no_data(ax)
            _dots_and_medians(ax, at_alpha, metric, "width", np.log2, drawn, colors, medians=False)
            handles, labels = [], []
            for method, offset in zip(drawn, _dodge(len(drawn))):
                slope = _scaling_value(scaling_table, setup, method, alpha, temperature, slope_column,
                                       reference)
                rows = at_alpha[(at_alpha["method"] == method)
                                & at_alpha.index.isin(fitted_students.index)]
                _fit_line(ax, rows, metric, slope, offset, colors[method], label=method,
                          missing=missing)
                handles.append(ax.lines[-1])
                labels.append(handles[-1].get_label())
                if metric == "incorrect_agreement" and not one_width:
                    ratio, low, high = (_scaling_value(scaling_table, setup, method, alpha, temperature, column,
                                                       reference)
                                        for column in ("slope_ratio", "slope_ratio_low", "slope_ratio_high"))
                    labels[-1] += f"; ratio {number(ratio)} [{number(low)}, {number(high)}]"
            title = ("slope per doubling" if metric == "correct_agreement" or one_width else
                     "slope per doubling; ratio to the correct\nslope [95% bootstrap interval over seeds]")
            ax.legend(handles, labels, title=title, fontsize="x-small", title_fontsize="x-small", loc="best")
            if row == 0:
                ax.set_title(f"alpha = {alpha:g}")
            if col == 0:
                ax.set_ylabel(f"{METRIC_LABELS[metric][0]}\n{_value_label(metric)}")
            if row == 1:
                _width_axis(ax, widths)
    fit = "lines: least-squares fit on log2(width) over all models of every width"
    if left_out:
        fit += (f" but {left_out}\n(fresh-init widths: width-{left_out} students start from the "
                "teacher's initial weights)")
    elif fresh:
        fit += "\n(fresh-init: no student starts from the teacher's initial weights)"
    if one_width:
        fit = ("no lines: the slopes need students of two widths or more"
               + (f" other than {left_out} (fresh-init widths)" if left_out else ""))
    # wrapped to the figure's width, which is that of one column per alpha
    fig.suptitle(f"{setup}: agreement with the teacher against student width ({_cell(None, temperature)}"
                 f"{_n_seeds(students)}); {reference} (no alpha) repeated in every column\n{fit}",
                 wrap=True)
    return fig


def fig5_teacher_loss(models, widths: dict, temperature) -> Figure:
    """Teacher train loss against kd transfer, one point per (setup, teacher) and alpha.

    Transfer is kd's delta_correct and delta_incorrect (median kd - median siddo) of the
    asymmetry table, computed per teacher among that teacher's own students at the setup's
    figure width (``widths``: setup -> width); with one teacher per setup these are the
    asymmetry table's values.
    """
    transfer = teacher_transfer(models, widths, temperature)
    alphas = np.sort(transfer["alpha"].unique())
    alpha_colors = dict(zip(alphas, sns.color_palette("viridis", len(alphas))))
    teachers_per_setup = transfer.groupby("setup")["teacher_id"].nunique()
    fig = Figure(figsize=(10, 4.8), layout="constrained")
    axes = fig.subplots(1, 2, sharex=True)
    for ax, (metric, _, delta) in zip(axes, PAYOFF):
        for alpha in alphas:
            rows = transfer[transfer["alpha"] == alpha]
            ax.scatter(rows["teacher_train_loss"], rows[delta], color=alpha_colors[alpha], s=30, zorder=3,
                       label=f"alpha = {alpha:g}")
        missing = []
        for (setup, teacher_id), rows in transfer.groupby(["setup", "teacher_id"]):
            name = setup if teachers_per_setup[setup] == 1 else f"{setup} ({teacher_id})"
            if rows[delta].isna().all():
                missing.append(name)
            else:
                ax.annotate(name, (rows["teacher_train_loss"].iloc[0], rows[delta].max()), xytext=(0, 7),
                            textcoords="offset points", ha="center", fontsize="small")
        if missing:
            ax.text(0.02, 0.02, "no finite value: " + ", ".join(missing), transform=ax.transAxes,
                    fontsize="small", color="0.4")
        ax.axhline(0.0, color="0.4", lw=0.8)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("teacher train loss (mean cross-entropy, nats; log scale)")
        ax.set_ylabel(rf"$\Delta$ agreement: median {LEAD} $-$ median {REFERENCE}")
        ax.set_title(METRIC_LABELS[metric][0])
        ax.margins(x=0.2, y=0.15)
    shown = sorted(set(widths.values()))
    width_text = f"{shown[0]:g}" if len(shown) == 1 else ", ".join(f"{s} {w:g}" for s, w in widths.items())
    fig.suptitle(f"Teacher train loss against what {LEAD} transfers (student width {width_text}, "
                 f"T = {temperature:g})\none point per teacher and alpha; "
                 f"0 = no more agreement than {REFERENCE}")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=max(len(alphas), 1), frameon=False)
    return fig


def fig7_masked(models, setup, width, temperature, colors, masked) -> Figure:
    """Our kd-masked (the KD term only where the teacher is right; ``masked`` is its registry
    entry) and its control against kd, by alpha: does it copy fewer of the teacher's errors
    without losing accuracy?"""
    return _variant_figure(
        _students(models, setup, width, temperature), (LEAD, masked.name, masked.control),
        (masked.name, LEAD), colors,
        f"{setup}: {masked.name} (ours: no KD term on the teacher's errors) against {LEAD}\n"
        f"student width {width:g}, T = {temperature:g}")


def fig8_fm(models, setup, width, colors, matching) -> Figure:
    """Feature-map matching (``matching`` is its registry entry) and its random control against
    siddo, by alpha."""
    return _variant_figure(
        _students(models, setup, width), (matching.name, matching.control),
        (matching.name, REFERENCE), colors,
        f"{setup}: feature-map matching ({matching.name}) and its random control\n"
        f"student width {width:g}")


def _variant_figure(students, methods, delta, colors, title) -> Figure:
    """Correct and incorrect agreement and accuracy by alpha for ``methods`` (dots: seeds, bars:
    medians), siddo as the reference band; under each alpha the median of delta[0] minus the
    median of delta[1]."""
    alphas = np.sort(students.loc[students["method"].isin(methods), "alpha"].dropna().unique())
    to_x = partial(_level_index, alphas)
    fig = Figure(figsize=(13, 4.8), layout="constrained")
    axes = fig.subplots(1, 3, sharex=True)
    for ax, metric in zip(axes, ("correct_agreement", "incorrect_agreement", "accuracy")):
        if students[metric].isna().all():
            _no_data(ax)
            continue
        _metric_panel(ax, students, metric, "alpha", to_x, colors, methods)
        pool = students.loc[students["method"] == REFERENCE, metric].dropna()
        others = students[students["method"] != REFERENCE]
        medians = others.groupby(["method", "alpha"])[metric].median()
        reference = [pool.median() if delta[1] == REFERENCE else medians.get((delta[1], a), np.nan)
                     for a in alphas]
        deltas = [medians.get((delta[0], a), np.nan) - r for a, r in zip(alphas, reference)]
        _delta_labels(ax, to_x(alphas), np.asarray(deltas, dtype=float), colors[delta[0]])
        ax.set_title(METRIC_LABELS[metric][0])
        ax.set_ylabel(_value_label(metric))
        _level_axis(ax, alphas, "alpha (weight of the distillation term)")
    fig.suptitle(f"{title}, {_n_seeds(students)}; " + rf"$\Delta$ = median {delta[0]} $-$ median {delta[1]}")
    handles = [Line2D([], [], color=colors[m], marker="o", markersize=4, lw=1.2) for m in methods]
    labels = [f"{m}: dots = seeds, line = medians" for m in methods]
    handles.append(_band_handle(colors[REFERENCE]))
    labels.append(f"{REFERENCE}: median and IQR band")
    fig.legend(handles, labels, loc="outside lower center", ncols=len(methods) + 1, frameon=False)
    return fig


def fig6_temperature(models, stats, setup, width, colors) -> Figure:
    """The functional metrics of kd and rcd against T, one row per metric and one column per alpha.

    siddo (no T) is the reference band; stars mark significant kd vs siddo transfer at that T,
    "n/a" a test that cannot reject with so few seeds.
    """
    students = _students(models, setup, width, None)
    alphas = _levels(students, "alpha")
    temperatures = _levels(students, "temperature")
    to_x = partial(_level_index, temperatures)
    tests = _versus(stats, versus(LEAD, REFERENCE)[0], setup, width)
    untestable = False
    fig = Figure(figsize=(3.4 * len(alphas) + 1.2, 2.3 * len(FUNCTIONAL_METRICS) + 1.4), layout="constrained")
    axes = fig.subplots(len(FUNCTIONAL_METRICS), len(alphas), sharex=True, squeeze=False)
    for col, alpha in enumerate(alphas):
        at_alpha = students[(students["method"] == REFERENCE) | _isclose(students["alpha"], alpha)]
        marked = tests[_isclose(tests["alpha"], alpha)]
        for row, metric in enumerate(FUNCTIONAL_METRICS):
            ax = axes[row, col]
            _metric_panel(ax, at_alpha, metric, "temperature", to_x, colors)
            untestable |= _significance_marks(ax, marked[marked["metric"] == metric],
                                              "temperature", to_x, colors[LEAD])
            if row == 0:
                ax.set_title(f"alpha = {alpha:g}")
            if col == 0:
                ax.set_ylabel(f"{METRIC_LABELS[metric][0]}\n{_value_label(metric)}", fontsize="small")
    for ax in axes[-1]:
        _level_axis(ax, temperatures, "distillation temperature T")
    fig.suptitle(f"{setup}: temperature sweep, student width {width:g}, {_n_seeds(students)}")
    handles, labels = _method_legend(colors, stats, untestable)
    fig.legend(handles, labels, loc="outside lower center", ncols=2, frameon=False)
    return fig


def fig9_training(history, setup, width, temperature, colors, order=ORDER) -> Figure:
    """Training curves of a setup's students at ``width`` and ``temperature`` (siddo: at any T),
    one column per alpha: the mean training loss and accuracy of each epoch against the epoch,
    per method the median over seeds and the interquartile band; the teacher's own curve dashed.
    A method's loss is its own objective (kd's includes its distillation term), so losses of
    different methods are not one quantity; accuracy is on the training batches. ``order``: the
    study's methods (the registry's, a user's included), in the order drawn."""
    rows = history[history["setup"] == setup]
    teacher = rows[rows["role"] == "teacher"]
    students = _students(rows, setup, width, temperature)
    alphas = _levels(students, "alpha", [m for m in order if m != REFERENCE])
    fig = Figure(figsize=(max(7.5, 3.6 * len(alphas) + 1.6), 6.4), layout="constrained")
    axes = fig.subplots(2, len(alphas), sharex=True, squeeze=False)
    shown = [m for m in order if m in set(students["method"])]
    for col, alpha in enumerate(alphas):
        at_alpha = students[(students["method"] == REFERENCE) | np.isnan(alpha)
                            | _isclose(students["alpha"], alpha)]
        for ax, metric in zip(axes[:, col], ("loss", "accuracy")):
            if at_alpha.empty and teacher.empty:
                _no_data(ax)
                continue
            for method in shown:
                curve = at_alpha[at_alpha["method"] == method].groupby("epoch")[metric]
                if not len(curve):
                    continue
                low, mid, high = (curve.quantile(q) for q in (0.25, 0.5, 0.75))
                ax.fill_between(mid.index, low, high, color=colors[method], alpha=0.2, lw=0)
                ax.plot(mid.index, mid, color=colors[method], lw=1.4)
            ax.plot(teacher["epoch"], teacher[metric], color="0.3", ls="--", lw=1.2)
            if col == 0:
                ax.set_ylabel("mean training loss\n(each method's own objective)" if metric == "loss"
                              else "training accuracy\n(share of batch targets)")
            if metric == "loss":
                ax.set_title("" if np.isnan(alpha) else f"alpha = {alpha:g}")
            else:
                ax.set_xlabel("epoch")
    fig.suptitle(f"{setup}: training curves\n{_cell(width, temperature)}{_n_seeds(students)}: "
                 "median and interquartile band")
    handles = [_band_handle(colors[m]) for m in shown]
    handles.append(Line2D([], [], color="0.3", ls="--", lw=1.2))
    fig.legend(handles, [*shown, "teacher"], loc="outside lower center", ncols=len(shown) + 1,
               frameon=False)
    return fig


def teacher_transfer(models, widths: dict, temperature) -> pd.DataFrame:
    """kd's delta_correct and delta_incorrect per (setup, teacher, alpha), with the teacher's train loss.

    Each teacher's own students at the setup's width (``widths``: setup -> width) and at
    ``temperature`` go through kdpipe.stats.asymmetry, so the deltas are defined exactly as in
    the asymmetry table. Teacher rows carry their own id in teacher_id.
    """
    columns = ["setup", "teacher_id", "alpha", "teacher_train_loss", "delta_correct", "delta_incorrect"]
    parts = []
    teachers = models[models["role"] == "teacher"]
    for (setup, teacher_id), teacher in teachers.groupby(["setup", "teacher_id"]):
        if setup not in widths:
            continue
        students = _students(models, setup, widths[setup], temperature)
        table = asymmetry(students[students["teacher_id"] == teacher_id])
        lead = table[table["method"] == LEAD].assign(
            teacher_id=teacher_id, teacher_train_loss=teacher["train_loss"].iloc[0])
        parts.append(lead[columns])
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)


# ---- drawing helpers ---------------------------------------------------------------------------

def _metric_panel(ax, students, metric, by, to_x, colors, methods=SHOWN,
                  reference=REFERENCE) -> None:
    """Dots per seed of ``methods`` with their medians along ``by``; the reference method as a
    horizontal reference (median line and IQR band)."""
    if students[metric].isna().all():
        _no_data(ax)
        return
    _dots_and_medians(ax, students, metric, by, to_x, methods, colors)
    pool = students.loc[students["method"] == reference, metric].dropna()
    if len(pool):
        q1, median, q3 = pool.quantile([0.25, 0.5, 0.75])
        ax.axhspan(q1, q3, color=colors[reference], alpha=0.2, lw=0, zorder=1)
        ax.axhline(median, color=colors[reference], lw=1.5, zorder=1)


def _dots_and_medians(ax, students, metric, by, to_x, methods, colors, medians=True) -> None:
    """One dot per student at to_x(value of ``by``), methods side by side; optionally median bars.
    Students without a value of ``by`` (NaN: ``kdpipe compare``'s) form one level of their own."""
    for method, offset in zip(methods, _dodge(len(methods))):
        rows = students.loc[students["method"] == method, [by, metric]].dropna(subset=[metric])
        if rows.empty:
            continue
        ax.scatter(np.asarray(to_x(rows[by]), dtype=float) + offset, rows[metric], s=16, color=colors[method],
                   alpha=0.6, linewidths=0, zorder=2)
        if medians:
            median = rows.groupby(by, dropna=False)[metric].median()
            ax.plot(np.asarray(to_x(median.index), dtype=float) + offset, median.to_numpy(), color=colors[method],
                    marker="_", markersize=14, markeredgewidth=2.2, lw=1.2, zorder=3)


def _fit_line(ax, rows, metric, slope, offset, color, label, missing="n/a") -> None:
    """The least-squares line of ``metric`` on log2(width) with the given slope, labelled with it.

    The intercept that goes with a least-squares slope is mean(y) - slope * mean(x). Without a
    finite slope only the legend entry is drawn, saying ``missing``.
    """
    rows = rows[["width", metric]].dropna()
    x = np.log2(rows["width"].to_numpy(dtype=float))
    if len(rows) == 0 or not np.isfinite(slope):
        ax.plot([], [], color=color, lw=1.5, label=f"{label}: {missing}")
        return
    y = rows[metric].to_numpy(dtype=float)
    ends = np.array([x.min(), x.max()])
    ax.plot(ends + offset, y.mean() + slope * (ends - x.mean()), color=color, lw=1.5, gid=f"fit:{label}",
            label=f"{label}: {slope:+.3f}")


def _significance_marks(ax, tests, by, to_x, color) -> bool:
    """Near the top of the panel, above to_x(value of ``by``) of each row of ``tests`` (stats
    rows): a star where the row is significant, "n/a" where it has a p but is not testable (too
    few seeds to reject, whatever the data), nothing where it is testable and not significant.
    The y range grows to make room. Whether an "n/a" was drawn."""
    significant = to_x(tests.loc[tests["significant"].fillna(False).to_numpy(dtype=bool), by])
    has_p = tests["p"].notna().to_numpy()
    untestable = to_x(tests.loc[has_p & ~tests["testable"].to_numpy(dtype=bool), by])
    if len(significant) == 0 and len(untestable) == 0:
        return False
    low, high = ax.get_ylim()
    ax.set_ylim(low, high + 0.15 * (high - low))
    for xs, style, gid in ((significant, SIGNIFICANT_MARK, "significant"),
                           (untestable, UNTESTABLE_MARK, "untestable")):
        if len(xs):
            ax.plot(np.asarray(xs, dtype=float), np.full(len(xs), 0.94), transform=ax.get_xaxis_transform(),
                    ls="none", color=color, scalex=False, scaley=False, zorder=4, gid=gid, **style)
    return len(untestable) > 0


def _delta_labels(ax, xs, deltas, color) -> None:
    """Write each delta at the foot of the panel under its x; the y range grows to make room."""
    low, high = ax.get_ylim()
    ax.set_ylim(low - 0.15 * (high - low), high)
    for x, delta in zip(xs, deltas):
        text = r"$\Delta$ n/a" if np.isnan(delta) else rf"$\Delta$ {delta:+.3f}"
        ax.text(x, 0.03, text, transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                fontsize="small", color=color)


def _method_legend(colors, stats=None, untestable=False, methods=SHOWN,
                   reference=REFERENCE) -> tuple[list, list]:
    """Legend handles and labels for the dots-and-medians of ``methods`` (kd and rcd) and the
    reference band (siddo); with the stats table, the star of significant transfer of the lead,
    methods[0], against the reference at its level, and with ``untestable`` the "n/a" mark."""
    lead = methods[0]
    handles = [Line2D([], [], color=colors[m], marker="o", markersize=4, lw=1.2) for m in methods]
    labels = [f"{m}: dots = seeds, line = medians" for m in methods]
    handles.append(_band_handle(colors[reference]))
    labels.append(f"{reference}: median and IQR band (no alpha or T)")
    if stats is not None:
        handles.append(Line2D([], [], color=colors[lead], ls="none", **SIGNIFICANT_MARK))
        adjusted = " (adjusted)" if "p_adjusted" in stats else ""
        labels.append(f"{lead} vs {reference}: Mann-Whitney p{adjusted} < {_level(stats)}, "
                      "toward the teacher")
    if untestable:
        handles.append(Line2D([], [], color=colors[lead], ls="none", **UNTESTABLE_MARK))
        labels.append(_untestable_label(stats))
    return handles, labels


def _band_handle(color) -> tuple:
    """The legend handle of a reference drawn as a median line over an IQR band."""
    return (Patch(color=color, alpha=0.2, lw=0), Line2D([], [], color=color, lw=1.5))


def _level(stats) -> str:
    """The significance level of the stats table, as text ("the level" for an empty table)."""
    return f"{stats['level'].iloc[0]:g}" if len(stats) else "the level"


def _untestable_label(stats) -> str:
    """What the "n/a" mark means."""
    after = " after the correction" if "p_adjusted" in stats else ""
    return f"n/a: too few seeds to reject at {_level(stats)}{after}"


def _value_label(metric) -> str:
    """Axis label of a metric: what the value is and, for a functional metric, which way is closer."""
    value = METRIC_LABELS[metric][1]
    if metric not in FUNCTIONAL_METRICS:
        return value
    return f"{value}\n({'higher' if metric in HIGHER_IS_CLOSER else 'lower'} = closer to the teacher)"


def _no_data(ax) -> None:
    ax.text(0.5, 0.5, "no finite values", transform=ax.transAxes, ha="center", va="center", color="0.4")


def _level_axis(ax, levels, label) -> None:
    """Ticks at the positions 0..n-1 of evenly placed levels, labelled with their values; no
    tick label and no axis label for the one level of students without a value (NaN)."""
    if np.isnan(levels).all():
        ax.set_xticks([0], [""])
    else:
        ax.set_xticks(range(len(levels)), [f"{v:g}" for v in levels])
        ax.set_xlabel(label)
    ax.set_xlim(-0.5, len(levels) - 0.5)


def _width_axis(ax, widths) -> None:
    """A log2 width axis: positions log2(width), labelled with the width multipliers."""
    ax.set_xticks(np.log2(widths), [f"{w:g}" for w in widths])
    ax.set_xlim(np.log2(widths[0]) - 0.5, np.log2(widths[-1]) + 0.5)
    ax.set_xlabel("student width multiplier (log2 scale)")


def _dodge(n: int, step: float = 0.14) -> np.ndarray:
    """Horizontal offsets that place n methods side by side around a position."""
    return (np.arange(n) - (n - 1) / 2) * step


# ---- table selection ---------------------------------------------------------------------------

def _students(models, setup, width=None, temperature=None, reference=REFERENCE) -> pd.DataFrame:
    """Students of a setup: every method at ``temperature`` and all of the reference method
    (siddo: no T), at ``width``.

    None keeps every width or every temperature.
    """
    rows = models[(models["role"] == "student") & (models["setup"] == setup)]
    if width is not None:
        rows = rows[_isclose(rows["width"], width)]
    if temperature is not None:
        rows = rows[(rows["method"] == reference) | _isclose(rows["temperature"], temperature)]
    return rows


def _cell_rows(table, setup, width=None, temperature=None) -> pd.DataFrame:
    """The rows of a stats or asymmetry table at a setup, width and temperature (None: every)."""
    rows = table[table["setup"] == setup]
    if width is not None:
        rows = rows[_isclose(rows["width"], width)]
    if temperature is not None:
        rows = rows[_isclose(rows["temperature"], temperature)]
    return rows


def _versus(stats, comparison, setup, width=None, temperature=None) -> pd.DataFrame:
    """The rows of one comparison (kd_vs_siddo) of the stats table at a setup, width and
    temperature (None: every).

    The stats step's ``significant`` and ``testable`` columns are used as they are, so a
    configured multiple-testing correction carries over.
    """
    return _cell_rows(stats[stats["comparison"] == comparison], setup, width, temperature)


def _cell(width, temperature) -> str:
    """The start of a figure's second title line: the width and T shown, where one is."""
    parts = [] if width is None else [f"student width {width:g}"]
    parts += [] if temperature is None else [f"T = {temperature:g}"]
    return "".join(f"{part}, " for part in parts)


def _scaling_value(scaling_table, setup, method, alpha, temperature, column,
                   reference=REFERENCE) -> float:
    """A slope of the scaling table; the reference's row is matched by setup alone (it has no
    alpha or T)."""
    rows = scaling_table[(scaling_table["setup"] == setup) & (scaling_table["method"] == method)]
    if method != reference:
        rows = rows[_isclose(rows["alpha"], alpha)]
        rows = rows[rows["temperature"].isna() if temperature is None
                    else _isclose(rows["temperature"], temperature)]
    return float(rows[column].iloc[0]) if len(rows) else float("nan")


def _levels(students, column, methods=SHOWN) -> np.ndarray:
    """The sorted distinct values of ``column`` (alpha or temperature) among the students of
    ``methods`` (kd and rcd); [NaN], one level, where they have none (``kdpipe compare``)."""
    levels = np.sort(students.loc[students["method"].isin(list(methods)), column].dropna().unique())
    return levels if len(levels) else np.array([np.nan])


def _level_index(levels, values) -> np.ndarray:
    """The position in ``levels`` of each value (the nearest level, so float rounding is
    harmless); 0 for every value where the one level is NaN."""
    values = np.asarray(values, dtype=float).reshape(-1, 1)
    levels = np.asarray(levels, dtype=float)
    if np.isnan(levels).all():
        return np.zeros(len(values), dtype=int)
    return np.abs(values - levels).argmin(axis=1)


def _closest(values, target: float) -> float:
    return float(min(values, key=lambda v: abs(v - target)))


def _isclose(column, value) -> np.ndarray:
    """Float equality up to rounding; NaN matches nothing."""
    return np.isclose(column.to_numpy(dtype=float), value)


def _n_seeds(students) -> str:
    n = students["seed"].nunique()
    return f"{n} seed{'s' if n != 1 else ''}"
