"""The student methods, each defined once: the command line, the training engine, the statistics,
the figures, the audit, the config check and the workflow rules read this registry, and branch on
an entry's fields, never on a method's name. Adding a built-in method is adding an entry here
(and its test); a researcher's own method is declared in the config (`methods`) and becomes an
entry of the study's ``Registry``, with its random control (docs/methods.md).

Only the standard library is imported: the Snakefile imports this module while it is parsed. The
losses import torch inside their bodies.

A method is:
  target    how its target is built: "none" (cross-entropy only), "teacher" (the teacher's
            logits: its cached train logits, or the teacher run on every batch where batches are
            augmented), "noise" (noise logits, the config's NOISE_OPTIONS section), "uniform" (a
            constant distribution: the uniform one, as all-zero logits), "teacher-stage" (the
            teacher's output of a named stage) or "noise-stage" (noise of that stage's shape)
  loss      one function ``loss(student_output, labels, target, alpha, temperature,
            sample_weights) -> scalar``, used for a learner trained alone and, under
            ``torch.func.vmap``, for learners trained as one stacked computation (kdpipe.train);
            a user's method names it as "file.py:function"
  control   its random control: the same loss with noise targets
  masked    the distillation term is restricted by the teacher's correctness (kd_masked options)
  option    the config section that enables it (None: always trained), with its JSON schema
            (``section``) and the keys of it each student carries (``settings``; those among
            ``loss_settings`` are passed to the loss as keywords)
  comparisons, claim, figure   what the statistics test, claim and draw where it has students
"""
from __future__ import annotations

import ast
import hashlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

TARGETS = ("none", "teacher", "noise", "uniform", "teacher-stage", "noise-stage")
STAGE_TARGETS = ("teacher-stage", "noise-stage")  # the student's output is (logits, features)
NOISE_TARGETS = ("noise", "noise-stage")

# The figure value of a method drawn as the lead of figures 1-4 and of the audit against its
# random control (kdpipe.plan.figures names them).
STANDARD_FIGURES = "figures 1-4"
# Claims (kdpipe.stats.claims_table): the second method's accuracy is not significantly below
# the first's; the two methods do not differ significantly on any tested metric.
NOT_BELOW, NO_DIFFERENCE = "accuracy not below", "no difference"


# --- the losses ---------------------------------------------------------------------------------
# Each takes (student output, labels, target, alpha, temperature, sample_weights) and returns a
# scalar: logits [..., C] with labels [...] (for a language model every position is a sample;
# a stage method's output is (logits, stage output)), the target like the student's output (None
# for "none"), alpha and T as floats alone and as 0-d tensors under vmap, sample_weights [...]
# or None. Written as one sample batch's computation, they are vmapped over stacked learners.
# The order of the arithmetic matters: as written, a vmapped loss gives bit for bit the values
# and gradients of its formula over the stacked tensors (tests/test_train.py). A KL is written
# out, not F.kl_div, which has no batching rule (vmap would run it slice by slice).

def cross_entropy(student_logits, labels, target=None, alpha=0.0, temperature=1.0,
                  sample_weights=None):
    """CE(y, softmax(z_s)), the batch mean: teachers and siddo. Target, alpha and T unused."""
    import torch.nn.functional as F

    classes = student_logits.shape[-1]
    return _mean_nll(F.log_softmax(student_logits.reshape(-1, classes), dim=-1), labels)


def _mean_nll(log_p, labels):
    """The mean of -log p(label) over the samples: the gathered log-probabilities, not
    F.nll_loss, which vmapped runs a Python decomposition at every step (its first call imports
    sympy, 0.4 s). Alone its gradient is nll_loss's bit for bit; its value can differ from
    nll_loss's in the last bit (another summation order)."""
    return -log_p.gather(-1, labels.reshape(-1, 1)).squeeze(-1).mean(-1)


