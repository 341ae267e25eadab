"""What a study costs before anything is trained (``kdpipe plan``, docs/planning.md): its jobs,
the arithmetic of its training, the device-hours that arithmetic takes on a calibrated device,
the disk it writes, and whether its Mann-Whitney tests can reach significance at all.

``estimate(config, calibration)`` returns a ``Plan``, plain data; ``report(plan)`` is the text
``kdpipe plan`` prints. The study's shape comes from kdpipe.plan.Study, the data sets' sizes from
their families' declared facts (kdpipe.data.facts), else a prepared file, else a look at a
researcher's own files (kdpipe.data.scan), else they are unknown until prepared and so are the
FLOPs, hours and disk that depend on them.

FLOPs are counted by torch.utils.flop_counter.FlopCounterMode on the meta device (shapes only, no
arithmetic): the forward and the backward pass of a training step of each (architecture, width,
input shape), on one batch. It counts matrix products, convolutions and attention, not
elementwise operations, normalisation, the loss or the optimizer step. Every counted operation
is linear in the batch, so the count of a batch of two, halved, is one sample's, and an epoch
costs that times the training samples: its last, partial batch counts as what it is. A language
model's windows are counted at 3 short lengths and the quadratic through them taken at the
context: exact for a cost that is a polynomial of degree at most 2 in the length (recurrent
layers, attention), and it spares counting a recurrent layer's steps one by one.

What a model costs: a teacher, its recipe's epochs (at most: with ``stop_at_train_loss`` it may
stop sooner; a teacher given by file is not trained); a student, the setup's recipe's epochs in
its own architecture (``student_arch``) and width, plus, for a target that runs the teacher
on every batch (kd and kd-masked under augmentation, fm), the teacher's forward pass (fm: up to
its stage) on each of its batches; and every model one forward pass over the train and the test
set after training (the train loss and the logits). siddo students a teacher shares are counted
once. Device-hours are FLOPs over the achieved training rate of the (architecture, width,
precision) a calibration measured (``measure_rate``): one job at a time on one device.
"""
from __future__ import annotations

import datetime
import functools
import json
import math
import sys
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from kdpipe import data, power
from kdpipe.plan import Study

RULES = ("prepare_data", "train_teacher", "train_block", "collect", "statistics", "figures",
         "audit", "all")
NPY_HEADER = 128  # bytes numpy writes before an array of this project's shapes
# torch.save's bytes beside a state dict's tensor data: a zip of a pickle and one entry per
# tensor (measured on this project's models: about 1.5 KB, and 300-470 bytes per tensor)
SAVE_BYTES, SAVE_BYTES_PER_TENSOR = 2048, 512
# the small JSON files beside a model's logits (measured on a digits study): a student's
# row.json is about 860 bytes and 6 per class (copied_by_class), a teacher's less; timing.json
# 40 bytes; history.json 145 bytes an epoch
ROW_BYTES, ROW_BYTES_PER_CLASS, TIMING_BYTES, HISTORY_BYTES_PER_EPOCH = 860, 6, 40, 145
DATA_STEPS, MAX_STEPS = 50, 20_000  # a calibration's random batches, and its most steps
CPU_STEP_FLOPS = 4e9  # --calibrate-here: a batch whose step is about this, or the recipe's
SEQUENCE_LENGTHS = (1, 2, 3)  # the short lengths a language model is counted at
COUNT_BATCH = 2  # the batch FLOPs are counted on: every counted operation is linear in it
PARTS = ("teachers", "students", "teacher passes", "evaluation")  # what the FLOPs are of


class PlanError(ValueError):
    """A calibration file that cannot be read or used; the message names the file and the key."""


# --- arithmetic of one model ---------------------------------------------------------------------

@dataclass(frozen=True)
class Arithmetic:
    """FLOPs of one sample through a model of one (architecture, width, input shape): ``forward``
    and ``backward`` of a training step (FlopCounterMode); the bytes of its saved state dict
    (parameters and buffers, as torch.save writes them), of its parameters, and their tensors."""
    forward: float
    backward: float
    state_bytes: int
    parameter_bytes: int
    parameter_tensors: int


def _batch(input_shape: tuple, dtype: str, classes: int, batch: int):
    """A meta tensor of ``batch`` inputs: character indices or values."""
    import torch

    if dtype == "int64":
        return torch.zeros((batch, *input_shape), dtype=torch.long, device="meta")
    return torch.zeros((batch, *input_shape), device="meta")


