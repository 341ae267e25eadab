"""``kdpipe compare``: the statistics, asymmetric payoff, figures 1 and 2 and teacher-error audit
of any models, from their test logits alone (docs/compare.md).

Inputs: a teacher's test logits [N, C], the test labels [N], and named groups of student logits
(one file or array per seed, each [N, C]), one of them the reference (the role siddo plays in a
study). compare() checks them and returns the tables; write_comparison() writes them with the
figures. The tables are those of a study (docs/outputs.md), computed by the same functions
(kdpipe.metrics, kdpipe.stats, kdpipe.audit) on one cell: a group is a method, and the columns
that locate a study's cell (setup, teacher_id, alpha, temperature, width) are left out.

Comparisons, for the groups other than the reference in the order given, g1, ..., gk: every
gi against the reference (gi_vs_<reference>), then every pair gi against gj with i < j
(gi_vs_gj): the first named group is a test's first sample, whose effect size is positive
when it tends to be larger.

Only the standard library is imported here, the rest inside the functions: ``import kdpipe``
makes ``kdpipe.compare`` this module's compare(), and the Snakefile imports kdpipe while it is
parsed.
"""
from __future__ import annotations

import glob
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kdpipe.io import ResultError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

CELL = ["setup", "teacher_id", "alpha", "temperature", "width"]  # one cell: left out of the tables
NAME = "compare"  # the setup name the figures' titles show


class InputError(ResultError, ValueError):
    """An input of compare that cannot be compared; the message names the file (or group) and
    what is wrong with it."""


@dataclass(frozen=True)
class Comparison:
    """What compare() returns: the tables, and what the figures need beside them.

    models          one row per model: the teacher, then each group's students by seed
    stats           the Mann-Whitney tests of every comparison and metric, with the paired
                    Wilcoxon p and the verdict columns (kdpipe.stats.compare_methods)
    asymmetry       each group's median correct and incorrect agreement against the reference's
    teacher_errors  the teacher's errors per (true class, predicted class)
    copied_errors   per student and true class, the teacher's errors it copies
    reference       the reference group; groups: the others, in the order given
    teacher_logits, labels   the teacher's test logits [N, C] and the labels [N]
    """

    models: pd.DataFrame
    stats: pd.DataFrame
    asymmetry: pd.DataFrame
    teacher_errors: pd.DataFrame
    copied_errors: pd.DataFrame
    reference: str
    groups: tuple
    teacher_logits: np.ndarray
    labels: np.ndarray

    def tables(self) -> dict:
        """Table name -> DataFrame, in the order write_comparison writes them."""
        return {name: getattr(self, name)
                for name in ("models", "stats", "asymmetry", "teacher_errors", "copied_errors")}


