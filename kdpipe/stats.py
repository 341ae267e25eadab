"""Statistics over the models table (docs/protocol.md sections 3-4).

The models table has one row per trained model with columns setup, dataset, arch, role
("teacher" | "student"), teacher_id, method (a name of kdpipe.methods; "" for teachers), alpha
(siddo rows carry 0.0, teachers NaN), temperature (NaN for siddo and teachers), width, seed and
the metric columns of kdpipe.metrics.student_metrics. Only student rows enter the statistics.

The methods are arguments, with the registry's as defaults (kdpipe.methods): the comparisons of
each lead method, the reference method and the methods reported against it. The reference
(siddo in a study) does not depend on alpha or T (it is trained once per (setup, width, seed)),
so a group (setup, teacher_id, alpha, temperature, width) of the other methods is compared with
the reference rows of the same setup, teacher and width, whatever their alpha and temperature.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import (false_discovery_control, mannwhitneyu, permutation_test, rankdata,
                         wilcoxon)

from kdpipe.methods import (CLAIMS, COMPARISONS_OF, CONTROL, DISTILLED, LEAD, NO_DIFFERENCE,
                            NOT_BELOW, REFERENCE, versus)
from kdpipe.metrics import FUNCTIONAL_METRICS, HIGHER_IS_CLOSER, PERFORMANCE_METRICS
from kdpipe.power import CORRECTIONS, min_p

# One teacher's students at one (alpha, temperature, width): the unit every test compares.
GROUP = ["setup", "teacher_id", "alpha", "temperature", "width"]
# scaling fits: every student, or only those that start from fresh weights
SCALING_WIDTHS = ("all", "fresh-init")


def fresh_init(students: pd.DataFrame) -> pd.DataFrame:
    """The students that did not start from their teacher's theta0: by the models table's
    ``from_theta0``, or, in a table collected before that column, every student of width other
    than 1 (the rule then: width 1 started from theta0)."""
    if "from_theta0" not in students:
        return students[students["width"] != 1]
    return students[~students["from_theta0"].eq(True).to_numpy(dtype=bool)]


def mann_whitney(x, y) -> dict:
    """Two-sided Mann-Whitney U test of x against y (scipy, method "auto"), NaN values dropped.

    u is the statistic of x (pairs with x > y, ties counting one half); effect_size is the
    rank-biserial correlation 2 u / (n1 n2) - 1 in [-1, 1], positive when x tends to be larger.
    With an empty side u, p and effect_size are NaN.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    x, y = x[~np.isnan(x)], y[~np.isnan(y)]
    n1, n2 = len(x), len(y)
    u = p = effect = float("nan")
    if n1 >= 1 and n2 >= 1:
        result = mannwhitneyu(x, y, alternative="two-sided", method="auto")
        u, p = float(result.statistic), float(result.pvalue)
        effect = 2.0 * u / (n1 * n2) - 1.0
    return {
        "n1": n1,
        "n2": n2,
        "u": u,
        "p": p,
        "effect_size": effect,
        "median_1": float(np.median(x)) if n1 else float("nan"),
        "median_2": float(np.median(y)) if n2 else float("nan"),
    }


def wilcoxon_paired(x, y) -> dict:
    """Two-sided Wilcoxon signed-rank test of the paired differences x - y (scipy defaults:
    zero differences dropped, exact p for small samples), pairs with a NaN side dropped.

    Returns n_pairs, p_paired and p_paired_note: p_paired is NaN, with the reason in the note,
    when no pair is left or every difference is zero (no sign to test); the note is "" otherwise.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    p, note = float("nan"), ""
    if len(x) == 0:
        note = "no seed with both methods"
    elif np.all(x == y):
        note = f"all {len(x)} paired differences are zero"
    else:
        p = wilcoxon_p(x - y)
    return {"n_pairs": int(len(x)), "p_paired": p, "p_paired_note": note}


def wilcoxon_p(d) -> float:
    """``scipy.stats.wilcoxon(d).pvalue`` (two-sided, zero differences dropped), the same number
    faster. Where scipy's ``method="auto"`` runs its exact permutation test (ties or zeros among
    at most 13 differences), the same ``permutation_test`` runs here with the statistic evaluated
    for all 2**n sign flips at once: scipy evaluates it one flip at a time, which took most of
    the statistics step (0.1 s a test). Elsewhere scipy's wilcoxon is called as it is."""
    d = np.asarray(d, dtype=np.float64)
    if not np.isfinite(d).all():
        raise ValueError(f"paired differences must be finite, got {d[~np.isfinite(d)][:3].tolist()}")
    nonzero = np.abs(d[d != 0])
    if len(d) > 13 or (len(nonzero) == len(d) and len(np.unique(nonzero)) == len(d)):
        return float(wilcoxon(d, alternative="two-sided").pvalue)
    return float(permutation_test((d,), positive_rank_sum, permutation_type="samples",
                                  vectorized=True, n_resamples=9999, alternative="two-sided",
                                  axis=-1).pvalue)