def _per_sample(count, input_shape: tuple, dtype: str, batch: int) -> tuple:
    """``count(input_shape)`` (a tuple of FLOPs of one batch) per sample; for a language model's
    windows the quadratic through ``SEQUENCE_LENGTHS`` taken at the context (module docstring)."""
    if dtype != "int64":
        return tuple(Fraction(v, batch) for v in count(input_shape))
    (context,) = input_shape
    points = [count((length,)) for length in SEQUENCE_LENGTHS]
    result = []
    for values in zip(*points):  # Lagrange's form of the quadratic through the three points
        total = Fraction(0)
        for i, (x_i, y_i) in enumerate(zip(SEQUENCE_LENGTHS, values)):
            term = Fraction(y_i)
            for j, x_j in enumerate(SEQUENCE_LENGTHS):
                if j != i:
                    term *= Fraction(context - x_j, x_i - x_j)
            total += term
        result.append(total / batch)
    return tuple(result)


@functools.cache
def arithmetic(arch: str, input_shape: tuple, dtype: str, classes: int,
               width: float) -> Arithmetic:
    """The ``Arithmetic`` of ``arch`` at ``width`` on inputs of ``input_shape`` and ``dtype``,
    counted on one batch of ``COUNT_BATCH`` on the meta device."""
    batch = COUNT_BATCH
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from kdpipe import models

    with torch.device("meta"):
        model = models.build(arch, input_shape, classes, width).train()

    def count(shape):
        with FlopCounterMode(display=False) as forward:
            out = model(_batch(shape, dtype, classes, batch))
        with FlopCounterMode(display=False) as backward:
            out.float().sum().backward()
        model.zero_grad(set_to_none=True)
        return forward.get_total_flops(), backward.get_total_flops()

    forward, backward = _per_sample(count, input_shape, dtype, batch)
    state = model.state_dict()
    parameters = list(model.parameters())
    return Arithmetic(
        float(forward), float(backward),
        state_bytes=SAVE_BYTES + sum(t.numel() * t.element_size() + SAVE_BYTES_PER_TENSOR
                                     for t in state.values()),
        parameter_bytes=sum(p.numel() * p.element_size() for p in parameters),
        parameter_tensors=len(parameters))


@functools.cache
def stage_forward(arch: str, input_shape: tuple, dtype: str, classes: int,
                  stage: str | None) -> float:
    """FLOPs of one sample's forward pass of the width-1 model up to ``stage`` (None: the last
    stage before the head), what fm's target costs on every batch."""
    batch = COUNT_BATCH
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from kdpipe import models
    from kdpipe.jobs import last_stage
    from kdpipe.train import staged_forward

    with torch.device("meta"):
        model = models.build(arch, input_shape, classes, 1.0).eval()
    stage = stage or last_stage(model)

    def count(shape):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            staged_forward(model, stage, _batch(shape, dtype, classes, batch), stop=True)
        return (counter.get_total_flops(),)

    return float(_per_sample(count, input_shape, dtype, batch)[0])


def optimizer_bytes(recipe: dict, cost: Arithmetic) -> int:
    """The optimizer state a checkpoint keeps per model: Adam's and AdamW's two moments (and a
    step count per parameter tensor), SGD's momentum buffer (none without momentum)."""
    if recipe["optimizer"] in ("adam", "adamw"):
        return 2 * cost.parameter_bytes + cost.parameter_tensors * (4 + 2 * SAVE_BYTES_PER_TENSOR)
    if recipe["momentum"] > 0:
        return cost.parameter_bytes + cost.parameter_tensors * SAVE_BYTES_PER_TENSOR
    return 0


# --- calibration: achieved training FLOP/s ------------------------------------------------------

@dataclass(frozen=True)
class Need:
    """A rate a study needs: training ``arch`` at ``width`` in ``precision`` on inputs of its
    setup's shape, at its recipe's batch size."""
    arch: str
    width: float
    precision: str
    input_shape: tuple
    dtype: str
    classes: int
    batch_size: int

    @property
    def key(self) -> tuple:
        return self.arch, self.width, self.precision


@dataclass(frozen=True)
class Calibration:
    """Achieved training FLOP/s per (architecture, width, precision) on one device, and where
    they come from: ``rates`` maps that key to a dict of ``flops_per_second``, ``batch_size``,
    ``input_shape``, ``steps`` and ``seconds``; ``learners`` trained together in each
    measurement (the engine's own fusion choice)."""
    device: str
    torch: str
    cuda: str | None
    date: str
    command: str
    learners: int
    rates: dict
    source: str = "measured here"

    def to_json(self) -> dict:
        return {"device": self.device, "torch": self.torch, "cuda": self.cuda, "date": self.date,
                "command": self.command, "learners": self.learners,
                "rates": [{"arch": a, "width": w, "precision": p, **rate}
                          for (a, w, p), rate in self.rates.items()]}


