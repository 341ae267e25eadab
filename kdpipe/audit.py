"""The teacher-error audit: what each teacher gets wrong, and which of those errors students copy.

For every teacher (a teacher row of the models table) its wrong test predictions are counted per
(true class, predicted class) pair, with its confidence on them; for every student, the
teacher's errors are split by true class into those the student copies (it predicts the
teacher's wrong class) and the rest. Summed over classes, copied / n_teacher_errors is exactly the
student's incorrect_agreement in the models table.

What the audit reads: the models table, each teacher's stored test logits (float32 [N, C]) and
labels (int64 [N]), whose paths in the table are relative to the results folder, and each
student's ``copied_by_class`` column: the per-class counts of copied teacher errors that the
training job computes (``copied_by_class``) while the student's logits are in memory. The
students' own logits are not read, so the audit runs from the tables and the teachers alone (on
a laptop holding a cluster study's results without its gigabytes of student logits). Only rows
that lack the column (tables collected before it existed) are counted from the student's
logits. Nothing is retrained.

Classes are integer indices, as the tables carry no class names; figures show names where
``classes`` (setup -> list of names) gives them. Confidence is the teacher's largest softmax
probability max_c p_t(c), in [1/C, 1]. Predictions are argmaxes of the logits, as in
kdpipe.metrics. A teacher is *at chance* when its test accuracy is not significantly above the
chance accuracy, the share of the most frequent test class (what always predicting that class
scores; 1/C for balanced classes): a one-sided binomial test at level CHANCE_LEVEL. Its errors
then carry no structure a student could copy, and its figure says so.

Tables and their columns:
  teacher_errors  setup, teacher_id, true_class, predicted_class, count (test samples),
                  share_of_errors (count / the teacher's errors), mean_confidence,
                  teacher_accuracy, chance_accuracy, at_chance (the teacher's, on every row of
                  it); one row per pair with count > 0, count descending within a teacher.
  copied_errors   setup, teacher_id, method, alpha, temperature, width, seed, true_class,
                  n_teacher_errors (the teacher's errors whose true class it is), copied (how many
                  of them the student predicts with the teacher's wrong class), copied_share
                  (copied / n_teacher_errors); one row per student and true class on which the
                  teacher errs.

Figures are matplotlib.figure.Figure objects built without pyplot, as in kdpipe.plots; one per
setup, rendered in parallel processes (one per available CPU). matplotlib is imported only by
the figure functions and pandas only by the table functions, so that a training job importing
``copied_by_class`` pays for neither.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from kdpipe.methods import CONTROL, LEAD, REFERENCE
from kdpipe.metrics import max_probability

SHOWN = (LEAD, CONTROL)  # the methods whose copies the figure draws beside the reference's
ERROR_COLUMNS = {"setup": "str", "teacher_id": "str", "true_class": "int64", "predicted_class": "int64",
                 "count": "int64", "share_of_errors": "float64", "mean_confidence": "float64",
                 "teacher_accuracy": "float64", "chance_accuracy": "float64", "at_chance": "bool"}
COPIED_COLUMNS = {"setup": "str", "teacher_id": "str", "method": "str", "alpha": "float64",
                  "temperature": "float64", "width": "float64", "seed": "int64", "true_class": "int64",
                  "n_teacher_errors": "int64", "copied": "int64", "copied_share": "float64"}
STUDENT_KEYS = ["method", "alpha", "temperature", "width", "seed"]
TOP_K = 10  # confused pairs shown by the figure
MAX_CLASSES_SHOWN = 20  # classes in the copied-share panel, and with counts written in the heatmap
CHANCE_LEVEL = 0.05  # of the one-sided binomial test of accuracy above chance


# ---- arithmetic on one teacher -----------------------------------------------------------------

def confusion(teacher_logits, labels, num_classes: int) -> np.ndarray:
    """Counts of test samples [C, C] by true class (rows) and the teacher's predicted class (columns)."""
    from sklearn.metrics import confusion_matrix

    logits, labels = _checked(teacher_logits, labels)
    if logits.shape[1] != num_classes:
        raise ValueError(f"logits have {logits.shape[1]} classes, not num_classes = {num_classes}")
    return confusion_matrix(labels, logits.argmax(axis=1), labels=np.arange(num_classes))