def kd_loss(student_logits, labels, target_logits, alpha, temperature, sample_weights=None):
    """(1 - alpha) CE(y, z_s) + alpha T^2 KL(softmax(z_t / T) || softmax(z_s / T)), batch mean
    (docs/protocol.md section 1). ``sample_weights`` scale each sample's KL term (the mean still
    divides by the batch size): kd-masked gives the teacher's errors weight 0."""
    import torch.nn.functional as F

    classes = student_logits.shape[-1]
    student_logits = student_logits.reshape(-1, classes)
    target_logits = target_logits.reshape(-1, classes)
    log_p = F.log_softmax(student_logits, dim=-1)
    ce = _mean_nll(log_p, labels)
    if not (isinstance(temperature, (int, float)) and temperature == 1):
        # vmapped, T is a tensor and the KL term takes a log-softmax of its own. Alone at T = 1
        # the CE's log-probabilities serve it as well: one log-softmax fewer, and the gradient
        # summed as it always was for a student trained alone
        log_p = F.log_softmax(student_logits / temperature, dim=-1)
        target_logits = target_logits / temperature
    log_q = F.log_softmax(target_logits, dim=-1)
    per_sample = (log_q.exp() * (log_q - log_p)).sum(-1)
    if sample_weights is not None:
        per_sample = per_sample * sample_weights.reshape(-1)
    return (1 - alpha) * ce + alpha * temperature ** 2 * per_sample.mean(-1)


def stage_mse_loss(student_output, labels, target_features, alpha, temperature=1.0,
                   sample_weights=None):
    """CE(y, z_s) + alpha MSE(the student's output of a stage, the target of that shape):
    FitNets-style matching of a named stage (fm), or of noise of its shape (fm-rcd). T unused."""
    logits, features = student_output
    return cross_entropy(logits, labels) + alpha * (features - target_features).square().mean()


def dkd_loss(student_logits, labels, target_logits, alpha, temperature, sample_weights=None, *,
             tckd_weight, nckd_weight):
    """Decoupled KD (Zhao et al., CVPR 2022): (1 - alpha) CE(y, z_s) + alpha T^2 (a TCKD + b NCKD),
    batch mean, a = ``tckd_weight``, b = ``nckd_weight``. At temperature T, TCKD is the KL from the
    target's binary distribution [p(y), 1 - p(y)] to the student's, NCKD the KL between their
    distributions over the other classes, each renormalised. In log space throughout: log p(y) =
    z_y / T - logsumexp(z / T), log(1 - p(y)) = logsumexp over the other classes minus the same,
    the renormalised distribution the log-softmax of the other classes alone, so that no
    probability that underflows (p(y) = 1 in float32) is ever taken the log of.
    ``sample_weights`` scale each sample's distillation term, as in kd_loss."""
    import torch

    ce = cross_entropy(student_logits, labels)
    classes = student_logits.shape[-1]
    y = labels.reshape(-1, 1)
    step = torch.arange(classes - 1, device=y.device)
    others = step + (step >= y)  # per sample, the classes other than its label, in order

    def parts(logits):
        scaled = logits.reshape(-1, classes) / temperature
        everything = torch.logsumexp(scaled, -1)
        rest = scaled.gather(-1, others)
        beside = torch.logsumexp(rest, -1)
        binary = torch.stack([scaled.gather(-1, y).squeeze(-1) - everything,
                              beside - everything], -1)
        return binary, rest - beside[:, None]

    binary_s, rest_s = parts(student_logits)
    binary_t, rest_t = parts(target_logits)
    tckd = (binary_t.exp() * (binary_t - binary_s)).sum(-1)
    nckd = (rest_t.exp() * (rest_t - rest_s)).sum(-1)
    per_sample = tckd_weight * tckd + nckd_weight * nckd
    if sample_weights is not None:
        per_sample = per_sample * sample_weights.reshape(-1)
    return (1 - alpha) * ce + alpha * temperature ** 2 * per_sample.mean(-1)


# --- entries ------------------------------------------------------------------------------------

REFERENCE = "siddo"  # the same-init, different-data-order control every method is compared with