def load_calibration(path) -> Calibration:
    """A calibration file (benchmarks/bench_device.py --calibrate); PlanError names the file and
    what is wrong with it."""
    path = Path(path)
    try:
        found = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PlanError(f"calibration file {path} cannot be read ({error}); write it with "
                        "python benchmarks/bench_device.py --calibrate FILE") from None
    keys = ("device", "torch", "cuda", "date", "command", "learners", "rates")
    missing = [key for key in keys if not isinstance(found, dict) or key not in found]
    if missing:
        raise PlanError(f"calibration file {path} lacks {', '.join(missing)}; write it with "
                        "python benchmarks/bench_device.py --calibrate FILE")
    rates = {}
    for i, rate in enumerate(found["rates"]):
        try:
            key = (rate["arch"], float(rate["width"]), rate["precision"])
            speed = float(rate["flops_per_second"])
        except (KeyError, TypeError, ValueError) as error:
            raise PlanError(f"calibration file {path}: rates[{i}] lacks or garbles {error}; "
                            "each rate has arch, width, precision and flops_per_second") from None
        if not math.isfinite(speed) or speed <= 0:
            raise PlanError(f"calibration file {path}: rates[{i}] has flops_per_second {speed}; "
                            "expected a positive number")
        rates[key] = {k: v for k, v in rate.items() if k not in ("arch", "width", "precision")}
    return Calibration(**{key: found[key] for key in keys[:-1]}, rates=rates, source=str(path))