def compare(teacher, labels, groups: dict, reference: str, seed_pattern: str | None = None,
            metrics=None, level: float = 0.05, correction: str = "none",
            ece_bins: int | None = None) -> Comparison:
    """Compare groups of students of one teacher, as a study compares its methods in one cell.

    ``teacher``: the teacher's test logits, an array [N, C] or a path (.npy, or .pt holding one
    tensor). ``labels``: integers [N] in [0, C), an array or a .npy path. ``groups``: name ->
    a glob pattern (str), or a list of paths or arrays [N, C], one per seed; ``reference`` names
    the group the others are compared with. Seeds: with ``seed_pattern`` (a regular expression
    with one group, searched in each file's path as given or as the pattern matched it) the
    number it captures; without one, each group's files are numbered 0, 1, ... in sorted order
    and its arrays in the order given. Students of one seed in two groups are paired by it.

    ``metrics`` (default: every functional metric, accuracy, loss and ece), ``level`` and
    ``correction`` are those of kdpipe.stats.compare_methods; ``ece_bins`` the confidence bins of
    the calibration error (default kdpipe.metrics.ECE_BINS). Every input is checked before a
    table is made: a bad one raises InputError naming the file or group and the problem.
    """
    import numpy as np
    import pandas as pd

    from kdpipe import audit, metrics as m, stats
    from kdpipe.methods import versus
    from kdpipe.tables import MODEL_COLUMNS

    ece_bins = m.ECE_BINS if ece_bins is None else ece_bins
    if isinstance(ece_bins, bool) or not isinstance(ece_bins, (int, np.integer)) or ece_bins < 1:
        raise InputError("the number of confidence bins must be an integer >= 1, got "
                         f"{ece_bins!r}")
    if not 0 < level < 1:
        raise InputError(f"the level must lie between 0 and 1, got {level}")
    metrics = m.FUNCTIONAL_METRICS + m.PERFORMANCE_METRICS if metrics is None else tuple(metrics)
    teacher_name = teacher if isinstance(teacher, (str, Path)) else "the teacher's logits"
    teacher_logits = _logits(_load(teacher, "teacher logits"), teacher_name)
    labels = _labels(_load(labels, "labels"), labels, teacher_logits.shape)
    students = _students(groups, reference, seed_pattern)
    others = tuple(name for name in groups if name != reference)

    teacher_ece = m.expected_calibration_error(teacher_logits, labels, ece_bins)
    correct = int((teacher_logits.argmax(axis=1) == labels).sum())
    rows = [{"role": "teacher", "method": "", "seed": pd.NA, "logits_path": _path(teacher),
             "accuracy": m.accuracy(teacher_logits, labels),
             "loss": m.cross_entropy(teacher_logits, labels), "n_teacher_correct": correct,
             "n_teacher_incorrect": len(labels) - correct, "ece": teacher_ece}]
    for group, seed, source in students:
        name = source if isinstance(source, (str, Path)) else f"group {group}, seed {seed}"
        logits = _logits(_load(source, "student logits"), name)
        if logits.shape != teacher_logits.shape:
            raise InputError(f"{name}: logits of shape {list(logits.shape)}, but the teacher's "
                             f"are {list(teacher_logits.shape)}")
        ece = m.expected_calibration_error(logits, labels, ece_bins)
        rows.append({"role": "student", "method": group, "seed": seed,
                     "logits_path": _path(source),
                     **m.student_metrics(logits, teacher_logits, labels),
                     "ece": ece, "ece_gap": ece - teacher_ece,
                     "copied_by_class": audit.copied_by_class(logits, teacher_logits, labels)})
    # the columns of a study's models table that a model given by its logits has, in its order
    columns = [column for column in MODEL_COLUMNS if column in rows[-1]]
    models = pd.DataFrame(rows, columns=columns).astype({"seed": "Int64"})
    # the statistics group by a study's cell: here one cell, with neither alpha nor T
    cell = models.assign(setup=NAME, teacher_id=f"{NAME}/teacher", alpha=np.nan,
                         temperature=np.nan, width=1.0)
    comparisons = {group: [versus(group, reference)]
                   + [versus(group, later) for later in others[i + 1:]]
                   for i, group in enumerate(others)}
    tests = stats.compare_methods(cell, metrics=metrics, level=level, correction=correction,
                                  comparisons=comparisons, reference=reference)
    payoff = stats.asymmetry(cell, methods=others, reference=reference)
    errors = audit.errors_of(NAME, f"{NAME}/teacher", teacher_logits, labels)
    copies = audit.copies_of(cell[cell["role"] == "student"], f"{NAME}/teacher", teacher_logits,
                             labels)
    return Comparison(
        models=models.drop(columns="copied_by_class"), stats=_uncell(tests),
        asymmetry=_uncell(payoff), teacher_errors=_uncell(errors), copied_errors=_uncell(copies),
        reference=reference, groups=others, teacher_logits=teacher_logits, labels=labels)


def write_comparison(result: Comparison, out, formats=("png", "pdf"), dpi: int = 150,
                     palette: str = "colorblind") -> list[Path]:
    """Write ``result``'s tables (parquet, with a CSV copy each) and its figures into ``out``:
    fig1_functional and fig2_payoff (kdpipe.plots: every functional metric, and correct
    against incorrect agreement, of each group's seeds against the reference) and audit
    (kdpipe.audit: the teacher's errors and the share of them each group copies), in every
    format of ``formats``. Every file is written atomically. Returns the paths written."""
    import seaborn as sns

    from kdpipe import audit, plots
    from kdpipe.tables import write_table

    out = Path(out)
    paths = []
    for name, table in result.tables().items():
        write_table(table, out / f"{name}.parquet")
        paths += [out / f"{name}.parquet", out / f"{name}.csv"]
    models, stats, payoff, copies = (_recell(table) for table in (
        result.models, result.stats, result.asymmetry, result.copied_errors))
    colors = plots.method_colors(palette, (*result.groups, result.reference))
    shown = {"methods": result.groups, "reference": result.reference}
    draw = {
        "fig1_functional": lambda: plots.fig1_functional(models, stats, NAME, None, None, colors,
                                                         **shown),
        "fig2_payoff": lambda: plots.fig2_payoff(models, stats, payoff, NAME, None, None,
                                                 colors, **shown),
        "audit": lambda: audit.audit_figure(NAME, _recell(result.teacher_errors), copies,
                                            result.teacher_logits, result.labels, colors=colors,
                                            **shown),
    }
    with sns.axes_style(plots.DEFAULT_OPTIONS["style"]), \
            sns.plotting_context(plots.DEFAULT_OPTIONS["context"]):
        for stem, figure in draw.items():
            paths += plots.save_figure(figure(), out, stem, formats, dpi)
    return paths


# ---- reading and checking ----------------------------------------------------------------------

def _load(source, what: str):
    """An array given as is, or read from a .npy file or a .pt file holding one tensor."""
    import numpy as np

    if not isinstance(source, (str, Path)):
        return np.asarray(source)
    path = Path(source)
    if not path.is_file():
        raise InputError(f"{path}: no such file ({what})")
    if path.suffix == ".pt":
        import torch

        try:
            value = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises many kinds on a file it cannot read
            raise InputError(f"{path}: not a readable torch file ({error})") from None
        if not isinstance(value, torch.Tensor):
            raise InputError(f"{path}: holds a {type(value).__name__}, not one tensor ({what})")
        return value.detach().cpu().numpy()
    if path.suffix != ".npy":
        raise InputError(f"{path}: expected a .npy or .pt file ({what})")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise InputError(f"{path}: not a readable .npy file ({error})") from None