def confidence(teacher_logits, labels) -> tuple[np.ndarray, np.ndarray]:
    """The teacher's max softmax probability on the samples it gets right, and on those it gets wrong."""
    logits, labels = _checked(teacher_logits, labels)
    top = max_probability(logits)
    right = logits.argmax(axis=1) == labels
    return top[right], top[~right]


def copied_by_class(student_logits, teacher_logits, labels) -> list[int]:
    """Per true class c, the test samples of class c on which the teacher is wrong and the
    student predicts the teacher's (wrong) class: a list of C ints, what a student's row stores.
    Logits [N, C] (or [..., C], flattened), labels [N]."""
    teacher = np.asarray(teacher_logits)
    teacher = teacher.reshape(-1, teacher.shape[-1])
    student = np.asarray(student_logits).reshape(teacher.shape)
    teacher, labels = _checked(teacher, np.asarray(labels).reshape(-1))
    teacher_predicted = teacher.argmax(axis=1)
    copies = (teacher_predicted != labels) & (student.argmax(axis=1) == teacher_predicted)
    return np.bincount(labels[copies], minlength=teacher.shape[1]).tolist()


def chance_accuracy(labels) -> float:
    """The accuracy of always predicting the most frequent class: its share of ``labels``."""
    labels = np.asarray(labels)
    return float(np.bincount(labels).max() / len(labels))


def at_chance(n_correct: int, n: int, chance: float) -> bool:
    """Whether ``n_correct`` right answers of ``n`` are not significantly more than ``chance``
    (one-sided binomial test at CHANCE_LEVEL)."""
    return binomial_upper_tail(int(n_correct), int(n), chance) >= CHANCE_LEVEL


