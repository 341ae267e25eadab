"""What the Mann-Whitney tests of a study can detect at best, from the group sizes alone
(PROTOCOL.md section 6, "Power").

Standard library only: the config check imports it while the Snakefile is parsed.

The smallest two-sided p of an exact Mann-Whitney test of n1 against n2 values comes with
complete separation (every value of one sample above every value of the other): one of the
C(n1 + n2, n1) equally likely arrangements in each tail, so ``p_min = 2 / C(n1 + n2, n1)``,
capped at 1. With ties the exact test's p can only be larger. A test whose best case is not
below the level cannot reject, whatever the data: "not significant" then says nothing.

The best case after a correction over a family of m tests (the tests with a p, as
kdpipe.stats.compare_methods defines the family). Holm and Benjamini-Hochberg are monotone (no
adjusted p grows when a raw p shrinks), so a test's best case is its adjusted p when every test
of the family sits at its own p_min; where every test has the same group sizes:
  none  p_min: the test rejects at p_min < level.
  holm  m * p_min (capped at 1): every adjusted p is at least m times the family's smallest p.
  bh    p_min: with all m tests at p_min, each is adjusted to p_min * m / m.
compare_methods applies the correction to the p_min of every row, which gives these values when
the sizes are equal and the exact best case when they are not.
"""
from __future__ import annotations

import math

from kdpipe import methods

CORRECTIONS = {"none": "no correction", "holm": "Holm", "bh": "Benjamini-Hochberg"}


def min_p(n1: int, n2: int) -> float:
    """The smallest two-sided p of an exact Mann-Whitney test of n1 against n2 values:
    2 / C(n1 + n2, n1), capped at 1. Both sizes must be at least 1."""
    if n1 < 1 or n2 < 1:
        raise ValueError(f"a Mann-Whitney test needs at least one value a side, got {n1} and {n2}")
    return min(1.0, 2 / math.comb(n1 + n2, n1))


def best_case_p(n1: int, n2: int, correction: str = "none", tests: int = 1) -> float:
    """The smallest p after ``correction`` ("none", "holm" or "bh") that a test of n1 against
    n2 values can have in a family of ``tests`` tests of the same sizes (module docstring)."""
    if correction not in CORRECTIONS:
        raise ValueError(f"unknown correction {correction!r}; expected one of "
                         f"{', '.join(CORRECTIONS)}")
    if tests < 1:
        raise ValueError(f"a family holds at least one test, got {tests}")
    p = min_p(n1, n2)
    return min(1.0, tests * p) if correction == "holm" else p


def fewest_seeds(level: float, correction: str = "none", tests: int = 1) -> int:
    """The fewest seeds per group (n against n) with which a test can reach p < level after
    ``correction`` over ``tests`` tests."""
    if not 0 < level < 1:
        raise ValueError(f"the level must lie between 0 and 1, got {level}")
    n = 1
    while best_case_p(n, n, correction, tests) >= level:
        n += 1
    return n


def planned_tests(config: dict) -> int:
    """The number of Mann-Whitney tests compare_methods runs on a finished study of this
    (validated) config, when every metric has values: per (setup, teacher, width), each
    distillation method with comparisons (kdpipe.methods) that the config trains contributes
    its comparisons times the tested metrics, once per alpha and, if it uses one, per T."""
    registry = methods.Registry(config.get("methods"))
    trained = registry.enabled(config)
    per_width = 0
    for lead, comparisons in registry.comparisons_of.items():
        if lead not in trained:
            continue
        groups = len(config["alphas"]) if registry.method(lead).uses_alpha else 1
        if registry.method(lead).uses_temperature:
            groups *= len(config["temperatures"])
        per_width += groups * len(comparisons)
    # (teacher, width) cells: a setup's own widths, else the study's
    cells = sum(len(setup["teachers"]) * len(setup.get("widths", config["widths"]))
                for setup in config["setups"].values())
    return cells * per_width * len(config["stats"]["metrics"])


def seeds_warning(config: dict) -> str | None:
    """A warning when the seeds of a (validated) config leave no Mann-Whitney test of the study
    able to reach the level after the configured correction (every group has one model per
    seed), with the fewest seeds that would; None when the tests can reject."""
    n = len(config["seeds"])
    level, correction = config["stats"]["level"], config["stats"]["correction"]
    tests = planned_tests(config)
    best = best_case_p(n, n, correction, tests)
    if best < level:
        return None
    after = f" after {CORRECTIONS[correction]} over {tests} tests" if correction == "holm" else ""
    text = (f"warning: with {n} seed{'s' if n != 1 else ''} per group no Mann-Whitney test can "
            f"reach p < {level:g}{after} (smallest p {min_p(n, n):.2g}"
            + (f", {best:.2g} after {CORRECTIONS[correction]})" if after else ")")
            + "; every significance verdict and claim will be NA (untestable). "
            f"Use at least {fewest_seeds(level, correction, tests)} seeds")
    if correction != "holm":
        text += f" ({fewest_seeds(level, 'holm', tests)} with Holm over {tests} tests)"
    return text + "."