def _logits(array, name) -> object:
    """Floating-point logits [N, C] with N >= 1, C >= 2, all finite, as float64."""
    import numpy as np

    if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] < 2:
        raise InputError(f"{name}: expected logits of shape [N, C] with N >= 1 samples and "
                         f"C >= 2 classes, got shape {list(array.shape)}")
    if not np.issubdtype(array.dtype, np.floating):
        raise InputError(f"{name}: expected floating-point logits, got {array.dtype}")
    finite = np.isfinite(array)
    if not finite.all():
        row = int(np.flatnonzero(~finite.all(axis=1))[0])
        raise InputError(f"{name}: {int((~finite).sum())} non-finite values (NaN or infinity), "
                         f"the first in row {row}")
    return array


def _labels(array, source, shape) -> object:
    """Integer labels [N] in [0, C) for teacher logits of ``shape`` [N, C], as int64."""
    import numpy as np

    name = source if isinstance(source, (str, Path)) else "labels"
    n, c = shape
    if not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"{name}: labels must be integers, got {array.dtype}")
    if array.shape != (n,):
        raise InputError(f"{name}: expected {n} labels (one per row of the teacher's logits), "
                         f"got shape {list(array.shape)}")
    outside = (array < 0) | (array >= c)
    if outside.any():
        raise InputError(f"{name}: {int(outside.sum())} labels outside [0, {c}) for the "
                         f"teacher's {c} classes (first: {int(array[outside][0])})")
    return array.astype(np.int64)


def _students(groups: dict, reference: str, seed_pattern) -> list[tuple]:
    """(group, seed, path or array) of every student, group by group in the order given and by
    seed within a group; checks the groups and their seeds."""
    if reference not in groups:
        raise InputError(f"the reference group {reference!r} is not among the groups "
                         f"({', '.join(groups) or 'none'})")
    if len(groups) < 2:
        raise InputError(f"only the reference group {reference!r}: give at least one other "
                         "group to compare with it")
    pattern = None
    if seed_pattern is not None:
        try:
            pattern = re.compile(seed_pattern)
        except re.error as error:
            raise InputError(f"seed pattern '{seed_pattern}' is not a regular expression "
                             f"({error})") from None
        if pattern.groups != 1:
            raise InputError(f"seed pattern '{seed_pattern}' has {pattern.groups} groups; it "
                             r"needs exactly one, around the seed's digits, e.g. 'seed(\d+)'")
    students = []
    for group, sources in groups.items():
        if not group or "_vs_" in group:
            raise InputError(f"group name {group!r}: a name must be non-empty and not contain "
                             "'_vs_' (comparisons are named <first>_vs_<second>)")
        if isinstance(sources, (str, Path)):
            matched = sorted(glob.glob(str(sources)))
            if not matched:
                raise InputError(f"group {group}: the pattern '{sources}' matches no file")
            sources = matched
        sources = list(sources)
        paths = all(isinstance(s, (str, Path)) for s in sources)
        if paths:
            sources = sorted(sources, key=str)
        if len(sources) < 2:
            raise InputError(f"group {group}: {len(sources)} file(s) "
                             f"({', '.join(map(str, sources)) or 'none'}); a Mann-Whitney test "
                             "needs at least two students (seeds) per group")
        seeds = {}
        for position, source in enumerate(sources):
            seed = position
            if pattern is not None and isinstance(source, (str, Path)):
                found = pattern.search(str(source))
                if found is None or not (found.group(1) or "").isdigit():
                    raise InputError(f"group {group}: the seed pattern '{seed_pattern}' does "
                                     f"not capture a whole number in {source}")
                seed = int(found.group(1))
            if seed in seeds:
                raise InputError(f"group {group}: {_shown(seeds[seed])} and {_shown(source)} "
                                 f"both have seed {seed}")
            seeds[seed] = source
        students += [(group, seed, seeds[seed]) for seed in sorted(seeds)]
    return students


def _shown(source) -> str:
    return str(source) if isinstance(source, (str, Path)) else "an array"


def _path(source) -> str:
    """A source's path as text; "" for an array."""
    return str(source) if isinstance(source, (str, Path)) else ""


def _uncell(table):
    """A table without the columns that locate a study's cell: compare has one."""
    return table.drop(columns=[c for c in CELL if c in table]).reset_index(drop=True)


def _recell(table):
    """A compare table with the cell's columns back, as the figures of a study read them."""
    import numpy as np

    return table.assign(setup=NAME, teacher_id=f"{NAME}/teacher", alpha=np.nan,
                        temperature=np.nan, width=1.0)