def binomial_upper_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p): the p-value of the one-sided binomial test of k
    successes in n trials against p (scipy.stats.binomtest's "greater"), summed in log space.
    Written out because every teacher and block job tests its teacher, and importing
    scipy.stats for that one number costs those jobs about a second each."""
    if k <= 0:
        return 1.0
    if k > n or p <= 0:
        return 0.0
    if p >= 1:
        return 1.0
    i = np.arange(k, n + 1, dtype=np.float64)
    # log C(n, i) from log C(n, k) by the ratios C(n, i + 1) / C(n, i) = (n - i) / (i + 1)
    log_choose = (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
                  + np.concatenate([[0.0], np.cumsum(np.log((n - i[:-1]) / (i[:-1] + 1)))]))
    log_terms = log_choose + i * math.log(p) + (n - i) * math.log1p(-p)
    top = log_terms.max()
    return float(min(1.0, math.exp(top) * np.exp(log_terms - top).sum()))


# ---- the tables --------------------------------------------------------------------------------

def teacher_errors(models, results):
    """Every teacher's errors per (true class, predicted class): the teacher_errors table.

    Teachers in (setup, teacher_id) order; within a teacher, count descending, ties by
    (true_class, predicted_class). A teacher without errors has no rows.
    """
    parts = [errors_of(teacher.setup, teacher.teacher_id, *_load(results, teacher))
             for teacher in _teachers(models).itertuples()]
    return _frame(parts, ERROR_COLUMNS)


def errors_of(setup: str, teacher_id: str, logits, labels):
    """One teacher's rows of the teacher_errors table, from its test logits [N, C] and labels
    [N]."""
    import pandas as pd

    logits, labels = _checked(logits, labels)
    c = logits.shape[1]
    predicted = logits.argmax(axis=1)
    wrong = predicted != labels
    pair = labels[wrong] * c + predicted[wrong]
    counts = np.bincount(pair, minlength=c * c)
    confidence_sums = np.bincount(pair, weights=max_probability(logits[wrong]), minlength=c * c)
    present = np.flatnonzero(counts)
    order = present[np.lexsort((present, -counts[present]))]
    chance = chance_accuracy(labels)
    return _frame([pd.DataFrame({
        "setup": setup, "teacher_id": teacher_id,
        "true_class": order // c, "predicted_class": order % c, "count": counts[order],
        "share_of_errors": counts[order] / wrong.sum(),
        "mean_confidence": confidence_sums[order] / counts[order],
        "teacher_accuracy": 1 - wrong.mean(), "chance_accuracy": chance,
        "at_chance": at_chance((~wrong).sum(), len(labels), chance),
    })], ERROR_COLUMNS)


def copied_errors(models, results):
    """For every student, how many of its teacher's errors it copies, per true class: the copied_errors table.

    Students by teacher_id, then in the models table's order; classes ascending, only those on
    which the teacher errs. The counts are the students' ``copied_by_class`` column; a student
    without it is counted from its logits, scored on its teacher's labels file.
    """
    teachers = _teachers(models).set_index("teacher_id", drop=False)
    students = models[models["role"] == "student"]
    orphans = sorted(set(students["teacher_id"]) - set(teachers.index))
    if orphans:
        raise ValueError(f"students of teacher(s) {', '.join(orphans)} that have no teacher row")
    parts = [copies_of(group, teacher_id, *_load(results, teachers.loc[teacher_id]), results)
             for teacher_id, group in students.groupby("teacher_id", sort=True)]
    return _frame([part for part in parts if len(part)], COPIED_COLUMNS)


def copies_of(students, teacher_id: str, teacher_logits, labels, results=None):
    """The copied_errors rows of one teacher's ``students`` (rows of the models table), from the
    teacher's test logits [N, C] and labels [N] (no rows where the teacher makes no error). A
    student without ``copied_by_class`` is counted from its logits, below ``results``."""
    import pandas as pd

    teacher_logits, labels = _checked(teacher_logits, labels)
    wrong = teacher_logits.argmax(axis=1) != labels
    n_errors = np.bincount(labels[wrong], minlength=teacher_logits.shape[1])
    erring = np.flatnonzero(n_errors)
    if not len(erring):
        return _frame([], COPIED_COLUMNS)
    # [students, classes]
    copied = _copied_counts(students, teacher_logits, labels, results)[:, erring]
    repeat = np.repeat(np.arange(len(students)), len(erring))
    columns = {key: students[key].to_numpy()[repeat] for key in ["setup"] + STUDENT_KEYS}
    return _frame([pd.DataFrame({
        **columns, "teacher_id": teacher_id, "true_class": np.tile(erring, len(students)),
        "n_teacher_errors": np.tile(n_errors[erring], len(students)), "copied": copied.ravel(),
        "copied_share": copied.ravel() / np.tile(n_errors[erring], len(students)),
    })], COPIED_COLUMNS)


def _copied_counts(students, teacher_logits, labels, results) -> np.ndarray:
    """int64 [students, C]: the copied_by_class of each row, from the column where a row has it,
    else from the student's stored logits."""
    c = teacher_logits.shape[1]
    counts = np.zeros((len(students), c), dtype=np.int64)
    if "copied_by_class" in students:
        stored = students["copied_by_class"].to_numpy()
        absent = students["copied_by_class"].isna().to_numpy()  # None or NaN; a list is present
        lengths = {len(entry) for entry in stored[~absent]}
        if lengths - {c}:
            raise ValueError(f"students of {students['teacher_id'].iloc[0]}: copied_by_class of "
                             f"{sorted(lengths - {c})} classes, their teacher's logits have {c}")
        if not absent.all():
            counts[~absent] = np.stack(stored[~absent])
    else:
        absent = np.ones(len(students), dtype=bool)
    for i in np.flatnonzero(absent):
        row = students.iloc[i]
        path = Path(results) / row["logits_path"]
        if not path.is_file():
            raise ValueError(f"student row of {row['teacher_id']} {row['method']} width {row['width']:g} "
                             f"seed {row['seed']} has no copied_by_class and its logits {path} are "
                             "absent: collect the tables again from the students' row.json files")
        counts[i] = copied_by_class(np.load(path), teacher_logits, labels)
    return counts


# ---- the figure --------------------------------------------------------------------------------

def make_audit(tables_dir, results, figures_dir, options: dict | None = None,
               classes: dict | None = None, workers: int | None = None,
               user_methods: dict | None = None) -> list[Path]:
    """Write the two audit tables beside models.parquet in ``tables_dir`` and one figure per setup
    and lead method (kdpipe.plan.audits: kd, and each other lead the study trained, against its
    control).

    ``results`` is the folder the models table's paths are relative to. options, all optional
    (the figures options of kdpipe.plots, with its defaults; the others are not used here):
      formats   file formats of each figure
      dpi       raster resolution, dots per inch
      width     student width whose copied shares are drawn (the closest trained)
      style, context, palette   seaborn axes style, plotting context and method palette
    classes: setup -> class names, for the figures. workers: processes that render the figures
    (default: the CPUs this process may use, at most one per setup; 1 renders here). Every file
    is written atomically. user_methods: the config's own methods (its ``methods`` section).
    Returns the paths written: teacher_errors and copied_errors (.parquet, .csv), then the
    figures.
    """
    import pandas as pd

    from kdpipe.methods import Registry
    from kdpipe.plan import audits
    from kdpipe.plots import DEFAULT_OPTIONS, render
    from kdpipe.tables import of_teachers, primary_teachers, write_table

    options = {**DEFAULT_OPTIONS, **(options or {})}
    tables_dir, figures_dir = Path(tables_dir), Path(figures_dir)
    models = pd.read_parquet(tables_dir / "models.parquet")
    errors, copied = teacher_errors(models, results), copied_errors(models, results)
    paths = []
    for name, table in (("teacher_errors", errors), ("copied_errors", copied)):
        write_table(table, tables_dir / f"{name}.parquet")
        paths += [tables_dir / f"{name}.parquet", tables_dir / f"{name}.csv"]

    teachers = _teachers(models).set_index("teacher_id", drop=False)
    setups = sorted(teachers["setup"].unique())
    primary = primary_teachers(models)  # one figure per setup: its primary teacher's
    registry = Registry(user_methods)
    trained = set(models.loc[models["role"] == "student", "method"])
    jobs = [(setup, stem, of_teachers(errors, [primary[setup]]), of_teachers(copied, [primary[setup]]),
             Path(results) / teachers.loc[primary[setup], "logits_path"],
             Path(results) / teachers.loc[primary[setup], "labels_path"], classes, options, figures_dir,
             fresh_widths(models, primary[setup]), (lead, registry.method(lead).control),
             registry.order)
            for stem, setup, lead in audits(setups, trained, registry)]
    return paths + render(_write_audit_figure, jobs, workers, "audit figures")


def fresh_widths(models, teacher_id: str) -> set:
    """The widths at which no student of ``teacher_id`` started from the teacher's theta0 (the
    models table's ``from_theta0``): every width but 1, and width 1 too for a teacher given by
    file without initial weights or students of another architecture."""
    students = models[(models["role"] == "student") & (models["teacher_id"] == teacher_id)]
    if "from_theta0" not in students:  # a table collected before the column: the rule then
        return set(students["width"][students["width"] != 1.0])
    shared = students.groupby("width")["from_theta0"].apply(lambda column: column.eq(True).any())
    return set(shared.index[~shared])


def _write_audit_figure(setup, stem, errors, copied, logits_path, labels_path, classes, options,
                        figures_dir, fresh, methods, order) -> list[Path]:
    """Draw one setup's audit figure of ``methods`` (a lead and its control; ``order``: every
    method, for the colours) and write it in every format; the paths written."""
    import seaborn as sns

    from kdpipe.plots import method_colors, save_figure

    logits, labels = _read_teacher(logits_path, labels_path)
    colors = method_colors(options["palette"], order)
    with sns.axes_style(options["style"]), sns.plotting_context(options["context"]):
        fig = audit_figure(setup, errors, copied, logits, labels, classes=classes,
                           width=options["width"], colors=colors, fresh_widths=fresh,
                           methods=methods)
    return save_figure(fig, figures_dir, stem, options["formats"], options["dpi"])


def audit_figure(setup, errors_table, copied_table, teacher_logits, labels, classes: dict | None = None,
                 width: float = 1.0, colors: dict | None = None, methods=SHOWN,
                 reference=REFERENCE, fresh_widths=frozenset()):
    """The 2x2 audit of one setup's teacher, a matplotlib Figure.

    Top left, the confusion matrix of its errors (diagonal masked); top right, its TOP_K most
    frequent (true -> predicted) confusions with its mean confidence on them; bottom left, its
    confidence on the test samples it gets right and wrong; bottom right, per true class, the
    share of its errors each student method copies: bars are medians over seeds and dots seeds,
    for ``methods`` (default kd and rcd) at their smallest trained alpha and T and for the
    ``reference`` method (siddo: no alpha or T), all at the trained width closest to ``width``.
    ``teacher_logits`` and ``labels`` are the teacher's test logits [N, C] and labels [N]; the
    tables are those of teacher_errors and copied_errors.
    classes: setup -> class names; colors: method -> colour (default kdpipe.plots.method_colors()).
    fresh_widths: the widths whose students did not start from the teacher's theta0
    (``fresh_widths``); where the panel shows one, its title says that the reference controls
    data order only.
    A teacher at chance accuracy gets a warning under the title.
    """
    from matplotlib.figure import Figure

    from kdpipe.plots import method_colors

    logits, labels = _checked(teacher_logits, labels)
    errors = errors_table[errors_table["setup"] == setup]
    copied = copied_table[copied_table["setup"] == setup]
    teacher_ids = sorted(set(errors["teacher_id"]) | set(copied["teacher_id"]))
    if len(teacher_ids) > 1:
        raise ValueError(f"setup {setup} has several teachers ({', '.join(teacher_ids)}); "
                         "the audit figure shows one")
    names = (classes or {}).get(setup) or [str(c) for c in range(logits.shape[1])]
    if len(names) != logits.shape[1]:
        raise ValueError(f"{len(names)} class names for {setup}, whose logits have {logits.shape[1]} classes")
    colors = colors or method_colors()

    matrix = confusion(logits, labels, logits.shape[1])
    n_errors = int(matrix.sum() - np.trace(matrix))
    fig = Figure(figsize=(13, 10.5), layout="constrained")
    axes = fig.subplots(2, 2)
    _confusion_panel(axes[0, 0], matrix, names)
    _top_pairs_panel(axes[0, 1], errors.head(TOP_K), names)
    _confidence_panel(axes[1, 0], *confidence(logits, labels))
    _copied_panel(axes[1, 1], copied, width, names, colors, methods, reference, fresh_widths)
    title = (f"{setup}: the teacher's test errors and the students that copy them\n"
             f"{n_errors} errors in {len(labels)} test samples (teacher accuracy "
             f"{1 - n_errors / len(labels):.1%})")
    chance = chance_accuracy(labels)
    if at_chance(len(labels) - n_errors, len(labels), chance):
        title += (f"\nWARNING: the teacher is at chance (not above the {chance:.1%} of always "
                  "predicting the most frequent class): its errors carry no structure to copy")
    fig.suptitle(title, fontsize="large")
    return fig


def _confusion_panel(ax, matrix, names) -> None:
    """Heatmap of the off-diagonal counts; the masked diagonal (right answers) is grey."""
    import matplotlib as mpl
    from matplotlib.ticker import MaxNLocator

    c = len(matrix)
    masked = np.ma.masked_where(np.eye(c, dtype=bool), matrix)
    cmap = mpl.colormaps["Reds"].with_extremes(bad="0.88")
    image = ax.imshow(masked, cmap=cmap, vmin=0, vmax=max(int(masked.max() or 0), 1), interpolation="nearest")
    colorbar = ax.figure.colorbar(image, ax=ax, shrink=0.85, label="teacher errors (test samples)")
    colorbar.locator = MaxNLocator(integer=True)
    ax.grid(False)
    if c <= MAX_CLASSES_SHOWN:
        ticks = np.arange(c)
        threshold = 0.6 * masked.max() if masked.count() else 0
        for (i, j), count in np.ndenumerate(matrix):
            if i != j and count:
                ax.text(j, i, str(count), ha="center", va="center", fontsize="small",
                        color="white" if count > threshold else "black")
    else:
        ticks = np.unique(np.linspace(0, c - 1, MAX_CLASSES_SHOWN).round().astype(int))
    ax.set_xticks(ticks, [names[t] for t in ticks], rotation=90 if max(map(len, names)) > 3 else 0)
    ax.set_yticks(ticks, [names[t] for t in ticks])
    ax.set_xlabel("class the teacher predicts")
    ax.set_ylabel("true class")
    ax.set_title("confusion matrix of the teacher's errors (diagonal masked)")


def _top_pairs_panel(ax, top, names) -> None:
    """Horizontal bars of the most frequent confusions, largest on top, each with its share and confidence."""
    ax.set_title(f"the {TOP_K} most frequent confusions (true \u2192 predicted)")
    ax.set_xlabel("teacher errors (test samples)")
    if top.empty:
        _no_data(ax, "no teacher errors")
        return
    y = np.arange(len(top))
    ax.barh(y, top["count"], color="#c44e52", height=0.7)
    ax.set_yticks(y, [f"{names[t]} \u2192 {names[p]}" for t, p in zip(top["true_class"], top["predicted_class"])])
    ax.invert_yaxis()
    for yi, row in zip(y, top.itertuples()):
        ax.text(row.count, yi, f"  {row.share_of_errors:.1%} of errors, confidence {row.mean_confidence:.2f}",
                va="center", fontsize="small")
    ax.set_xlim(0, top["count"].max() * 1.9)  # room for the text
    ax.grid(axis="y", visible=False)


def _confidence_panel(ax, on_right, on_wrong) -> None:
    """Histograms of the teacher's max probability on right and on wrong samples, each summing to 1."""
    bins = np.linspace(0, 1, 26)
    for values, label, color in ((on_right, "teacher right", "0.45"), (on_wrong, "teacher wrong", "#c44e52")):
        if len(values) == 0:
            continue
        ax.hist(values, bins=bins, weights=np.full(len(values), 1 / len(values)), color=color, alpha=0.45,
                histtype="stepfilled", edgecolor=color, lw=1.5,
                label=f"{label}: n = {len(values)}, median {np.median(values):.2f}")
    ax.set_xlim(0, 1)
    ax.set_xlabel("teacher confidence: largest softmax probability")
    ax.set_ylabel("share of the group's test samples")
    ax.set_title("teacher confidence on right vs. wrong test samples")
    ax.legend(loc="upper left")


def _copied_panel(ax, copied, width, names, colors, methods=SHOWN, reference=REFERENCE,
                  fresh_widths=frozenset()) -> None:
    """Per true class, grouped bars of the median copied share by method, with one dot per seed."""
    if copied.empty:
        ax.set_title("share of the teacher's errors the students copy")
        _no_data(ax, "no teacher errors")
        return
    width = min(copied["width"].unique(), key=lambda w: abs(w - width))
    at_width = copied[np.isclose(copied["width"], width)]
    distilled = at_width[at_width["method"].isin(list(methods))]
    if distilled.empty:
        shown, chosen = at_width, f"no {' or '.join(methods)} students"
    else:
        # students without alpha or T (kdpipe compare's groups) have NaN there: NaN matches NaN
        alpha, temperature = distilled["alpha"].min(), distilled["temperature"].min()
        shown = at_width[(at_width["method"] == reference)
                         | (np.isclose(at_width["alpha"], alpha, equal_nan=True)
                            & np.isclose(at_width["temperature"], temperature, equal_nan=True))]
        at = [f"{name} = {value:g}" for name, value in (("alpha", alpha), ("T", temperature))
              if np.isfinite(value)]
        chosen = ", ".join(methods) + (f" at {', '.join(at)}" if at else "")
    n_errors = shown.groupby("true_class")["n_teacher_errors"].first()
    if len(n_errors) > MAX_CLASSES_SHOWN:
        n_errors = n_errors.nlargest(MAX_CLASSES_SHOWN, keep="first").sort_index()
        class_note = f"the {MAX_CLASSES_SHOWN} true classes with most teacher errors"
    else:
        class_note = "true class"
    x = {c: i for i, c in enumerate(n_errors.index)}
    methods = [m for m in (*methods, reference) if (shown["method"] == m).any()]
    step = 0.8 / max(len(methods), 1)
    for k, method in enumerate(methods):
        rows = shown[(shown["method"] == method) & shown["true_class"].isin(x)]
        offset = (k - (len(methods) - 1) / 2) * step
        median = rows.groupby("true_class")["copied_share"].median()
        ax.bar([x[c] + offset for c in median.index], median, width=step * 0.9, color=colors[method], alpha=0.75,
               label=f"{method} ({rows['seed'].nunique()} seeds)")
        ax.scatter([x[c] + offset for c in rows["true_class"]], rows["copied_share"], s=9, color="0.15",
                   alpha=0.5, linewidths=0, zorder=3)
    ax.set_xticks(range(len(x)), [f"{names[c]}\n{n}" for c, n in n_errors.items()])
    ax.set_xlim(-0.6, len(x) - 0.4)
    ax.set_ylim(0, 1.2)  # room for the legend above the bars
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_xlabel(f"{class_note} (below: its teacher errors)")
    ax.set_ylabel("share of the teacher's errors copied\n(student predicts the teacher's wrong class)")
    reference_note = f"{reference}: no alpha or T"
    if width in fresh_widths:
        reference_note += (f"\nno student starts from the teacher's initial weights: {reference} "
                           "controls data order only")
    ax.set_title(f"errors copied by the students (bars: median over seeds, dots: seeds)\n"
                 f"width {width:g}; {chosen}; {reference_note}")
    ax.legend(loc="upper center", ncols=len(methods), fontsize="small")


def _no_data(ax, text) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="0.4")


