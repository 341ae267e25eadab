"""Statistics over the models table (PROTOCOL.md section 3).

The models table has one row per trained model with columns setup, dataset, arch, role
("teacher" | "student"), teacher_id, method ("kd" | "rcd" | "siddo"; "" for teachers), alpha
(siddo rows carry 0.0, teachers NaN), temperature (NaN for siddo and teachers), width, seed and
the metric columns of kdpipe.metrics.student_metrics. Only student rows enter the statistics.

siddo does not depend on alpha or T (it is trained once per (setup, width, seed)), so a kd or rcd
group (setup, alpha, temperature, width) is compared with the siddo rows of the same setup and
width whose teacher_id is among the group's teachers, whatever their alpha and temperature.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import mannwhitneyu

from kdpipe.methods import COMPARISONS_OF, DISTILLED
from kdpipe.metrics import FUNCTIONAL_METRICS, HIGHER_IS_CLOSER

# One teacher's students at one (alpha, temperature, width): the unit every test compares.
GROUP = ["setup", "teacher_id", "alpha", "temperature", "width"]
# (name, first method, second method) of each distillation method: kdpipe.methods
COMPARISONS = COMPARISONS_OF["kd"]


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


def toward_teacher(metric: str, median_1: float, median_2: float) -> bool:
    """True when the first sample is closer to the teacher: higher agreement, lower distance.

    False on equality or NaN. Defined only for FUNCTIONAL_METRICS (accuracy or loss have no
    teacher direction), so any other metric raises ValueError.
    """
    if metric not in FUNCTIONAL_METRICS:
        raise ValueError(f"{metric!r} is not one of {FUNCTIONAL_METRICS}")
    if metric in HIGHER_IS_CLOSER:
        return bool(median_1 > median_2)
    return bool(median_1 < median_2)  # NaN compares False either way


def adjust_pvalues(p, method: str) -> np.ndarray:
    """Multiplicity-adjusted p-values: "none", "holm" (step-down) or "bh" (Benjamini-Hochberg).

    The family is every non-NaN entry of p; NaN entries stay NaN. Adjusted values are monotone
    in the raw ones and clipped to 1.
    """
    p = np.asarray(p, dtype=np.float64)
    if method not in ("none", "holm", "bh"):
        raise ValueError(f"unknown correction {method!r}; expected none, holm or bh")
    adjusted = p.copy()
    if method == "none":
        return adjusted
    valid = ~np.isnan(p)
    m = int(valid.sum())
    order = np.argsort(p[valid], kind="stable")
    ranked = p[valid][order]
    rank = np.arange(1, m + 1)
    if method == "holm":
        # p_(i) * (m - i + 1), made non-decreasing from the smallest p upward
        ranked = np.maximum.accumulate(np.minimum(ranked * (m - rank + 1), 1.0))
    else:
        # p_(i) * m / i, made non-decreasing by taking the minimum from the largest p downward
        ranked = np.minimum.accumulate(np.minimum(ranked * m / rank, 1.0)[::-1])[::-1]
    out = np.empty(m)
    out[order] = ranked
    adjusted[valid] = out
    return adjusted


def _method_groups(models: pd.DataFrame):
    """Yield ((setup, teacher_id, alpha, temperature, width), {method: rows, "siddo": rows}).

    One item per group holding distilled student rows; siddo rows are matched by setup, teacher
    and width, regardless of their alpha and temperature.
    """
    students = models[models["role"] == "student"]
    siddo = students[students["method"] == "siddo"]
    distilled = students[students["method"].isin(DISTILLED)]
    for key, rows in distilled.groupby(GROUP, dropna=False, sort=True):
        setup, teacher_id, _, _, width = key
        matched = siddo[(siddo["setup"] == setup) & (siddo["teacher_id"] == teacher_id)
                        & (siddo["width"] == width)]
        arms = {method: rows[rows["method"] == method] for method in DISTILLED}
        yield key, {**arms, "siddo": matched}


def compare_methods(models: pd.DataFrame, metrics=FUNCTIONAL_METRICS, level: float = 0.05,
                    correction: str = "none") -> pd.DataFrame:
    """Mann-Whitney tests over seeds of kd vs siddo, kd vs rcd and rcd vs siddo (and, where
    kd-masked or fm students were trained, theirs: kdpipe.methods.COMPARISONS_OF).

    One row per (setup, alpha, temperature, width) that has kd (or kd-masked, fm) rows, metric
    and comparison,
    sorted by those columns. significant = p < level and the first method's median is closer to
    the teacher. With correction "holm" or "bh" a p_adjusted column is added and used for
    significant; the family is the whole table (every non-NaN p of every setup, group, metric
    and comparison).
    """
    rows = []
    for (setup, teacher_id, alpha, temperature, width), arms in _method_groups(models):
        comparisons = [c for lead, group in COMPARISONS_OF.items() if not arms[lead].empty
                       for c in group]
        for metric in metrics:
            for comparison, first, second in comparisons:
                test = mann_whitney(arms[first][metric], arms[second][metric])
                rows.append({
                    "setup": setup, "teacher_id": teacher_id, "alpha": alpha,
                "temperature": temperature, "width": width,
                    "metric": metric, "comparison": comparison, **test,
                    "toward_teacher": toward_teacher(metric, test["median_1"], test["median_2"]),
                })
    columns = GROUP + ["metric", "comparison", "n1", "n2", "u", "p", "effect_size",
                       "median_1", "median_2", "toward_teacher"]
    table = pd.DataFrame(rows, columns=columns)
    table = table.sort_values(GROUP + ["metric", "comparison"], kind="stable", ignore_index=True)
    p = table["p"].to_numpy(dtype=np.float64)
    if correction != "none":
        p = adjust_pvalues(p, correction)
    table["significant"] = (p < level) & table["toward_teacher"].to_numpy(dtype=bool)
    if correction != "none":
        table["p_adjusted"] = p
    return table


def asymmetry(models: pd.DataFrame) -> pd.DataFrame:
    """The asymmetric payoff: median correct and incorrect agreement of each distilled method
    (kd, rcd, and kd-masked, rcd-masked where trained) against siddo.

    One row per (setup, alpha, temperature, width) and method with rows; delta_x =
    median of the method - median of the matched siddo rows; ratio = delta_incorrect /
    delta_correct (NaN when delta_correct is 0 or NaN).
    """
    rows = []
    for (setup, teacher_id, alpha, temperature, width), arms in _method_groups(models):
        siddo = arms["siddo"]
        median_correct_siddo = siddo["correct_agreement"].median()
        median_incorrect_siddo = siddo["incorrect_agreement"].median()
        for method in DISTILLED:
            if arms[method].empty:
                continue
            median_correct = arms[method]["correct_agreement"].median()
            median_incorrect = arms[method]["incorrect_agreement"].median()
            delta_correct = median_correct - median_correct_siddo
            delta_incorrect = median_incorrect - median_incorrect_siddo
            rows.append({
                "setup": setup, "teacher_id": teacher_id, "alpha": alpha,
                "temperature": temperature, "width": width,
                "method": method,
                "median_correct": median_correct, "median_incorrect": median_incorrect,
                "median_correct_siddo": median_correct_siddo,
                "median_incorrect_siddo": median_incorrect_siddo,
                "delta_correct": delta_correct, "delta_incorrect": delta_incorrect,
                "ratio": delta_incorrect / delta_correct if delta_correct != 0 else float("nan"),
            })
    columns = GROUP + ["method", "median_correct", "median_incorrect", "median_correct_siddo",
                       "median_incorrect_siddo", "delta_correct", "delta_incorrect", "ratio"]
    table = pd.DataFrame(rows, columns=columns)
    return table.sort_values(GROUP + ["method"], kind="stable", ignore_index=True)


def _slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares slopes of each row of y on the same row of x, over that row's non-NaN y.

    x and y have shape [..., n]; the result has shape [...]. A row with fewer than two distinct
    x among its non-NaN y has slope NaN (the x are compared exactly, not through a variance).
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


def scaling(models: pd.DataFrame, bootstrap: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Capacity scaling: slopes of correct and incorrect agreement against log2(width).

    One row per (setup, teacher_id, alpha, temperature, method) for each method (siddo: alpha 0,
    temperature NaN), fitted by least squares over every student model in the group (one point
    per model, not per-width medians). slope_ratio = slope_incorrect / slope_correct, NaN when
    slope_correct is 0 or NaN (fewer than two distinct widths).

    slope_ratio_low and slope_ratio_high are a 95% percentile bootstrap interval over seeds: each
    of ``bootstrap`` draws resamples the group's models with replacement within each width
    (keeping the per-width counts), refits both slopes on the same resample and takes their ratio;
    the bounds are the 2.5 and 97.5 percentiles of the finite ratios. They are NaN with fewer than
    two widths, with bootstrap=0 or without finite draws; the ``bootstrap`` column is the number
    of draws made (0 in those first two cases). A width with a single model adds no resampling
    variation. The interval is reported as is: when slope_correct is near 0 the ratio's draws
    reach large values of either sign, and the interval is then wide and can be far from
    symmetric about slope_ratio. Draws come from numpy.random.default_rng(seed), one generator
    for the whole table used in group order, so the table is the same for the same models and
    seed.
    """
    if bootstrap < 0:
        raise ValueError(f"bootstrap must be >= 0, got {bootstrap}")
    rng = np.random.default_rng(seed)
    students = models[(models["role"] == "student")
                      & models["method"].isin([*DISTILLED, "siddo"])]
    keys = ["setup", "teacher_id", "alpha", "temperature", "method"]
    rows = []
    # dropna=False: siddo's temperature is NaN and must stay a group key
    for (setup, teacher_id, alpha, temperature, method), group in students.groupby(keys,
                                                                                  dropna=False):
        width = group["width"].to_numpy(dtype=np.float64)
        log_width = np.log2(width)
        correct = group["correct_agreement"].to_numpy(dtype=np.float64)
        incorrect = group["incorrect_agreement"].to_numpy(dtype=np.float64)
        slope_correct = float(_slopes(log_width, correct))
        slope_incorrect = float(_slopes(log_width, incorrect))
        n_widths = int(group["width"].nunique())
        n_draws = bootstrap if n_widths >= 2 else 0
        low = high = float("nan")
        if n_draws:
            draw = _resample_within_widths(width, n_draws, rng)  # [n_draws, n_models]
            x = log_width[draw]
            # a ratio over a zero or NaN slope is not finite and is dropped
            with np.errstate(invalid="ignore", divide="ignore"):
                ratios = _slopes(x, incorrect[draw]) / _slopes(x, correct[draw])
            ratios = ratios[np.isfinite(ratios)]
            if len(ratios):
                low, high = (float(q) for q in np.percentile(ratios, [2.5, 97.5]))
        rows.append({
            "setup": setup, "teacher_id": teacher_id, "alpha": alpha, "temperature": temperature,
            "method": method,
            "n_widths": n_widths, "n_models": len(group),
            "slope_correct": slope_correct, "slope_incorrect": slope_incorrect,
            "slope_ratio": slope_incorrect / slope_correct if slope_correct != 0 else float("nan"),
            "slope_ratio_low": low, "slope_ratio_high": high, "bootstrap": n_draws,
        })
    columns = keys + ["n_widths", "n_models", "slope_correct", "slope_incorrect", "slope_ratio",
                      "slope_ratio_low", "slope_ratio_high", "bootstrap"]
    return pd.DataFrame(rows, columns=columns)