def positive_rank_sum(d, axis=-1):
    """Wilcoxon's T+ along ``axis``: the sum of the ranks of |d| (average ranks for ties, zero
    differences left out) over the positive differences."""
    ranks = rankdata(np.where(d == 0, np.nan, np.abs(d)), axis=axis, nan_policy="omit")
    return np.sum(np.where(d > 0, ranks, 0.0), axis=axis)


def toward_teacher(metric: str, effect_size: float):
    """Whether the first sample is stochastically closer to the teacher: a rank-biserial effect
    size above 0 for a metric where higher is closer, below 0 for a distance.

    False on a zero or NaN effect. None (no direction) for PERFORMANCE_METRICS; any other metric
    raises ValueError. The sign of the effect, not of the median difference, is what the
    Mann-Whitney test is about: medians can point the other way.
    """
    if metric in PERFORMANCE_METRICS:
        return None
    if metric not in FUNCTIONAL_METRICS:
        raise ValueError(f"{metric!r} is not one of {FUNCTIONAL_METRICS + PERFORMANCE_METRICS}")
    if metric in HIGHER_IS_CLOSER:
        return bool(effect_size > 0)
    return bool(effect_size < 0)  # NaN compares False either way


def adjust_pvalues(p, method: str) -> np.ndarray:
    """Multiplicity-adjusted p-values: "none", "holm" (step-down) or "bh" (Benjamini-Hochberg,
    scipy.stats.false_discovery_control).

    The family is every non-NaN entry of p; NaN entries stay NaN. Adjusted values are monotone
    in the raw ones and clipped to 1.
    """
    p = np.asarray(p, dtype=np.float64)
    if method not in ("none", "holm", "bh"):
        raise ValueError(f"unknown correction {method!r}; expected none, holm or bh")
    adjusted = p.copy()
    valid = ~np.isnan(p)
    if method == "none" or not valid.any():
        return adjusted
    if method == "bh":
        adjusted[valid] = false_discovery_control(p[valid], method="bh")
        return adjusted
    # Holm (scipy has none): p_(i) * (m - i + 1), made non-decreasing from the smallest p upward
    m = int(valid.sum())
    order = np.argsort(p[valid], kind="stable")
    ranked = p[valid][order] * (m - np.arange(m))
    out = np.empty(m)
    out[order] = np.maximum.accumulate(np.minimum(ranked, 1.0))
    adjusted[valid] = out
    return adjusted


def _method_groups(models: pd.DataFrame, methods, reference: str):
    """Yield ((setup, teacher_id, alpha, temperature, width), {method: rows for each of
    ``methods``, reference: rows}).

    One item per group holding student rows of ``methods``; the reference's rows are matched by
    setup, teacher and width, regardless of their alpha and temperature.
    """
    if reference in methods:
        raise ValueError(f"the reference method {reference!r} is among the methods compared "
                         f"with it: {', '.join(methods)}")
    students = models[models["role"] == "student"]
    pool = students[students["method"] == reference]
    compared = students[students["method"].isin(list(methods))]
    for key, rows in compared.groupby(GROUP, dropna=False, sort=True):
        setup, teacher_id, _, _, width = key
        matched = pool[(pool["setup"] == setup) & (pool["teacher_id"] == teacher_id)
                       & (pool["width"] == width)]
        arms = {method: rows[rows["method"] == method] for method in methods}
        yield key, {**arms, reference: matched}


def _compared_methods(comparisons: dict, reference: str) -> tuple:
    """The methods other than ``reference`` that ``comparisons`` (lead -> (name, first, second)
    triples) name, in order of appearance; a lead must be one of its own comparisons' methods."""
    named = []
    for lead, group in comparisons.items():
        if lead == reference or not any(lead in (first, second) for _, first, second in group):
            raise ValueError(f"lead method {lead!r} must differ from the reference {reference!r} "
                             f"and take part in its comparisons {[c[0] for c in group]}")
        named += [lead] + [m for _, first, second in group for m in (first, second)]
    return tuple(dict.fromkeys(m for m in named if m != reference))