# ---- reading -----------------------------------------------------------------------------------

def _teachers(models):
    """The teacher rows in (setup, teacher_id) order; a teacher_id may appear once."""
    teachers = models[models["role"] == "teacher"].sort_values(["setup", "teacher_id"])
    repeated = teachers["teacher_id"][teachers["teacher_id"].duplicated()]
    if len(repeated):
        raise ValueError(f"teacher_id(s) {', '.join(repeated.unique())} appear on several teacher rows")
    return teachers


def _load(results, row) -> tuple[np.ndarray, np.ndarray]:
    """The test logits and labels of a teacher's row of the models table (a namedtuple or
    Series)."""
    results = Path(results)
    return _read_teacher(results / row.logits_path, results / row.labels_path)


def _read_teacher(logits_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A teacher's test logits and labels, read as collect reads them: a missing or damaged file
    raises ResultError naming it and the remedy."""
    from kdpipe.store import ROW
    from kdpipe.rows import check_logits, read_labels

    labels = read_labels(labels_path)
    logits = check_logits(logits_path, len(labels), None, Path(logits_path).parent / ROW)
    return _checked(np.asarray(logits), labels, name=str(logits_path))


def _checked(logits, labels, name: str = "logits") -> tuple[np.ndarray, np.ndarray]:
    """Logits [N, C] with N > 0 and integer labels [N] in [0, C), the labels as int64."""
    logits, labels = np.asarray(logits), np.asarray(labels)
    if logits.ndim != 2 or len(logits) == 0:
        raise ValueError(f"{name}: expected logits of shape [N, C] with N > 0, got {logits.shape}")
    if labels.shape != (len(logits),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name}: expected {len(logits)} integer labels, got {labels.dtype} of shape {labels.shape}")
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise ValueError(f"{name}: labels outside [0, {logits.shape[1]})")
    return logits, labels.astype(np.int64)


def _frame(parts, columns: dict):
    """The parts concatenated, with the columns in order and their dtypes (also when there are none)."""
    import pandas as pd

    if not parts:
        return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in columns.items()})
    return pd.concat(parts, ignore_index=True)[list(columns)].astype(columns)