@dataclass(frozen=True)
class Method:
    name: str
    target: str
    loss: object                    # a function of the losses' signature, or "file.py:function"
    control: str | None = None      # the method's random control (same loss, noise targets)
    uses_alpha: bool = True
    uses_temperature: bool = True
    masked: bool = False
    option: str | None = None       # the config section that enables it; None: always trained
    section: dict | None = None     # that section's JSON schema, where this entry defines it
    settings: tuple = ()            # keys of the section each student carries (and digests)
    loss_settings: tuple = ()       # of those, the keywords the loss takes
    comparisons: tuple = ()         # (name, first method, second method), first = effect's side
    claim: tuple | None = None      # (NOT_BELOW or NO_DIFFERENCE, the other method)
    figure: str | None = None       # STANDARD_FIGURES, or a figure of its own (kdpipe.plan)
    fuse: bool = True               # its loss works under vmap: it may train in a stacked group
    config_key: str | None = None   # where a user's method is declared (its errors name it)

    @property
    def uses_teacher(self) -> bool:
        return self.target.startswith("teacher")

    @property
    def uses_noise(self) -> bool:
        return self.target in NOISE_TARGETS

    @property
    def uses_stage(self) -> bool:
        return self.target in STAGE_TARGETS

    @property
    def depends_on_teacher(self) -> bool:
        """Whether its students learn from the trained teacher: its logits or stage output, the
        shape of its stage, or its correctness (masking)."""
        return self.uses_teacher or self.uses_stage or self.masked

    @property
    def teacher_free(self) -> bool:
        """Trained without a target: it depends on the teacher only through theta0, so teachers
        of a setup sharing a teacher seed share its students."""
        return self.target == "none"

    @property
    def user_loss(self) -> bool:
        """Whether the loss is a user's, named by "file.py:function"."""
        return isinstance(self.loss, str)


def versus(first: str, second: str) -> tuple:
    """The comparison of ``first`` against ``second``: (its name, first, second)."""
    return (f"{first}_vs_{second}", first, second)


def standard_comparisons(name: str, control: str) -> tuple:
    """A method against the reference and its control, and the control against the reference."""
    return (versus(name, REFERENCE), versus(name, control), versus(control, REFERENCE))


def enabling(description: str, **properties) -> dict:
    """The JSON schema of a method's config section: ``enabled`` (default false), ``properties``."""
    return {"description": description, "type": "object", "additionalProperties": False,
            "default": {}, "properties": {"enabled": {"type": "boolean", "default": False},
                                          **properties}}


# The noise logits of every noise target: the random control's options (docs/protocol.md
# section 1), a config section of their own shared by every control.
NOISE_OPTIONS = "rcd"
NOISE_SECTION = {
    "description": "the random control's noise logits (docs/protocol.md section 1)",
    "type": "object", "additionalProperties": False, "default": {},
    "properties": {"distribution": {"enum": ["uniform", "gaussian"], "default": "uniform"},
                   "resample": {"enum": ["step", "fixed"], "default": "step"}}}

KD_MASKED_SECTION = enabling(
    "our addition, not the paper's: also train kd-masked (the KD term kept only on training "
    "samples the teacher classifies correctly) and its random control rcd-masked, per (alpha, T, "
    "width, seed), on the same batches as each other",
    mode={"description": "samples: weight the KD term of each training sample the teacher gets "
                         "wrong by incorrect_weight; classes: on every sample, multiply the "
                         "target's mass on the classes other than the true one by "
                         "incorrect_weight and renormalise",
          "enum": ["samples", "classes"], "default": "samples"},
    incorrect_weight={"description": "the weight of the teacher's errors (samples) or "
                                     "wrong-class mass (classes); classes with weight 0 is "
                                     "refused: its target is one-hot on the label, so "
                                     "kd-masked, rcd-masked and siddo would all be plain "
                                     "cross-entropy",
                      "type": "number", "minimum": 0, "maximum": 1, "default": 0})
FEATURE_MATCHING_SECTION = enabling(
    "also train fm (CE plus alpha times the MSE between the student's and the teacher's output "
    "of a named stage, through a 1x1 convolution or linear map where the widths differ) and its "
    "random control fm-rcd (noise targets of that shape), per (alpha, width, seed); the stage is "
    "each setup's fm_stage, by default the last stage before the head")
LS_SECTION = enabling(
    "our addition: also train ls, label smoothing at the study's alpha (the kd loss with the "
    "teacher's distribution replaced by the uniform one), per (alpha, T, width, seed), on the "
    "same batches as kd, rcd and siddo: is rcd's effect label smoothing's?")
DKD_SECTION = enabling(
    "also train dkd, Decoupled KD (Zhao et al., CVPR 2022): (1 - alpha) CE + alpha T^2 "
    "(tckd_weight TCKD + nckd_weight NCKD), and its random control dkd-rcd, per (alpha, T, "
    "width, seed), on the same batches as kd, rcd and siddo",
    tckd_weight={"description": "a, the weight of the target-class term (DKD's published 1.0)",
                 "type": "number", "minimum": 0, "default": 1.0},
    nckd_weight={"description": "b, the weight of the non-target-class term, which carries the "
                                "teacher's wrong-class mass (DKD's published 8.0)",
                 "type": "number", "minimum": 0, "default": 8.0})