def _seed_pairs(first: pd.DataFrame, second: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Row positions in ``first`` and ``second`` of the seeds both have, aligned by seed."""
    seeds = []
    for rows in (first, second):
        seed = rows["seed"].to_numpy()
        if len(np.unique(seed)) != len(seed):
            raise ValueError(f"several {rows['method'].iloc[0]} models share a seed in one group "
                             f"of setup {rows['setup'].iloc[0]!r}: seeds {sorted(seed)}")
        seeds.append(seed)
    _, in_first, in_second = np.intersect1d(*seeds, return_indices=True)
    return in_first, in_second


def compare_methods(models: pd.DataFrame, metrics=FUNCTIONAL_METRICS + PERFORMANCE_METRICS,
                    level: float = 0.05, correction: str = "none", comparisons=COMPARISONS_OF,
                    reference: str = REFERENCE) -> pd.DataFrame:
    """Mann-Whitney tests over seeds of each lead method's comparisons, with the Wilcoxon
    signed-rank test paired by seed beside each (wilcoxon_paired: n_pairs, p_paired,
    p_paired_note).

    ``comparisons`` maps a lead method to its comparisons (name, first method, second method),
    run in every group where the lead has students; the default, kdpipe.methods.COMPARISONS_OF,
    gives kd vs siddo, kd vs rcd and rcd vs siddo (and, where kd-masked or fm students were
    trained, theirs). ``reference`` is the method matched by setup, teacher and width whatever
    its alpha and T (siddo); every other method named is grouped by alpha, T and width too.

    One row per (setup, alpha, temperature, width) that has rows of a lead, metric and
    comparison, sorted by those columns. toward_teacher follows the sign of the effect size
    (see toward_teacher); it is NA for accuracy, loss and ece (PERFORMANCE_METRICS), which have
    no teacher direction. significant = p < level and, for a functional metric, toward the
    teacher; for those p < level alone (two-sided). With correction "holm" or "bh" a p_adjusted
    column is added and used for significant; the family is the whole table (every non-NaN p of
    every setup, group, metric and comparison). p_paired is a second check and is not adjusted.

    Power (kdpipe.power): level is the level used; p_min the smallest two-sided p an exact test
    of the row's sizes can give (NaN without a p); with a correction, p_min_adjusted is p_min
    adjusted as p is (every test of the family at its p_min: the row's best case); testable
    whether the best case is below the level. significant is NA where the row is not testable,
    since "not significant" there carries no information, and verdict_note says why in words
    ("" where testable).
    """
    unknown = sorted(set(metrics) - set(FUNCTIONAL_METRICS + PERFORMANCE_METRICS))
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; known: "
                         f"{', '.join(FUNCTIONAL_METRICS + PERFORMANCE_METRICS)}")
    compared = _compared_methods(comparisons, reference)
    rows = []
    for (setup, teacher_id, alpha, temperature, width), arms in _method_groups(models, compared,
                                                                               reference):
        asked = [c for lead, group in comparisons.items() if not arms[lead].empty for c in group]
        for comparison, first, second in asked:
            in_first, in_second = _seed_pairs(arms[first], arms[second])
            for metric in metrics:
                x = arms[first][metric].to_numpy(dtype=np.float64)
                y = arms[second][metric].to_numpy(dtype=np.float64)
                test = mann_whitney(x, y)
                paired = wilcoxon_paired(x[in_first], y[in_second])
                rows.append({
                    "setup": setup, "teacher_id": teacher_id, "alpha": alpha,
                    "temperature": temperature, "width": width,
                    "metric": metric, "comparison": comparison, **test,
                    "toward_teacher": toward_teacher(metric, test["effect_size"]), **paired,
                })
    columns = GROUP + ["metric", "comparison", "n1", "n2", "u", "p", "effect_size",
                       "median_1", "median_2", "toward_teacher", "n_pairs", "p_paired",
                       "p_paired_note"]
    table = pd.DataFrame(rows, columns=columns)
    table["toward_teacher"] = table["toward_teacher"].astype("boolean")  # NA: no direction
    table = table.sort_values(GROUP + ["metric", "comparison"], kind="stable", ignore_index=True)
    p = table["p"].to_numpy(dtype=np.float64)
    if correction != "none":
        p = adjust_pvalues(p, correction)
    directed = table["toward_teacher"].fillna(True).to_numpy(dtype=bool)
    power = _power(table, level, correction)
    table["significant"] = pd.array(np.where(power["testable"], (p < level) & directed, None),
                                    dtype="boolean")
    if correction != "none":
        table["p_adjusted"] = p
    return pd.concat([table, power], axis=1)


def _power(table: pd.DataFrame, level: float, correction: str) -> pd.DataFrame:
    """level, p_min, p_min_adjusted (with a correction), testable and verdict_note of each row
    of a compare_methods table.

    p_min is kdpipe.power.min_p of the row's sizes (NaN without a p). A row's best case is its
    p_min adjusted as the table's p is (adjust_pvalues: the family is the rows with a p), which
    is the adjusted p it would have with every test of the family at its p_min (kdpipe.power);
    testable = best case < level. p_min bounds every exact test's p, ties or not; scipy's
    method "auto" uses the normal approximation where a sample has ties, and that can go below
    p_min at small sizes: such a row stays untestable, and its note says so.
    """
    has_p = table["p"].notna().to_numpy()
    n1, n2 = table["n1"].to_numpy(), table["n2"].to_numpy()
    p_min = np.array([min_p(a, b) if test else np.nan for a, b, test in zip(n1, n2, has_p)])
    best = adjust_pvalues(p_min, correction)
    testable = best < level  # NaN: False
    tests = int(has_p.sum())
    notes = []
    for a, b, p, low, high, test, ok in zip(n1, n2, table["p"], p_min, best, has_p, testable):
        if ok:
            notes.append("")
            continue
        if not test:
            notes.append(f"no test: {a} and {b} seeds with a finite value")
            continue
        note = f"{a} and {b} seeds: the smallest two-sided p is {low:.2g}"
        if correction != "none":
            note += f", {high:.2g} after {CORRECTIONS[correction]} over {tests} tests"
        note += f", not below the level {level:g}; this test cannot reject"
        if p < low * (1 - 1e-9):  # below the exact floor: not rounding
            note += (f" (its p {p:.2g} is scipy's normal approximation for tied values, below "
                     "what an exact test can give at these sizes)")
        notes.append(note)
    power = {"level": float(level), "p_min": p_min}
    if correction != "none":
        power["p_min_adjusted"] = best
    return pd.DataFrame({**power, "testable": testable, "verdict_note": notes}, index=table.index)


def untestable_summary(stats: pd.DataFrame) -> list[str]:
    """Lines for a log naming the cells (setup, teacher, alpha, T, width, comparison) of a
    compare_methods table whose tests have a p but cannot reject (testable False): a heading,
    then one line per (setup, teacher, group sizes) listing the values of the cells'
    alphas, Ts, widths and comparisons, with how many of their combinations are affected when
    not all, and the metrics when not all those the teacher's tests have a p for. [] when
    every test with a p is testable.
    """
    rows = stats[stats["p"].notna() & ~stats["testable"].to_numpy(dtype=bool)]
    if rows.empty:
        return []
    level = stats["level"].iloc[0]
    adjusted = "p_adjusted" in stats
    lines = [f"warning: {len(rows)} of {int(stats['p'].notna().sum())} Mann-Whitney tests cannot "
             f"reach p < {level:g}{' after the correction' if adjusted else ''} whatever the data "
             "(too few seeds); their significant, rcd_below_kd and claim_holds are NA "
             "(stats: testable False, verdict_note):"]

    def values(column, group):
        found = sorted(group[column].unique(), key=lambda v: (pd.isna(v), v))
        return ", ".join("none" if pd.isna(v) else f"{v:g}" if isinstance(v, float) else str(v)
                         for v in found)

    keys = ["setup", "teacher_id", "n1", "n2"]
    for (setup, teacher_id, n1, n2), group in rows.groupby(keys, sort=True):
        cells = group.drop_duplicates(["alpha", "temperature", "width", "comparison"])
        combinations = int(np.prod([group[c].nunique(dropna=False)
                                    for c in ("alpha", "temperature", "width", "comparison")]))
        best = f"smallest p {group['p_min'].iloc[0]:.2g}"
        if adjusted:
            best += f", adjusted {group['p_min_adjusted'].iloc[0]:.2g}"
        line = (f"  setup {setup}, teacher {teacher_id}, {n1} and {n2} seeds ({best}): "
                f"alpha {values('alpha', group)}; T {values('temperature', group)}; "
                f"width {values('width', group)}; {values('comparison', group)}")
        if len(cells) < combinations:
            line += f" ({len(cells)} of these {combinations} combinations)"
        tested = stats[(stats["setup"] == setup) & (stats["teacher_id"] == teacher_id)
                       & stats["p"].notna()]
        if set(group["metric"]) != set(tested["metric"]):
            line += f"; metrics {values('metric', group)}"
        lines.append(line)
    return lines


def claims(stats: pd.DataFrame, lead: str = LEAD, control: str = CONTROL) -> pd.DataFrame:
    """Claim (2) of the paper, "rcd matches or beats kd's accuracy", as the data says it; for
    another method, "``control`` matches or beats ``lead``'s accuracy" (defaults: kd and its
    random control rcd, kdpipe.methods).

    One row per (setup, teacher_id, alpha, temperature, width) with a lead vs control accuracy
    test in ``stats`` (compare_methods; the comparison named by kdpipe.methods.versus): both
    medians (median_accuracy_<lead>, median_accuracy_<control>), the effect size (positive: the
    lead more accurate), p (and p_adjusted where a correction was used), p_paired, and
    <control>_below_<lead> = the test is significant with the lead above the control.
    claim_holds = not <control>_below_<lead>: the control's accuracy is not significantly below
    the lead's. Both are NA where the test is not testable (too few seeds to reject, or no p:
    an arm without finite accuracy), since "not significantly below" then says nothing; the
    stats row's level, p_min (p_min_adjusted), testable and verdict_note follow.
    """
    comparison, _, _ = versus(lead, control)
    rows = stats[(stats["metric"] == "accuracy") & (stats["comparison"] == comparison)]
    p_columns = ["p"] + (["p_adjusted"] if "p_adjusted" in stats else [])
    table = rows[GROUP + ["median_1", "median_2", "effect_size"] + p_columns + ["p_paired"]]
    table = table.rename(columns={"median_1": f"median_accuracy_{lead}",
                                  "median_2": f"median_accuracy_{control}"})
    below = (rows["significant"].fillna(False).to_numpy(dtype=bool)
             & (rows["effect_size"] > 0).to_numpy())
    testable = rows["testable"].to_numpy(dtype=bool)
    table = table.assign(**{
        "claim": f"{control} accuracy not significantly below {lead}",
        f"{control}_below_{lead}": pd.array(np.where(testable, below, None), dtype="boolean"),
        "claim_holds": pd.array(np.where(testable, ~below, None), dtype="boolean")})
    power = ["level", "p_min"] + (["p_min_adjusted"] if "p_min_adjusted" in stats else [])
    table = pd.concat([table, rows[power + ["testable", "verdict_note"]]], axis=1)
    return table.reset_index(drop=True)


def no_difference(stats: pd.DataFrame, first: str, second: str) -> pd.DataFrame:
    """The claim "``second`` and ``first`` do not differ significantly on any tested metric"
    (ls against rcd: is rcd's effect label smoothing's?), as the data says it.

    One row per (setup, teacher_id, alpha, temperature, width) with tests of the comparison
    ``first``_vs_``second`` in ``stats`` (compare_methods): metrics_tested (how many metrics
    have a p), metrics_differing (those whose two-sided test is significant: p, or p_adjusted
    with a correction, below the level, in whichever direction; comma-separated),
    <first>_differs_from_<second> (a testable metric differs) and claim_holds (it does not).
    A difference found is a verdict whatever else is untestable; "no difference" is a verdict
    only where every metric's test is testable: elsewhere both are NA (too few seeds to reject,
    or no p). level, p_min (p_min_adjusted) are the cell's tests' (the smallest p_min of
    them), testable whether all of them are, verdict_note the first untestable test's note.
    """
    comparison, _, _ = versus(first, second)
    differs_column = f"{first}_differs_from_{second}"
    adjusted = "p_adjusted" in stats
    power = ["level", "p_min"] + (["p_min_adjusted"] if "p_min_adjusted" in stats else [])
    rows = []
    tested = stats[(stats["comparison"] == comparison) & stats["p"].notna()]
    for key, cell in tested.groupby(GROUP, dropna=False, sort=True):
        p = cell["p_adjusted" if adjusted else "p"].to_numpy(dtype=np.float64)
        testable = cell["testable"].to_numpy(dtype=bool)
        level = float(cell["level"].iloc[0])
        differing = list(cell["metric"][testable & (p < level)])
        verdict = True if differing else (False if testable.all() else None)
        untestable = cell["verdict_note"][~testable]
        rows.append({**dict(zip(GROUP, key)),
                     "claim": f"{second} and {first} do not differ significantly on any "
                              "tested metric",
                     "metrics_tested": len(cell), "metrics_differing": ", ".join(differing),
                     differs_column: verdict,
                     "claim_holds": None if verdict is None else not verdict,
                     **{column: cell[column].min() for column in power},
                     "testable": bool(testable.all()),
                     "verdict_note": untestable.iloc[0] if len(untestable) else ""})
    columns = GROUP + ["claim", "metrics_tested", "metrics_differing", differs_column,
                       "claim_holds"] + power + ["testable", "verdict_note"]
    table = pd.DataFrame(rows, columns=columns)
    return table.astype({"metrics_tested": "int64", differs_column: "boolean",
                         "claim_holds": "boolean", "testable": "bool"})


def _empty(n: int, dtype, index) -> pd.Series:
    """n missing values of ``dtype``, or of its nullable form (boolean, Int64)."""
    if pd.api.types.is_bool_dtype(dtype):
        dtype = "boolean"
    elif pd.api.types.is_integer_dtype(dtype):
        dtype = "Int64"
    return pd.Series([None] * n, index=index, dtype=dtype)


def claims_table(stats: pd.DataFrame, claimed=CLAIMS) -> pd.DataFrame:
    """The claims table: each claim of ``claimed`` ((kind, method, other method) triples, the
    registry's: kdpipe.methods.Registry.claims) where ``stats`` tested it, kind NOT_BELOW by
    ``claims`` and NO_DIFFERENCE by ``no_difference``, one claim after another. A column that
    names a claim's methods is empty on the other claims' rows. The first claim's table is
    returned as it is (empty or not) where no other claim has rows."""
    tables = []
    for kind, first, second in claimed:
        if kind not in (NOT_BELOW, NO_DIFFERENCE):
            raise ValueError(f"unknown claim {kind!r}; known: {NOT_BELOW!r}, {NO_DIFFERENCE!r}")
        make = claims if kind == NOT_BELOW else no_difference
        tables.append(make(stats, first, second))
    found = [table for table in tables if not table.empty]
    if len(found) <= 1:
        return found[0] if found else (tables[0] if tables else pd.DataFrame(columns=GROUP))
    dtypes = {}
    for table in found:
        for column, dtype in table.dtypes.items():
            dtypes.setdefault(column, dtype)
    # each table gets the others' columns, empty and of a dtype that holds NA (a boolean column
    # stays boolean rather than becoming objects)
    filled = [table.assign(**{column: _empty(len(table), dtype, table.index)
                              for column, dtype in dtypes.items() if column not in table})
              [list(dtypes)] for table in found]
    return pd.concat(filled, ignore_index=True)


def _median_count(rows: pd.DataFrame, share: str, size: str) -> tuple[float, float]:
    """(median of the counts share * size over the rows' finite shares, size).

    A student's denominator is fixed by its teacher, so it must be one value across the rows;
    each share * size must be a whole number up to rounding. The counts are whole, so their
    median is exact (a whole or half number), and so is a difference of two such medians.
    (NaN, NaN) without a finite share.
    """
    rows = rows[rows[share].notna()]
    if rows.empty:
        return float("nan"), float("nan")
    sizes = rows[size].unique()
    if len(sizes) != 1:
        raise ValueError(f"{size} differs between models of one teacher: {sorted(sizes)}")
    n = float(sizes[0])
    counts = rows[share].to_numpy(dtype=np.float64) * n
    whole = np.round(counts)
    if np.abs(counts - whole).max() > 1e-6:
        raise ValueError(f"{share} * {size} is not a whole number of test samples: "
                         f"{counts[np.abs(counts - whole) > 1e-6][:3]}")
    return float(np.median(whole)), n


def _whole(n: float):
    """A subset size as an int, or pd.NA where no model had a finite share."""
    return pd.NA if np.isnan(n) else int(n)


def asymmetry(models: pd.DataFrame, methods=DISTILLED, reference: str = REFERENCE) -> pd.DataFrame:
    """The asymmetric payoff: median correct and incorrect agreement of each of ``methods``
    against the ``reference`` method (defaults: kd, rcd, and kd-masked, rcd-masked, fm, fm-rcd
    where trained, against siddo; the reference is matched as in compare_methods).

    One row per (setup, alpha, temperature, width) and method with rows, sorted by those columns.
    Medians are taken on the exact counts (agreement * n_teacher_correct, resp.
    n_teacher_incorrect; see _median_count) and reported as shares: delta_x = (median count of
    the method - median count of the reference) / n, exactly 0 when the median counts are equal.
    The reference's medians are the columns median_correct_<reference> and
    median_incorrect_<reference>. ratio = delta_incorrect / delta_correct; it is NaN when either
    delta is NaN or delta_correct is 0, and ratio_note then says why ("" when the ratio is
    defined).
    """
    rows = []
    for (setup, teacher_id, alpha, temperature, width), arms in _method_groups(models, methods,
                                                                               reference):
        count_correct_reference, _ = _median_count(arms[reference], "correct_agreement",
                                               "n_teacher_correct")
        count_incorrect_reference, _ = _median_count(arms[reference], "incorrect_agreement",
                                                 "n_teacher_incorrect")
        for method in methods:
            if arms[method].empty:
                continue
            count_correct, n_correct = _median_count(arms[method], "correct_agreement",
                                                     "n_teacher_correct")
            count_incorrect, n_incorrect = _median_count(arms[method], "incorrect_agreement",
                                                         "n_teacher_incorrect")
            delta_correct = (count_correct - count_correct_reference) / n_correct
            delta_incorrect = (count_incorrect - count_incorrect_reference) / n_incorrect
            ratio, note = float("nan"), ""
            if np.isnan(delta_correct):
                note = "delta_correct undefined (no finite correct_agreement)"
            elif np.isnan(delta_incorrect):
                note = "delta_incorrect undefined (no teacher errors or no finite values)"
            elif delta_correct == 0:
                note = "delta_correct is 0 (equal median counts)"
            else:
                ratio = delta_incorrect / delta_correct
            rows.append({
                "setup": setup, "teacher_id": teacher_id, "alpha": alpha,
                "temperature": temperature, "width": width,
                "method": method,
                "n_teacher_correct": _whole(n_correct), "n_teacher_incorrect": _whole(n_incorrect),
                "median_correct": count_correct / n_correct,
                "median_incorrect": count_incorrect / n_incorrect,
                f"median_correct_{reference}": count_correct_reference / n_correct,
                f"median_incorrect_{reference}": count_incorrect_reference / n_incorrect,
                "delta_correct": delta_correct, "delta_incorrect": delta_incorrect,
                "ratio": ratio, "ratio_note": note,
            })
    columns = GROUP + ["method", "n_teacher_correct", "n_teacher_incorrect", "median_correct",
                       "median_incorrect", f"median_correct_{reference}",
                       f"median_incorrect_{reference}",
                       "delta_correct", "delta_incorrect", "ratio", "ratio_note"]
    table = pd.DataFrame(rows, columns=columns)
    table = table.astype({"n_teacher_correct": "Int64", "n_teacher_incorrect": "Int64"})
    return table.sort_values(GROUP + ["method"], kind="stable", ignore_index=True)


# A slope of agreement shares (per doubling of width) smaller than this is the rounding noise of
# an exact zero: shares are counts k / n, and a zero slope of k / n computes as about 1e-17, while
# a real one is at least about 1 / (n * models), above 1e-9 for any test set here.
SLOPE_ROUNDING = 1e-12


def _slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares slopes of each row of y on the same row of x, over that row's non-NaN y.

    x and y have shape [..., n]; the result has shape [...]. A row with fewer than two distinct
    x among its non-NaN y has slope NaN (the x are compared exactly, not through a variance). A
    slope within SLOPE_ROUNDING of 0 is 0, so that a ratio over it is NaN, not 1e16.
    """
    keep = ~np.isnan(y)
    distinct = np.where(keep, x, np.inf).min(-1) < np.where(keep, x, -np.inf).max(-1)
    with np.errstate(invalid="ignore", divide="ignore"):  # empty rows: 0 / 0, dropped below
        n = keep.sum(-1, keepdims=True)
        x_mean = np.where(keep, x, 0.0).sum(-1, keepdims=True) / n
        y_mean = np.where(keep, y, 0.0).sum(-1, keepdims=True) / n
        dx = np.where(keep, x - x_mean, 0.0)
        dy = np.where(keep, y - y_mean, 0.0)
        slope = (dx * dy).sum(-1) / (dx * dx).sum(-1)
    slope = np.where(np.abs(slope) < SLOPE_ROUNDING, 0.0, slope)
    return np.where(distinct, slope, np.nan)


def _resample_within_widths(width: np.ndarray, n_draws: int,
                            rng: np.random.Generator) -> np.ndarray:
    """Row indices [n_draws, n] of bootstrap resamples of n models that keep the per-width counts.

    Each draw takes, for every width, as many rows as that width has, with replacement from that
    width's rows; columns are grouped by width in ascending order.
    """
    order = np.argsort(width, kind="stable")
    _, starts, counts = np.unique(width[order], return_index=True, return_counts=True)
    blocks = [order[start + rng.integers(0, count, size=(n_draws, count))]
              for start, count in zip(starts, counts)]
    return np.concatenate(blocks, axis=1)


def _interval(draws: np.ndarray) -> tuple[float, float]:
    """The 2.5 and 97.5 percentiles of the finite draws; NaN, NaN without any."""
    draws = draws[np.isfinite(draws)]
    if not len(draws):
        return float("nan"), float("nan")
    low, high = np.percentile(draws, [2.5, 97.5])
    return float(low), float(high)


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator != 0 else float("nan")


def _fit(width, correct, incorrect, bootstrap, rng, intervals) -> dict:
    """Slopes on log2(width) of correct and incorrect agreement and their ratio ("slope_correct",
    "slope_incorrect", "slope_ratio"), with a 95% percentile bootstrap interval (<name>_low,
    <name>_high) of each name in ``intervals``; draws resample within widths (see scaling)."""
    log_width = np.log2(width)
    slope_correct = float(_slopes(log_width, correct))
    slope_incorrect = float(_slopes(log_width, incorrect))
    n_draws = bootstrap if len(np.unique(width)) >= 2 else 0
    fit = {"slope_correct": slope_correct, "slope_incorrect": slope_incorrect,
           "slope_ratio": _ratio(slope_incorrect, slope_correct), "bootstrap": n_draws}
    draws = {name: np.empty(0) for name in intervals}
    if n_draws:
        draw = _resample_within_widths(width, n_draws, rng)  # [n_draws, n_models]
        x = log_width[draw]
        slopes = {"slope_correct": _slopes(x, correct[draw]),
                  "slope_incorrect": _slopes(x, incorrect[draw])}
        # a ratio over a zero or NaN slope is not finite and is dropped
        with np.errstate(invalid="ignore", divide="ignore"):
            slopes["slope_ratio"] = slopes["slope_incorrect"] / slopes["slope_correct"]
        draws = {name: slopes[name] for name in intervals}
    for name, values in draws.items():
        fit[f"{name}_low"], fit[f"{name}_high"] = _interval(values)
    return fit


def scaling(models: pd.DataFrame, bootstrap: int = 1000, seed: int = 0,
            widths: str = "all", methods=DISTILLED, reference: str = REFERENCE) -> pd.DataFrame:
    """Capacity scaling: slopes of correct and incorrect agreement against log2(width).

    One row per (setup, teacher_id, alpha, temperature, method) for each of ``methods`` and the
    ``reference`` method (defaults: kdpipe.methods; siddo has alpha 0, temperature NaN),
    fitted by least squares over every student model in the group (one point per model, not
    per-width medians). slope_ratio = slope_incorrect / slope_correct, NaN when slope_correct is
    0 or NaN (fewer than two distinct widths).

    ``widths``: "all" fits every student; "fresh-init" leaves out those that start from the
    teacher's own initial weights (``fresh_init``: at width 1 with the teacher's architecture,
    where the teacher has them) while the others start fresh. The table's ``widths`` column says
    which was used.

    slope_ratio_low and slope_ratio_high are a 95% percentile bootstrap interval over seeds: each
    of ``bootstrap`` draws resamples the group's models with replacement within each width
    (keeping the per-width counts), refits both slopes on the same resample and takes their ratio;
    the bounds are the 2.5 and 97.5 percentiles of the finite ratios. They are NaN with fewer than
    two widths, with bootstrap=0 or without finite draws; the ``bootstrap`` column is the number
    of draws made (0 in those first two cases). A width with a single model adds no resampling
    variation. The interval is reported as is: when slope_correct is near 0 the ratio's draws
    reach large values of either sign, and the interval is then wide and can be far from
    symmetric about slope_ratio.

    Relative to the reference (every method but the reference; the column names end in
    _vs_<reference>, below _vs_siddo): siddo's agreement changes with width too, so
    slope_correct_vs_siddo and slope_incorrect_vs_siddo are the slopes of the per-model
    differences method - siddo of the same (width, seed) (equal to the method's slope minus
    siddo's when every seed has both), over the n_pairs_vs_siddo such pairs, and
    slope_ratio_vs_siddo their ratio; each has a _low and _high 95% bootstrap bound, from draws
    that resample the pairs within each width (so a seed's kd and siddo models stay together).

    Draws come from numpy.random.default_rng(seed), one generator for the whole table used in
    group order, so the table is the same for the same models and seed.
    """
    if bootstrap < 0:
        raise ValueError(f"bootstrap must be >= 0, got {bootstrap}")
    if widths not in SCALING_WIDTHS:
        raise ValueError(f"unknown scaling widths {widths!r}; expected one of {SCALING_WIDTHS}")
    if reference in methods:
        raise ValueError(f"the reference method {reference!r} is among the methods compared "
                         f"with it: {', '.join(methods)}")
    rng = np.random.default_rng(seed)
    students = models[(models["role"] == "student")
                      & models["method"].isin([*methods, reference])]
    if widths == "fresh-init":
        students = fresh_init(students)
    keys = ["setup", "teacher_id", "alpha", "temperature", "method"]
    agreements = ["correct_agreement", "incorrect_agreement"]
    pool = students[students["method"] == reference]
    suffix = f"_vs_{reference}"
    relative = [f"{name}{suffix}"
                for name in ("slope_correct", "slope_incorrect", "slope_ratio")]
    rows = []
    # dropna=False: siddo's temperature is NaN and must stay a group key
    for (setup, teacher_id, alpha, temperature, method), group in students.groupby(keys,
                                                                                  dropna=False):
        width = group["width"].to_numpy(dtype=np.float64)
        fit = _fit(width, *(group[a].to_numpy(dtype=np.float64) for a in agreements),
                   bootstrap, rng, intervals=["slope_ratio"])
        against = {f"{name}{end}": float("nan") for name in relative
                   for end in ("", "_low", "_high")}
        own = pool[(pool["setup"] == setup) & (pool["teacher_id"] == teacher_id)]
        pairs = own.iloc[:0] if method == reference else group.merge(
            own, on=["width", "seed"], suffixes=("", "_reference"))
        n_pairs = len(pairs)
        if n_pairs:
            differences = [(pairs[a] - pairs[f"{a}_reference"]).to_numpy(dtype=np.float64)
                           for a in agreements]
            paired_fit = _fit(pairs["width"].to_numpy(dtype=np.float64), *differences,
                              bootstrap, rng, intervals=["slope_correct", "slope_incorrect",
                                                         "slope_ratio"])
            against = {f"{name}{suffix}{end}": paired_fit[f"{name}{end}"]
                       for name in ("slope_correct", "slope_incorrect", "slope_ratio")
                       for end in ("", "_low", "_high")}
        rows.append({
            "setup": setup, "teacher_id": teacher_id, "alpha": alpha, "temperature": temperature,
            "method": method, "widths": widths,
            "n_widths": int(group["width"].nunique()), "n_models": len(group),
            "slope_correct": fit["slope_correct"], "slope_incorrect": fit["slope_incorrect"],
            "slope_ratio": fit["slope_ratio"], "slope_ratio_low": fit["slope_ratio_low"],
            "slope_ratio_high": fit["slope_ratio_high"], "bootstrap": fit["bootstrap"],
            f"n_pairs{suffix}": n_pairs, **against,
        })
    columns = keys + ["widths", "n_widths", "n_models", "slope_correct", "slope_incorrect",
                      "slope_ratio", "slope_ratio_low", "slope_ratio_high", "bootstrap",
                      f"n_pairs{suffix}"]
    columns += [f"{name}{end}" for name in relative for end in ("", "_low", "_high")]
    return pd.DataFrame(rows, columns=columns)
