"""The student methods, in one registry that the command line, the statistics, the figures, the
audit and the workflow rules read. Adding a method means adding it here (and its test).

Only the standard library is imported: the Snakefile imports this module while it is parsed.

A method is a training target and a loss:
  target  "none" (cross-entropy only), "teacher" (the teacher's logits), "noise" (noise logits,
          docs/protocol.md section 1), "teacher-stage" / "noise-stage" (a named stage's output
          of the teacher, or noise of its shape: feature-map matching)
  loss    "ce", "kd" (the distillation loss of docs/protocol.md, weighted by alpha, at
          temperature T) or "stage-mse" (CE + alpha * MSE on the stage's output)
  masked  the distillation term is restricted by the teacher's correctness (kd_masked options)
Each distillation method names its random control; a method with comparisons gets those
Mann-Whitney tests in every group where it has students.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    name: str
    target: str
    loss: str
    control: str | None = None      # the method's random control (same loss, noise targets)
    uses_alpha: bool = True
    uses_temperature: bool = True
    masked: bool = False
    option: str | None = None       # the config section that enables it; None: always trained
    comparisons: tuple = ()         # (name, first method, second method), first = effect's side
    figure: str | None = None       # the figure given to this method alone (kdpipe.plan.figures)

    @property
    def uses_teacher(self) -> bool:
        return self.target.startswith("teacher")

    @property
    def uses_noise(self) -> bool:
        return self.target.startswith("noise")


def versus(first: str, second: str) -> tuple:
    """The comparison of ``first`` against ``second``: (its name, first, second)."""
    return (f"{first}_vs_{second}", first, second)


# In the order of the figures' legends and colours (the palette's first colours go to the first).
REGISTRY = (
    Method("kd", "teacher", "kd", control="rcd",
           comparisons=(versus("kd", "siddo"), versus("kd", "rcd"), versus("rcd", "siddo"))),
    Method("rcd", "noise", "kd"),
    Method("siddo", "none", "ce", uses_alpha=False, uses_temperature=False),
    # ours, not the paper's: the KD term only where the teacher is right
    Method("kd-masked", "teacher", "kd", control="rcd-masked", masked=True, option="kd_masked",
           comparisons=(versus("kd-masked", "siddo"), versus("kd-masked", "rcd-masked"),
                        versus("rcd-masked", "siddo"), versus("kd-masked", "kd")),
           figure="fig7_masked"),
    Method("rcd-masked", "noise", "kd", masked=True, option="kd_masked"),
    # FitNets-style matching of a named stage, and its random control
    Method("fm", "teacher-stage", "stage-mse", control="fm-rcd", uses_temperature=False,
           option="feature_matching",
           comparisons=(versus("fm", "siddo"), versus("fm", "fm-rcd"), versus("fm-rcd", "siddo")),
           figure="fig8_fm"),
    Method("fm-rcd", "noise-stage", "stage-mse", uses_temperature=False,
           option="feature_matching"),
)
METHODS = {m.name: m for m in REGISTRY}
ORDER = tuple(METHODS)
REFERENCE = "siddo"  # the same-init, different-data-order control every method is compared with
DISTILLED = tuple(name for name in ORDER if name != REFERENCE)
# The comparisons of each distillation method, asked for where that method has students.
COMPARISONS_OF = {m.name: m.comparisons for m in REGISTRY if m.comparisons}
# The paper's method and its random control: what figures 1-3, 5 and 6, the claims table and
# the audit's copied-errors panel show against the reference.
LEAD = "kd"
CONTROL = METHODS[LEAD].control


def method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(ORDER)}")
    return METHODS[name]


def enabled(config: dict) -> list[str]:
    """The methods a study trains: those always trained and those whose config section has
    ``enabled: true``, in registry order."""
    return [m.name for m in REGISTRY
            if m.option is None or config.get(m.option, {}).get("enabled", False)]


ALWAYS = tuple(m.name for m in REGISTRY if m.option is None)  # trained in every study