# In the order of the figures' legends and colours (the palette's first colours go to the first).
REGISTRY = (
    Method("kd", "teacher", kd_loss, control="rcd",
           comparisons=standard_comparisons("kd", "rcd"), claim=(NOT_BELOW, "rcd"),
           figure=STANDARD_FIGURES),
    Method("rcd", "noise", kd_loss),
    Method("siddo", "none", cross_entropy, uses_alpha=False, uses_temperature=False),
    # ours, not the paper's: the KD term only where the teacher is right
    Method("kd-masked", "teacher", kd_loss, control="rcd-masked", masked=True,
           option="kd_masked", section=KD_MASKED_SECTION, settings=("mode", "incorrect_weight"),
           comparisons=(*standard_comparisons("kd-masked", "rcd-masked"),
                        versus("kd-masked", "kd")),
           figure="fig7_masked"),
    Method("rcd-masked", "noise", kd_loss, masked=True, option="kd_masked",
           settings=("mode", "incorrect_weight")),
    # FitNets-style matching of a named stage, and its random control
    Method("fm", "teacher-stage", stage_mse_loss, control="fm-rcd", uses_temperature=False,
           option="feature_matching", section=FEATURE_MATCHING_SECTION,
           comparisons=standard_comparisons("fm", "fm-rcd"), figure="fig8_fm"),
    Method("fm-rcd", "noise-stage", stage_mse_loss, uses_temperature=False,
           option="feature_matching"),
    # label smoothing: kd's loss towards the uniform distribution, a control of its own
    Method("ls", "uniform", kd_loss, option="ls", section=LS_SECTION,
           comparisons=(versus("ls", "rcd"), versus("ls", "siddo")), claim=(NO_DIFFERENCE, "rcd")),
    # Decoupled KD: does splitting off the non-target part change what is copied?
    Method("dkd", "teacher", dkd_loss, control="dkd-rcd", option="dkd", section=DKD_SECTION,
           settings=("tckd_weight", "nckd_weight"), loss_settings=("tckd_weight", "nckd_weight"),
           comparisons=(*standard_comparisons("dkd", "dkd-rcd"), versus("dkd", "kd")),
           claim=(NOT_BELOW, "dkd-rcd"), figure=STANDARD_FIGURES),
    Method("dkd-rcd", "noise", dkd_loss, option="dkd", settings=("tckd_weight", "nckd_weight"),
           loss_settings=("tckd_weight", "nckd_weight")),
)
# The paper's method and its random control: what figures 5 and 6 show, and the figures and
# audit whose file names carry no method's name.
LEAD = "kd"
# A user's method's random control is named after it: "<name>-rcd".
CONTROL_SUFFIX = "-rcd"


# --- a researcher's own methods -----------------------------------------------------------------