def measure_rate(need: Need, device: str, learners: int = 1, seconds: float = 2.0,
                 max_step_flops: float | None = None) -> dict:
    """Train ``learners`` models of ``need`` together on random inputs of its shape on
    ``device`` (kdpipe.train.train, as a job does, the engine choosing whether to fuse them) and
    return the achieved training FLOP/s (``arithmetic``'s forward and backward) with how it was
    measured: a warm-up of 2 steps (not timed: it builds kernels and plans), then as many steps
    as about ``seconds`` take (run again, rescaled, while a run takes less than half of it).
    ``max_step_flops``: a smaller batch than the recipe's where one model's step would exceed
    it (a CPU measuring in seconds what a GPU trains)."""
    import torch

    from kdpipe import config, models
    from kdpipe.train import Learner, Recipe, generator, train

    cost = arithmetic(need.arch, need.input_shape, need.dtype, need.classes, need.width)
    per_sample = cost.forward + cost.backward
    batch = need.batch_size
    if max_step_flops is not None:
        batch = max(2, min(batch, int(max_step_flops // per_sample)))
    g = generator(0, device)

    def data(steps):
        n = batch * steps
        if need.dtype == "int64":
            x = torch.randint(0, need.classes, (n, *need.input_shape), generator=g, device=device)
            y = torch.randint(0, need.classes, (n, *need.input_shape), generator=g, device=device)
        else:
            x = torch.randn(n, *need.input_shape, generator=g, device=device)
            y = torch.randint(0, need.classes, (n,), generator=g, device=device)
        return x, y

    def models_(k):
        built = []
        for seed in range(k):
            model = models.build(need.arch, need.input_shape, need.classes, need.width)
            models.init_parameters(model, generator(seed, "cpu"))
            built.append(Learner("calibration", model.to(device), order_seed=seed))
        return built

    x, y = data(DATA_STEPS)

    def timed(steps):
        """Seconds of ``steps`` steps: one epoch of them, or whole epochs of DATA_STEPS (steps
        is then a multiple of it); returns (steps, seconds)."""
        epochs = 1 if steps <= DATA_STEPS else math.ceil(steps / DATA_STEPS)
        per_epoch = steps if epochs == 1 else DATA_STEPS
        recipe = Recipe(**config.recipe(epochs=epochs, batch_size=batch,
                                        precision=need.precision))
        n = batch * per_epoch
        return epochs * per_epoch, train(models_(learners), x[:n], y[:n], recipe)

    steps, elapsed = timed(2)  # the warm-up
    steps, elapsed = timed(min(MAX_STEPS, max(2, math.ceil(steps * seconds / elapsed))))
    while elapsed < seconds / 2 and steps < MAX_STEPS:
        steps, elapsed = timed(min(MAX_STEPS, math.ceil(steps * seconds / max(elapsed, 1e-3))))
    return {"flops_per_second": learners * per_sample * batch * steps / elapsed,
            "batch_size": batch, "input_shape": list(need.input_shape), "steps": steps,
            "seconds": round(elapsed, 3)}


def calibrate(needs, device: str, learners: int = 1, seconds: float = 2.0,
              max_step_flops: float | None = None, command: str = "", log=None) -> Calibration:
    """A ``Calibration`` of every distinct (architecture, width, precision) of ``needs`` on
    ``device`` (``measure_rate``); ``log(line)`` is told each rate as it is measured."""
    import torch

    rates = {}
    for need in needs:
        if need.key in rates:
            continue
        rates[need.key] = measure_rate(need, device, learners, seconds, max_step_flops)
        if log is not None:
            rate = rates[need.key]
            log(f"{need.arch} width {need.width:g} {need.precision}: "
                f"{rate['flops_per_second'] / 1e9:.1f} GFLOP/s (batch {rate['batch_size']}, "
                f"{rate['steps']} steps in {rate['seconds']:.2f} s)")
    kind = torch.device(device).type
    name = (torch.cuda.get_device_name(torch.device(device)) if kind == "cuda"
            else f"CPU, {torch.get_num_threads()} thread(s)")
    return Calibration(device=name, torch=torch.__version__,
                       cuda=torch.version.cuda if kind == "cuda" else None,
                       date=datetime.datetime.now(datetime.timezone.utc).isoformat(
                           timespec="seconds"),
                       command=command or " ".join(sys.argv), learners=learners, rates=rates)


# --- the plan -----------------------------------------------------------------------------------

@dataclass
class DataPlan:
    """A data set of the study: its ``Facts`` (None: unknown until prepared), where they come
    from, and the bytes of its prepared file and test labels."""
    name: str
    family: str
    facts: data.Facts | None
    source: str
    bytes: int | None


@dataclass
class SetupPlan:
    """One setup: its jobs, students and what training them costs. ``students``: per method, the
    students of one teacher; ``trained``: per method, the students the study trains for all its
    teachers (a shared siddo student once). ``flops`` (per part of ``PARTS``), ``hours``,
    ``disk`` (per part, bytes) and ``checkpoint`` (the largest training job's) are None where
    the data set is unknown until prepared; ``hours`` also where the calibration lacks a rate
    (``missing_rates`` names them)."""
    name: str
    dataset: str
    arch: str
    teachers: list
    blocks: int
    students: dict
    trained: dict
    flops: dict | None = None
    stops_early: bool = False
    hours: float | None = None
    missing_rates: list = field(default_factory=list)
    disk: dict | None = None
    checkpoint: int | None = None


@dataclass
class PowerPlan:
    """The statistics' best case: ``table`` holds one row per planned Mann-Whitney test (setup,
    teacher_id, alpha, temperature, width, metric, comparison, n1, n2, p_min, its best case
    after the correction, testable), the rows kdpipe.stats.compare_methods gives a finished
    study where every metric has values; ``warning`` is kdpipe.power.seeds_warning's."""
    level: float
    correction: str
    table: object  # pandas.DataFrame
    warning: str | None
    fewest_seeds: int
    seeds: int

    @property
    def tests(self) -> int:
        return len(self.table)


@dataclass
class Plan:
    """Everything ``kdpipe plan`` prints about a study (``report``)."""
    jobs: dict
    setups: list
    data: list
    power: PowerPlan
    keep_student_weights: bool
    calibration: Calibration | None


def job_counts(study: Study) -> dict:
    """The jobs of each rule of the workflow (workflow/rules/) that a study with nothing done
    runs: one prepare_data per data set the setups use, one train_teacher per teacher, one
    train_block per block of each teacher, and one of each later step."""
    jobs = {"prepare_data": len({study.dataset_of(s) for s in study.setups}),
            "train_teacher": len(study.teachers), "train_block": len(study.manifests())}
    return {rule: jobs.get(rule, 1) for rule in RULES}


def dataset_plan(study: Study, name: str) -> DataPlan:
    """A data set's facts: declared by its family, else read from its prepared file, else from a
    look at its raw files, else unknown until prepared."""
    entry = study.config["datasets"][name]
    family, options = entry["family"], entry["options"]
    found, source = data.facts(family, options), "declared by its family"
    prepared = Path(study.data_files(name)["data"])
    if found is None and prepared.is_file():
        found, source = data.prepared_facts(prepared), f"read from {prepared}"
    if found is None:
        raw = study.raw_dir(name)
        found, source = data.scan(family, options, raw), f"counted in {raw}"
    if found is None:
        return DataPlan(name, family, None, "unknown until prepared", None)
    itemsize = {"uint8": 1, "float32": 4, "int64": 8}[found.dtype]
    samples = found.train + found.test
    size = (samples * math.prod(found.input_shape) * itemsize  # inputs
            + samples * found.positions * 8  # int64 labels
            + SAVE_BYTES + 4 * SAVE_BYTES_PER_TENSOR  # torch.save's, for 4 tensors
            + found.test * found.positions * 8 + NPY_HEADER)  # the test labels' .npy
    return DataPlan(name, family, found, source, size)


def trained_students(study: Study, setup: str, teacher: str) -> list:
    """The (width, student) pairs a teacher's blocks train: all, but siddo where another teacher
    of the setup trains it (kdpipe.plan.Study.siddo_owner)."""
    shared = study.siddo_owner(setup, teacher) != teacher
    return [(width, s) for width, students in study.blocks[setup].values() for s in students
            if not (shared and study.registry.method(s["method"]).teacher_free)]


def rate_needs(config: dict) -> list:
    """Every rate (``Need``) a study's estimate of hours uses: per setup with known data, its
    teachers' (architecture at width 1, each teacher's precision: training or, for a teacher
    given by file, its evaluation) and its students' (architecture, width, precision), at the
    recipes' batch sizes."""
    study = Study(config)
    needs = []
    for setup in study.setups:
        found = dataset_plan(study, study.dataset_of(setup)).facts
        if found is None:
            continue
        entry = config["setups"][setup]
        models = [(entry["arch"], 1.0, study.teacher_recipe(setup, t)) for t in entry["teachers"]]
        models += [(study.student_arch(setup), float(w), entry["recipe"])
                   for w in study.widths_of(setup)]
        for arch, width, recipe in models:
            need = Need(arch, width, recipe["precision"], tuple(found.input_shape), found.dtype,
                        found.classes, recipe["batch_size"])
            if need not in needs:
                needs.append(need)
    return needs


def setup_plan(study: Study, setup: str, found: data.Facts | None,
               calibration: Calibration | None) -> SetupPlan:
    """A setup's ``SetupPlan`` from its data set's facts (None: unknown until prepared)."""
    config = study.config
    entry = config["setups"][setup]
    teachers = list(entry["teachers"])
    trained = Counter(s["method"] for teacher in teachers
                      for _, s in trained_students(study, setup, teacher))
    teacher_arch, student_arch = entry["arch"], study.student_arch(setup)
    arch = teacher_arch if student_arch == teacher_arch else f"{teacher_arch} -> {student_arch}"
    plan = SetupPlan(setup, study.dataset_of(setup), arch, teachers, len(study.blocks[setup]),
                     dict(Counter(s["method"] for s in study.students(setup))), dict(trained))
    if found is None:
        return plan
    shape, classes = tuple(found.input_shape), found.classes

    def cost(arch, width):
        return arithmetic(arch, shape, found.dtype, classes, float(width))

    work = []  # (part, architecture, width, precision, FLOPs)
    evaluated = found.train + found.test
    plan.stops_early = entry["recipe"]["stop_at_train_loss"] is not None
    own = cost(teacher_arch, 1.0)
    for teacher in teachers:
        recipe = study.teacher_recipe(setup, teacher)
        if study.given(setup, teacher) is None:  # a teacher given by file is not trained
            plan.stops_early |= recipe["stop_at_train_loss"] is not None
            work.append(("teachers", teacher_arch, 1.0, recipe["precision"],
                         (own.forward + own.backward) * found.train * recipe["epochs"]))
        work.append(("evaluation", teacher_arch, 1.0, recipe["precision"],
                     own.forward * evaluated))
    recipe = entry["recipe"]
    precision, steps = recipe["precision"], found.train * recipe["epochs"]  # one student's
    augmented = recipe["augment"] != "none"
    for teacher in teachers:
        for width, student in trained_students(study, setup, teacher):
            mine = cost(student_arch, width)
            work.append(("students", student_arch, float(width), precision,
                         (mine.forward + mine.backward) * steps))
            work.append(("evaluation", student_arch, float(width), precision,
                         mine.forward * evaluated))
            target = study.registry.method(student["method"]).target
            if target == "teacher" and augmented:
                work.append(("teacher passes", teacher_arch, 1.0, precision,
                             own.forward * steps))
            elif target == "teacher-stage":
                work.append(("teacher passes", teacher_arch, 1.0, precision,
                             steps * stage_forward(teacher_arch, shape, found.dtype, classes,
                                                   student.get("stage"))))
    plan.flops = {part: sum(w[-1] for w in work if w[0] == part) for part in PARTS}
    if calibration is not None:
        missing = sorted({(a, w, p) for _, a, w, p, _ in work
                          if (a, w, p) not in calibration.rates})
        plan.missing_rates = [f"{a} width {w:g} {p}" for a, w, p in missing]
        if not missing:
            plan.hours = sum(f / calibration.rates[(a, w, p)]["flops_per_second"]
                             for _, a, w, p, f in work) / 3600
    plan.disk, plan.checkpoint = setup_disk(study, setup, found, cost)
    return plan


def setup_disk(study: Study, setup: str, found: data.Facts, cost):
    """(bytes per part, bytes of the largest training job's checkpoint) of a setup: logits
    (float32 [N, C], a teacher's also on the train set), the teachers' weights (init.pt where
    it has one, model.pt), the students' weights were they kept (keep_student_weights), the
    small files (rows, timings, histories); the checkpoint holds its models' weights and
    optimizer state. ``cost(arch, width)`` is their ``Arithmetic``."""
    entry = study.config["setups"][setup]
    recipe, student_arch = entry["recipe"], study.student_arch(setup)
    classes, epochs = found.classes, recipe["epochs"]
    test_logits = found.test * found.positions * classes * 4 + NPY_HEADER
    train_logits = found.train * found.positions * classes * 4 + NPY_HEADER
    small = ROW_BYTES + ROW_BYTES_PER_CLASS * classes + TIMING_BYTES
    disk = {"logits": 0, "teacher weights": 0, "student weights": 0, "rows and histories": 0}
    checkpoint, every = 0, study.config["checkpoint_every"]
    own = cost(entry["arch"], 1.0)
    for teacher in entry["teachers"]:
        teacher_recipe, given = study.teacher_recipe(setup, teacher), study.given(setup, teacher)
        disk["logits"] += test_logits + train_logits
        disk["rows and histories"] += small
        if given is None:
            disk["teacher weights"] += 2 * own.state_bytes  # init.pt and model.pt
            disk["rows and histories"] += HISTORY_BYTES_PER_EPOCH * teacher_recipe["epochs"]
            if 0 < every < teacher_recipe["epochs"]:  # saved after an epoch but the last
                checkpoint = max(checkpoint,
                                 own.state_bytes + optimizer_bytes(teacher_recipe, own))
        else:  # its copies: model.pt, and init.pt where its initial weights are given
            disk["teacher weights"] += (1 + ("init" in given)) * own.state_bytes
        own_students = trained_students(study, setup, teacher)
        shared = len(study.students(setup)) - len(own_students)
        disk["rows and histories"] += ROW_BYTES * shared  # rows of the owner's siddo
        for width, _ in own_students:
            disk["logits"] += test_logits
            disk["student weights"] += cost(student_arch, width).state_bytes
            disk["rows and histories"] += small + HISTORY_BYTES_PER_EPOCH * epochs
        for width, students in study.blocks[setup].values() if 0 < every < epochs else ():
            student = cost(student_arch, width)
            checkpoint = max(checkpoint, len(students) * (student.state_bytes
                                                          + optimizer_bytes(recipe, student)))
    return disk, checkpoint


def power_plan(study: Study) -> PowerPlan:
    """The planned Mann-Whitney tests (``PowerPlan``): per (setup, teacher, width) and lead
    method with comparisons (kdpipe.methods), per (alpha, T) group of its students and
    comparison, the seeds of each side, for every tested metric; their smallest p
    (kdpipe.power.min_p) and its best case after the correction over all of them, as
    kdpipe.stats.compare_methods computes them for a finished study."""
    import pandas as pd

    from kdpipe.stats import adjust_pvalues

    config = study.config
    rows = []
    for setup in study.setups:
        seeds = {}  # (method, width, alpha, T) -> seeds
        for width, students in study.blocks[setup].values():
            for s in students:
                key = (s["method"], float(width), s.get("alpha"), s.get("temperature"))
                seeds.setdefault(key, set()).add(s["seed"])

        def side(name, width, alpha, temperature):
            m = study.registry.method(name)
            return len(seeds.get((name, width, alpha if m.uses_alpha else None,
                                  temperature if m.uses_temperature else None), ()))

        for teacher in config["setups"][setup]["teachers"]:
            for (lead, width, alpha, temperature) in seeds:
                for comparison, first, second in study.registry.comparisons_of.get(lead, ()):
                    n1 = side(first, width, alpha, temperature)
                    n2 = side(second, width, alpha, temperature)
                    if n1 and n2:
                        rows += [{"setup": setup, "teacher_id": f"{setup}/{teacher}",
                                  "alpha": alpha, "temperature": temperature, "width": width,
                                  "metric": metric, "comparison": comparison, "n1": n1, "n2": n2}
                                 for metric in config["stats"]["metrics"]]
    table = pd.DataFrame(rows, columns=["setup", "teacher_id", "alpha", "temperature", "width",
                                        "metric", "comparison", "n1", "n2"])
    table = table.astype({"alpha": "float64", "temperature": "float64"})
    level, correction = config["stats"]["level"], config["stats"]["correction"]
    table["p_min"] = [power.min_p(a, b) for a, b in zip(table["n1"], table["n2"])]
    table["p_min_adjusted"] = adjust_pvalues(table["p_min"].to_numpy(), correction)
    table["testable"] = table["p_min_adjusted"].to_numpy() < level
    table["level"] = float(level)
    n = len(config["seeds"])
    return PowerPlan(level, correction, table, power.seeds_warning(config),
                     power.fewest_seeds(level, correction, max(1, len(table))), n)


def estimate(config: dict, calibration: Calibration | None = None) -> Plan:
    """The ``Plan`` of a validated, filled config (kdpipe.config.load), with device-hours where
    a ``calibration`` has the rates. Paths (the results folder, the raw data) are relative to
    the current folder, as the workflow's are."""
    study = Study(config)
    datasets = {name: dataset_plan(study, name)
                for name in dict.fromkeys(study.dataset_of(s) for s in study.setups)}
    setups = [setup_plan(study, s, datasets[study.dataset_of(s)].facts, calibration)
              for s in study.setups]
    return Plan(job_counts(study), setups, list(datasets.values()), power_plan(study),
                config["keep_student_weights"], calibration)


# --- the report ---------------------------------------------------------------------------------

def flops_text(value: float) -> str:
    """FLOPs with an SI prefix and 3 significant digits: 1.23 PFLOP."""
    for prefix, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if value >= scale:
            return f"{value / scale:.3g} {prefix}FLOP"
    return f"{value:.3g} FLOP"


def bytes_text(value: float) -> str:
    """Bytes in binary units with 3 significant digits: 1.23 GiB."""
    for prefix, scale in (("Ti", 2 ** 40), ("Gi", 2 ** 30), ("Mi", 2 ** 20), ("Ki", 2 ** 10)):
        if value >= scale:
            return f"{value / scale:.3g} {prefix}B" if value < 1000 * scale else \
                f"{value / scale:.0f} {prefix}B"
    return f"{value:.0f} B"


def hours_text(value: float) -> str:
    """Hours to 3 significant digits, whole hours from 100 on: 0.203, 12.5, 1,234."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _table(rows: list, columns: list, left=(0,)) -> str:
    """Rows of text as aligned columns under their headers, indented by two spaces: the columns
    numbered in ``left`` aligned left, the others right."""
    rows = [[str(v) for v in row] for row in [columns, *rows]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    return "\n".join("  " + "  ".join(v.ljust(w) if i in left else v.rjust(w)
                                       for i, (v, w) in enumerate(zip(row, widths))).rstrip()
                     for row in rows)


def report(plan: Plan, source: str = "") -> str:
    """The text ``kdpipe plan`` prints: jobs, setups, data sets, FLOPs and device-hours, disk
    and power, each explained in docs/planning.md."""
    setups, known = plan.setups, [s for s in plan.setups if s.flops is not None]
    students = sum(sum(s.trained.values()) for s in setups)
    counts = {"setup": len(setups), "data set": len(plan.data),
              "teacher": sum(len(s.teachers) for s in setups), "student": students}
    lines = [f"kdpipe plan{f' of {source}' if source else ''}: " + ", ".join(
                 f"{n:,} {name}{'s' if n != 1 else ''}" for name, n in counts.items())
             + " to train", "",
             "Jobs per rule (a dry run, snakemake -n, counts the same):",
             "  " + ", ".join(f"{rule} {n:,}" for rule, n in plan.jobs.items())
             + f"; total {sum(plan.jobs.values()):,}", ""]

    lines.append("Setups (students: per method, of each teacher; trained: of all teachers, a "
                 "shared siddo student once):")
    lines.append(_table([[s.name, s.dataset, s.arch, len(s.teachers),
                          s.blocks * len(s.teachers),
                          ", ".join(f"{m} {n}" for m, n in s.students.items()),
                          sum(s.trained.values())] for s in setups],
                        ["setup", "data set", "arch", "teachers", "train_block jobs",
                         "students", "trained"], left=(0, 1, 2, 5)))
    lines += ["", "Data sets (samples: windows for text, each of context positions):"]
    lines.append(_table([[d.name, d.family] + (
        [f"{d.facts.train:,}", f"{d.facts.test:,}", "x".join(map(str, d.facts.input_shape)),
         d.facts.dtype, d.facts.classes, bytes_text(d.bytes)] if d.facts else ["?"] * 6)
        + [d.source] for d in plan.data],
        ["data set", "family", "train", "test", "input", "dtype", "classes", "prepared",
         "facts"], left=(0, 1, 8)))

    lines += ["", "Training FLOPs (FlopCounterMode: matmuls, convolutions, attention; forward "
                  "and backward of every step, the teacher's forward where a student's target "
                  "runs it, and each model's forward over its train and test sets):"]
    calibration = plan.calibration
    rows = []
    for s in setups:
        if s.flops is None:
            rows.append([s.name] + ["unknown until prepared"] + [""] * 5)
            continue
        hours = (hours_text(s.hours) if s.hours is not None
                 else "no rate" if calibration is not None else "")
        rows.append([s.name + (" *" if s.stops_early else "")]
                    + [flops_text(s.flops[p]) if s.flops[p] else "-" for p in PARTS]
                    + [flops_text(sum(s.flops.values())), hours])
    total_hours = sum(s.hours for s in known) if all(s.hours is not None for s in known) else None
    rows.append(["total"] + [flops_text(sum(s.flops[p] for s in known))
                             if any(s.flops[p] for s in known) else "-" for p in PARTS]
                + [flops_text(sum(sum(s.flops.values()) for s in known)),
                   hours_text(total_hours) if total_hours is not None and calibration else ""])
    lines.append(_table(rows, ["setup", *PARTS, "total", "device-hours"]))
    if any(s.stops_early for s in setups):
        lines.append("  * a recipe with stop_at_train_loss: at most this, training may stop "
                     "sooner")
    if any(s.flops is None for s in setups):
        lines.append("  the total leaves out the setups whose data set is unknown until "
                     "prepared")
    if calibration is None:
        lines.append("  device-hours: none without a calibration (--device-profile FILE, "
                     "written by benchmarks/bench_device.py --calibrate FILE, or "
                     "--calibrate-here)")
    else:
        lines.append(f"  device-hours: one job at a time on {calibration.device} (torch "
                     f"{calibration.torch}, CUDA {calibration.cuda or 'none'}), at the training "
                     f"rates of {calibration.source}, measured {calibration.date} with "
                     f"{calibration.learners} model(s) per training call by: "
                     f"{calibration.command}")
        missing = sorted({m for s in setups for m in s.missing_rates})
        if missing:
            lines.append(f"  no rate for {', '.join(missing)}: calibrate them for those "
                         "setups' hours")

    lines += ["", "Disk (logits float32 [N, C]; weights as torch.save writes them):"]
    parts = ["logits", "teacher weights", "student weights", "rows and histories"]
    rows, totals = [], dict.fromkeys(parts, 0)
    for s in setups:
        if s.disk is None:
            rows.append([s.name, "unknown until prepared"] + [""] * 5)
            continue
        values = [s.disk[part] for part in parts]
        for part, value in zip(parts, values):
            totals[part] += value
        total = sum(values) - (0 if plan.keep_student_weights else s.disk["student weights"])
        rows.append([s.name] + [bytes_text(v) for v in values]
                    + [bytes_text(total), bytes_text(s.checkpoint) if s.checkpoint else "-"])
    prepared = sum(d.bytes for d in plan.data if d.bytes is not None)
    study_bytes = sum(totals.values()) - (0 if plan.keep_student_weights
                                          else totals["student weights"])
    rows.append(["total"] + [bytes_text(v) for v in totals.values()]
                + [bytes_text(study_bytes), bytes_text(max(
                    (s.checkpoint or 0 for s in setups), default=0))])
    lines.append(_table(rows, ["setup", *parts[:2],
                               "student weights" + ("" if plan.keep_student_weights
                                                    else " (not kept)"),
                               parts[3], "total", "largest checkpoint"]))
    lines.append(f"  prepared data sets: {bytes_text(prepared)}; in all "
                 f"{bytes_text(study_bytes + prepared)} (raw downloads, tables, figures and "
                 "logs not counted)")
    kept = plan.keep_student_weights
    lines.append(f"  keep_student_weights is {'on' if kept else 'off'}: the students' model.pt "
                 f"files {'take' if kept else 'would take'} "
                 f"{bytes_text(totals['student weights'])}")
    lines.append("  a running training job also keeps a checkpoint (weights and optimizer "
                 "state) until it ends: up to the largest one per job running at once")
    lines += ["", *power_lines(plan.power)]
    return "\n".join(lines)


def power_lines(found: PowerPlan) -> list:
    """The power section of the report: the tests, their smallest p, the cells that can never
    reach the level and the seeds that would."""
    from kdpipe.stats import untestable_summary

    table, level = found.table, found.level
    correction = power.CORRECTIONS[found.correction]
    cells = table.drop_duplicates(["teacher_id", "alpha", "temperature", "width", "comparison"])
    testable = int(cells["testable"].sum())
    corrected = ("no correction" if found.correction == "none"
                 else f"{correction} over all {found.tests:,} (stats.correction)")
    lines = [f"Power: {found.tests:,} Mann-Whitney tests ({len(cells):,} cells of setup, "
             f"teacher, width, alpha, T and comparison, times {table['metric'].nunique()} "
             f"metrics), level {level:g}, {corrected}"]
    sizes = table.groupby(["n1", "n2"], sort=True).agg(p_min=("p_min", "first"),
                                                       best=("p_min_adjusted", "min"),
                                                       tests=("p_min", "size"))
    for (n1, n2), row in sizes.iterrows():
        after = f", {row['best']:.2g} after {correction}" if found.correction != "none" else ""
        lines.append(f"  {n1} against {n2} seeds: smallest two-sided p 2/C({n1 + n2},{n1}) = "
                     f"{row['p_min']:.2g}{after} ({int(row['tests']):,} tests)")
    lines.append(f"  the paired Wilcoxon check of {found.seeds} seeds can reach at best "
                 f"2/2^{found.seeds} = {2 / 2 ** found.seeds:.2g}")
    if testable == len(cells):
        lines.append(f"  every cell can reach p < {level:g}; {found.fewest_seeds} seeds per "
                     "group are the fewest that could")
        return lines
    table = table.assign(p=table["p_min"])  # untestable_summary reads the tests with a p
    if found.correction != "none":
        table = table.assign(p_adjusted=table["p_min_adjusted"])
    summary = untestable_summary(table)
    lines.append(f"  {len(cells) - testable:,} of {len(cells):,} cells can never reach "
                 f"p < {level:g}, whatever the data:")
    lines += ["  " + line for line in summary[1:]]
    if testable == 0:
        banner = "!" * 78
        why = (found.warning or "").removeprefix("warning: ")
        lines += [banner, f"WARNING: this design cannot reach significance. {why[:1].upper()}"
                          f"{why[1:]}", banner]
    lines.append(f"  seeds per group needed for every cell: {found.fewest_seeds}")
    return [line for line in lines if line]