class MethodError(ValueError):
    """A user's method that cannot be used; ``key`` is its config key (``methods.<name>.loss``)."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}")
        self.key, self.problem = key, problem


def user_methods(name: str, definition: dict) -> tuple[Method, Method]:
    """A user's method (a config ``methods`` entry, filled with the schema's defaults) and its
    random control: the same loss with noise targets, named ``<name>-rcd``."""
    control = f"{name}{CONTROL_SUFFIX}"
    shared = {"loss": definition["loss"], "uses_alpha": definition["uses_alpha"],
              "uses_temperature": definition["uses_temperature"], "fuse": definition["fuse"],
              "config_key": f"methods.{name}"}
    return (Method(name, definition["target"], control=control,
                   comparisons=standard_comparisons(name, control), claim=(NOT_BELOW, control),
                   figure=STANDARD_FIGURES, **shared),
            Method(control, "noise", **shared))


def loss_parts(loss: str) -> tuple[Path, str]:
    """("file.py:function") -> (the file, relative to the working directory, and the function)."""
    path, _, function = loss.rpartition(":")
    return Path(path), function


def loss_source(loss: str) -> str:
    """A digest of the source of a user's loss file: in each of its students' digests, so that
    editing the file retrains the students of the methods that use it, and only those."""
    return hashlib.sha256(loss_parts(loss)[0].read_bytes()).hexdigest()[:16]


def check_loss_file(key: str, loss: str) -> None:
    """Raise MethodError unless ``loss`` ("file.py:function") names a Python file, relative to
    the working directory, that parses and binds ``function`` at its top level (a def, an
    assignment or an import). The file is read, not run: it imports torch."""
    path, function = loss_parts(loss)
    if not path.is_file():
        raise MethodError(key, f"loss file {str(path)!r} not found (paths are relative to the "
                               f"working directory, here {Path.cwd()})")
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except SyntaxError as error:
        raise MethodError(key, f"loss file {str(path)!r} is not valid Python: {error.msg} "
                               f"(line {error.lineno})") from None
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
    if function not in names:
        defined = ", ".join(sorted(n for n in names if not n.startswith("_"))) or "nothing"
        raise MethodError(key, f"loss file {str(path)!r} defines no {function!r} at its top "
                               f"level (it defines: {defined})")


def load_loss(key: str, loss: str):
    """The function a user's ``loss`` ("file.py:function") names, its file imported (once per
    file); MethodError where it cannot be imported or the function is missing."""
    path, function = loss_parts(loss)
    where = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    module_name = f"kdpipe_user_loss_{where}"
    module = sys.modules.get(module_name)
    if module is None:
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or not path.is_file():
            raise MethodError(key, f"loss file {str(path)!r} not found (paths are relative to "
                                   f"the working directory, here {Path.cwd()})")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # where a dataclass or pickle looks its module up
        try:
            spec.loader.exec_module(module)
        except Exception as error:  # whatever the user's module raises while it is imported
            del sys.modules[module_name]
            raise MethodError(key, f"loss file {str(path)!r} cannot be imported: "
                                   f"{type(error).__name__}: {error}") from error
    found = getattr(module, function, None)
    if not callable(found):
        raise MethodError(key, f"loss file {str(path)!r} has no function {function!r}")
    return found


# --- a study's methods ----------------------------------------------------------------------------

class Registry:
    """The methods of a study: the built-in ones, then the user's (the config's ``methods``
    section, filled with the schema's defaults), each followed by its control."""

    def __init__(self, defined: dict | None = None):
        user = tuple(m for name, definition in (defined or {}).items()
                     for m in user_methods(name, definition))
        self.methods = REGISTRY + user
        self.by_name = {}
        for m in self.methods:
            if m.name in self.by_name:
                raise MethodError(m.config_key or m.name,
                                  f"method {m.name!r} is already defined; known: "
                                  f"{', '.join(self.by_name)}")
            self.by_name[m.name] = m
        self.order = tuple(self.by_name)
        self.distilled = tuple(name for name in self.order if name != REFERENCE)
        # the comparisons of each distillation method, asked for where it has students
        self.comparisons_of = {m.name: m.comparisons for m in self.methods if m.comparisons}
        # (kind, method, other method) of every claim
        self.claims = tuple((m.claim[0], m.name, m.claim[1]) for m in self.methods if m.claim)
        # the methods drawn as the leads of figures 1-4 and the audit, against their controls
        self.leads = tuple(m.name for m in self.methods if m.figure == STANDARD_FIGURES)
        self.sections = {m.option: m.section for m in self.methods if m.section}

    def method(self, name: str) -> Method:
        if name not in self.by_name:
            raise ValueError(f"unknown method {name!r}; known: {', '.join(self.order)}")
        return self.by_name[name]

    def enabled(self, config: dict) -> list[str]:
        """The methods a study trains: those always trained (the user's too) and those whose
        config section has ``enabled: true``, in registry order."""
        return [m.name for m in self.methods
                if m.option is None or config.get(m.option, {}).get("enabled", False)]

    def check(self) -> None:
        """Raise MethodError unless every user's loss file parses and defines its function."""
        for m in self.methods:
            if m.user_loss and m.control is not None:
                check_loss_file(f"{m.config_key}.loss", m.loss)


BUILT_IN = Registry()
METHODS = BUILT_IN.by_name
ORDER = BUILT_IN.order
DISTILLED = BUILT_IN.distilled
COMPARISONS_OF = BUILT_IN.comparisons_of
CLAIMS = BUILT_IN.claims
CONTROL = METHODS[LEAD].control
ALWAYS = tuple(m.name for m in REGISTRY if m.option is None)  # trained in every study
# Every config section of the built-in methods, with its schema (kdpipe.config adds them).
SECTIONS = {NOISE_OPTIONS: NOISE_SECTION, **BUILT_IN.sections}


def method(name: str) -> Method:
    return BUILT_IN.method(name)


def enabled(config: dict) -> list[str]:
    """The methods a (validated) config trains: built-in and the user's (``Registry.enabled``)."""
    return Registry(config.get("methods")).enabled(config)
