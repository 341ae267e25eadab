"""The command line the workflow rules call: ``python -m kdpipe <step> --help``.

Each step reads its settings as one JSON ``--spec`` (the rule passes exactly the config values the
step depends on, so Snakemake reruns a step when, and only when, one of them changes) and writes
its outputs atomically. Heavy imports happen inside the steps: ``--help`` stays instant.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import sys
import time
from pathlib import Path

from kdpipe.data import DataError
from kdpipe.io import ResultError
from kdpipe.models import ARCHS

# Modules a fork server preloads so that jobs do not pay for importing them (kdpipe.server);
# torch._dynamo is what creating a torch optimizer first imports (about 1 s).
PRELOAD = ("torch", "torch._dynamo", "numpy", "kdpipe.train", "kdpipe.metrics", "kdpipe.data",
           *ARCHS.values())

# Student methods: siddo (cross-entropy only), kd and its random control rcd, our kd-masked
# (the KD term only where the teacher is right) with its control rcd-masked, and feature-map
# matching fm with its control fm-rcd (random targets of the stage's shape).
METHODS = ("siddo", "kd", "rcd", "kd-masked", "rcd-masked", "fm", "fm-rcd")

TEACHER_INIT, TEACHER_WEIGHTS = "init.pt", "model.pt"
TEST_LOGITS, TRAIN_LOGITS, ROW, TIMING = "logits.npy", "train_logits.npy", "row.json", "timing.json"


def spec_arg(text: str) -> dict:
    """A JSON object, given inline or as @path."""
    if text.startswith("@"):
        text = Path(text[1:]).read_text()
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"--spec is not valid JSON: {error}") from None
    if not isinstance(spec, dict):
        raise argparse.ArgumentTypeError("--spec must be a JSON object")
    return spec


def setup_torch(threads: int, device: str) -> str:
    import torch

    torch.set_num_threads(threads)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    found = {"cuda": torch.cuda.device_count(), "mps": int(torch.backends.mps.is_available())}
    kind, _, index = device.partition(":")
    if kind != "cpu" and int(index or 0) >= found[kind]:
        raise SystemExit(f"kdpipe: error: config device is {device!r}, but torch finds "
                         f"{found[kind]} {kind.upper()} device(s) here (torch {torch.__version__}, "
                         f"CUDA build: {torch.version.cuda}); set device: auto or cpu")
    return device


def relative(path, results: Path) -> str:
    return os.path.relpath(Path(path).resolve(), Path(results).resolve())


def recipe_of(spec: dict):
    from kdpipe.train import Recipe

    return Recipe(**spec["recipe"])


def checkpoint_of(args):
    """Periodic training state outside the job's outputs (Snakemake deletes those before a
    rerun), keyed by the spec so that a changed job never resumes an old run."""
    from kdpipe.train import Checkpoint

    if args.checkpoint_dir is None or args.checkpoint_every <= 0:
        return None
    spec = json.dumps(args.spec, sort_keys=True)
    digest = hashlib.sha256(spec.encode()).hexdigest()[:20]
    # re-prepared data or a retrained teacher invalidate the checkpoint
    inputs = [args.data] + ([Path(args.teacher) / TRAIN_LOGITS] if hasattr(args, "teacher") else [])
    fingerprint = [(str(p), os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in inputs]
    key = json.dumps([spec, fingerprint])
    return Checkpoint(args.checkpoint_dir / f"{args.step}-{digest}.pt", args.checkpoint_every, key)


def finish_checkpoint(args) -> None:
    checkpoint = checkpoint_of(args)
    if checkpoint is not None:
        checkpoint.path.unlink(missing_ok=True)


# --- steps -------------------------------------------------------------------------------------

def prepare_data(args) -> int:
    import numpy as np

    from kdpipe import data
    from kdpipe.io import write_npy

    data.acquire(args.spec["family"], args.spec["options"], args.raw_dir)
    prepared = data.prepare(args.spec["family"], args.spec["options"], args.raw_dir, args.out)
    write_npy(args.labels_out, prepared.y_test.numpy().reshape(-1).astype(np.int64))
    print(f"{args.spec['family']}: {len(prepared.y_train)} train, {len(prepared.y_test)} test "
          f"samples, {prepared.num_classes} classes, inputs {list(prepared.input_shape)}",
          file=sys.stderr)
    return 0


def train_teacher(args) -> int:
    from kdpipe import data, models
    from kdpipe.train import EpochLog, Learner, generator, seed_for, train

    spec, out = args.spec, Path(args.out)
    device = setup_torch(args.threads, args.device)
    dataset = data.load(args.data, device)
    model = models.build(spec["arch"], dataset.input_shape, dataset.num_classes, 1.0).to(device)
    models.init_parameters(model, generator(seed_for("teacher-init", spec["seed"]), device))
    save_state(model, out / TEACHER_INIT)
    recipe = recipe_of(spec)
    teacher = Learner("teacher", model, order_seed=seed_for("order", "teacher", spec["seed"]))
    seconds = train([teacher], dataset.x_train, dataset.y_train, recipe,
                    log=EpochLog(f"{spec['setup']} teacher", recipe.epochs),
                    checkpoint=checkpoint_of(args))
    save_state(model, out / TEACHER_WEIGHTS)
    write_model_outputs(args, spec, dataset, out, model, recipe, seconds, role="teacher")
    finish_checkpoint(args)
    return 0


def train_students(args) -> int:
    import copy

    import torch

    from kdpipe import data, models
    from kdpipe.train import (DownweightedClasses, EpochLog, FeatureMatch, Learner, RandomLogits,
                              TeacherFeatures, generator, seed_for, staged_forward, train)

    spec = args.spec
    outputs = dict(args.out)
    methods = spec["methods"]
    missing = [m["method"] for m in methods if m["method"] not in outputs]
    if missing:
        raise SystemExit(f"no --out given for method(s) {', '.join(missing)}")
    device = setup_torch(args.threads, args.device)
    dataset = data.load(args.data, device)
    teacher_dir = Path(args.teacher)
    width, seed = float(spec["width"]), int(spec["seed"])

    initial = models.build(spec["arch"], dataset.input_shape, dataset.num_classes, width).to(device)
    if width == 1.0:  # self-distillation: every student starts from the teacher's theta0
        initial.load_state_dict(torch.load(teacher_dir / TEACHER_INIT, map_location=device,
                                           weights_only=True))
    else:
        models.init_parameters(initial, generator(seed_for("init", width, seed), device))

    learners = []
    for m in methods:
        name, target, weights = m["method"], None, None
        if name not in METHODS:
            raise SystemExit(f"unknown method {name!r}; known: {', '.join(METHODS)}")
        if name in ("kd", "kd-masked"):
            target = teacher_target(spec, dataset, teacher_dir, device)
        elif name in ("rcd", "rcd-masked"):
            shape = (*dataset.y_train.shape[1:], dataset.num_classes)
            target = RandomLogits(len(dataset.y_train), shape, seed_for("noise", seed),
                                  device=device, **m.get("noise", {}))
        if name in ("kd-masked", "rcd-masked"):
            if m.get("mode", "samples") == "samples":
                weights = masked_weights(dataset, teacher_dir, m["incorrect_weight"], device)
            else:  # "classes": down-weight the target's mass on the wrong classes instead
                target = DownweightedClasses(target, dataset.y_train, m["incorrect_weight"],
                                             float(m.get("temperature", 1.0)),
                                             dataset.num_classes)
        feature_match = None
        if name in ("fm", "fm-rcd"):
            teacher = load_teacher(spec, dataset, teacher_dir, device)
            stage = m.get("stage") or last_stage(teacher)
            adapter = stage_adapter(initial, teacher, stage, dataset.x_train[:2],
                                    generator(seed_for("adapter", width, seed), device))
            feature_match = FeatureMatch(stage, adapter)
            if name == "fm":
                target = TeacherFeatures(teacher, stage)
            else:
                shape = staged_forward(teacher, stage, dataset.x_train[:1], stop=True).shape[1:]
                target = RandomLogits(len(dataset.y_train), shape, seed_for("noise", seed),
                                      device=device, **m.get("noise", {}))
        learners.append(Learner(name, copy.deepcopy(initial), target,
                                alpha=float(m.get("alpha", 0.0)),
                                temperature=float(m.get("temperature", 1.0)),
                                sample_weights=weights, feature_match=feature_match,
                                order_seed=seed_for("order", "student", seed)))
    recipe = recipe_of(spec)
    label = f"{spec['setup']} w={width:g} s={seed}"
    seconds = train(learners, dataset.x_train, dataset.y_train, recipe,
                    log=EpochLog(label, recipe.epochs), checkpoint=checkpoint_of(args))
    for m, learner in zip(methods, learners):
        write_model_outputs(args, {**spec, **m}, dataset, Path(outputs[m["method"]]), learner.model,
                            recipe, seconds / len(learners), role="student")
    finish_checkpoint(args)
    return 0


def masked_weights(dataset, teacher_dir: Path, incorrect_weight: float, device: str):
    """Per training sample: 1 where the teacher's (un-augmented) prediction is right, else
    ``incorrect_weight`` (0: the KD term is dropped on the teacher's errors)."""
    import numpy as np
    import torch

    logits = torch.from_numpy(np.load(teacher_dir / TRAIN_LOGITS)).to(device)
    right = logits.argmax(-1).view(dataset.y_train.shape) == dataset.y_train
    return torch.where(right, 1.0, float(incorrect_weight))


def save_state(model, path: Path) -> None:
    import torch

    from kdpipe.io import atomic_path

    with atomic_path(path) as tmp:
        torch.save(model.state_dict(), tmp)


def teacher_target(spec, dataset, teacher_dir: Path, device: str):
    """The teacher's cached train logits, or, where batches are augmented, the teacher itself."""
    import numpy as np
    import torch

    from kdpipe import models
    from kdpipe.train import TeacherLogits, TeacherModel

    if spec["recipe"].get("augment", "none") == "none":
        logits = torch.from_numpy(np.load(teacher_dir / TRAIN_LOGITS)).to(device)
        return TeacherLogits(logits.view(*dataset.y_train.shape, -1))
    return TeacherModel(load_teacher(spec, dataset, teacher_dir, device))


def load_teacher(spec, dataset, teacher_dir: Path, device: str):
    import torch

    from kdpipe import models

    teacher = models.build(spec["arch"], dataset.input_shape, dataset.num_classes, 1.0).to(device)
    teacher.load_state_dict(torch.load(teacher_dir / TEACHER_WEIGHTS, map_location=device,
                                       weights_only=True))
    return teacher.eval()


def last_stage(model) -> str:
    """The default stage to match: the last one before the classifier head."""
    return [name for name, _ in model.named_children() if name != "head"][-1]


def stage_adapter(student, teacher, stage: str, x, generator):
    """FitNets' regressor from the student's output of ``stage`` to the teacher's: None where the
    shapes agree (width 1), else a 1x1 convolution (channels differ) or a linear map (the last,
    feature dimension differs), drawn from ``generator``."""
    import torch
    from torch import nn

    from kdpipe import models
    from kdpipe.train import staged_forward

    with torch.no_grad():
        mine = staged_forward(student, stage, x, stop=True).shape
        theirs = staged_forward(teacher, stage, x, stop=True).shape
    if mine == theirs:
        return None
    differ = [d for d in range(len(mine)) if mine[d] != theirs[d]]
    if differ == [len(mine) - 1]:
        adapter = nn.Linear(mine[-1], theirs[-1])
    elif differ == [1] and len(mine) in (3, 4):
        adapter = (nn.Conv1d if len(mine) == 3 else nn.Conv2d)(mine[1], theirs[1], 1)
    else:
        raise ValueError(f"stage {stage!r}: cannot map student output {tuple(mine)} to the "
                         f"teacher's {tuple(theirs)}")
    adapter = adapter.to(x.device)
    models.init_parameters(adapter, generator)
    return adapter


def write_model_outputs(args, spec, dataset, out: Path, model, recipe, seconds, role) -> None:
    """Test logits, (teacher) train logits, the table row and the timing; row.json last."""
    import numpy as np

    from kdpipe import metrics
    from kdpipe.audit import copied_by_class
    from kdpipe.io import write_json, write_npy
    from kdpipe.train import predict

    def flat(logits):  # sequence models predict every position: one sample each
        return logits.reshape(-1, logits.shape[-1]).float().cpu().numpy()

    test_logits = flat(predict(model, dataset.x_test, recipe.eval_batch_size))
    train_logits = predict(model, dataset.x_train, recipe.eval_batch_size)
    labels = dataset.y_test.reshape(-1).cpu().numpy()
    train_loss = metrics.cross_entropy(flat(train_logits), dataset.y_train.reshape(-1).cpu().numpy())
    write_npy(out / TEST_LOGITS, test_logits)
    results = Path(args.results)
    row = {
        "setup": spec["setup"], "dataset": spec["dataset"], "arch": spec["arch"], "role": role,
        "teacher_id": spec["teacher_id"], "method": spec.get("method", ""),
        "alpha": spec.get("alpha"), "temperature": spec.get("temperature"),
        "width": float(spec.get("width", 1.0)), "seed": int(spec["seed"]),
        "train_loss": train_loss,
        "logits_path": relative(out / TEST_LOGITS, results),
        "labels_path": relative(args.labels, results),
    }
    if role == "teacher":
        write_npy(out / TRAIN_LOGITS, flat(train_logits))
        correct = int((test_logits.argmax(-1) == labels).sum())
        row.update(accuracy=metrics.accuracy(test_logits, labels),
                   loss=metrics.cross_entropy(test_logits, labels),
                   n_teacher_correct=correct, n_teacher_incorrect=len(labels) - correct)
    else:
        teacher_logits = np.load(Path(args.teacher) / TEST_LOGITS)
        row.update(metrics.student_metrics(test_logits, teacher_logits, labels))
        row["copied_by_class"] = copied_by_class(test_logits, teacher_logits, labels)
    write_json(out / TIMING, {"train_seconds": seconds})
    write_json(out / ROW, row)


def collect(args) -> int:
    from kdpipe.tables import collect_rows, write_table

    rows = [line for line in Path(args.rows_file).read_text().splitlines() if line.strip()]
    table = collect_rows(rows, args.results)
    write_table(table, Path(args.out))
    print(f"collected {len(table)} models into {args.out}", file=sys.stderr)
    return 0


def statistics(args) -> int:
    import pandas as pd

    from kdpipe import stats
    from kdpipe.tables import write_table

    out = Path(args.out)
    models = pd.read_parquet(out / "models.parquet")
    spec = args.spec
    tests = stats.compare_methods(models, metrics=tuple(spec["metrics"]), level=spec["level"],
                                  correction=spec["correction"])
    write_table(tests, out / "stats.parquet")
    write_table(stats.claims(tests), out / "claims.parquet")
    write_table(stats.asymmetry(models), out / "asymmetry.parquet")
    write_table(stats.scaling(models, bootstrap=spec["bootstrap"], widths=spec["scaling_widths"]),
                out / "scaling.parquet")
    return 0


def figures(args) -> int:
    from kdpipe import plots

    written = plots.make_figures(Path(args.tables), Path(args.out), args.spec)
    print(f"wrote {len(written)} figure files to {args.out}", file=sys.stderr)
    return 0


def audit(args) -> int:
    from kdpipe.audit import make_audit

    written = make_audit(Path(args.tables), Path(args.results), Path(args.out), args.spec)
    print(f"wrote {len(written)} audit files", file=sys.stderr)
    return 0


def serve(args) -> int:
    from kdpipe import server

    server.serve(args.socket, preload=PRELOAD, parent_pid=args.parent_pid,
                 idle_timeout=args.idle_timeout)
    return 0


# --- parser ------------------------------------------------------------------------------------

def method_output(text: str):
    method, sep, path = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--out takes METHOD=DIR, got {text!r}")
    return method, path


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kdpipe", description=__doc__.split("\n\n")[0])
    steps = p.add_subparsers(dest="step", required=True, metavar="STEP")

    def step(name, func, help):
        s = steps.add_parser(name, help=help, description=help)
        s.set_defaults(func=func)
        return s

    def training(s):
        s.add_argument("--spec", type=spec_arg, required=True,
                       help="JSON (or @file): setup, dataset, arch, seed, teacher_id, recipe, ...")
        s.add_argument("--data", type=Path, required=True, help="prepared dataset (.pt)")
        s.add_argument("--labels", type=Path, required=True, help="test labels (.npy)")
        s.add_argument("--results", type=Path, default=Path("results"),
                       help="results folder the table's paths are relative to (default: results)")
        s.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
        s.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
        s.add_argument("--checkpoint-dir", type=Path,
                       help="folder of training checkpoints, one file per spec: saved "
                            "periodically, resumed from when present")
        s.add_argument("--checkpoint-every", type=int, default=5,
                       help="epochs between checkpoints (default: 5; 0: none)")

    s = step("prepare-data", prepare_data, "Prepare a dataset once into a tensor file.")
    s.add_argument("--spec", type=spec_arg, required=True, help='JSON: {"family": ..., "options": {...}}')
    s.add_argument("--raw-dir", type=Path, required=True, help="folder of the official files")
    s.add_argument("--out", type=Path, required=True, help="prepared tensor file (.pt)")
    s.add_argument("--labels-out", type=Path, required=True, help="test labels (.npy, int64)")

    s = step("train-teacher", train_teacher,
             "Train a teacher with cross-entropy; keep theta0, weights, train and test logits.")
    training(s)
    s.add_argument("--out", type=Path, required=True, help="teacher folder")

    s = step("train-students", train_students,
             "Train students of one (setup, width, seed) together on identical batches.")
    training(s)
    s.add_argument("--teacher", type=Path, required=True, help="the teacher's folder")
    s.add_argument("--out", type=method_output, action="append", required=True,
                   help="METHOD=DIR, once per method in the spec")

    s = step("collect", collect, "Merge per-model rows into models.parquet (+ .csv).")
    s.add_argument("--rows-file", type=Path, required=True, help="text file, one row.json per line")
    s.add_argument("--results", type=Path, default=Path("results"), help="results folder")
    s.add_argument("--out", type=Path, required=True, help="models table (.parquet)")

    s = step("stats", statistics, "Mann-Whitney tests, asymmetry and scaling tables.")
    s.add_argument("--spec", type=spec_arg, required=True,
                   help='JSON: {"metrics": [...], "level": 0.05, "correction": "none|holm|bh", '
                        '"bootstrap": 1000}')
    s.add_argument("--out", type=Path, required=True, help="tables folder holding models.parquet")

    s = step("figures", figures, "Draw every figure from the tables alone.")
    s.add_argument("--spec", type=spec_arg, required=True, help="JSON plotting options")
    s.add_argument("--tables", type=Path, required=True, help="tables folder")
    s.add_argument("--out", type=Path, required=True, help="figures folder")

    s = step("audit", audit, "Tables and figures of each teacher's errors and the students' copies.")
    s.add_argument("--spec", type=spec_arg, required=True, help="JSON plotting options")
    s.add_argument("--tables", type=Path, required=True, help="tables folder (models.parquet)")
    s.add_argument("--results", type=Path, default=Path("results"),
                   help="results folder the table's paths are relative to (default: results)")
    s.add_argument("--out", type=Path, required=True, help="figures folder")

    s = step("serve", serve, "Run a fork server that runs steps without re-importing torch.")
    s.add_argument("--socket", required=True, help="Unix socket path")
    s.add_argument("--parent-pid", type=int, help="exit when this process ends")
    s.add_argument("--idle-timeout", type=float, help="exit after this many idle seconds")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    slurm_job = os.environ.get("SLURM_JOB_ID")
    print(f"{args.step} on {socket.gethostname()}, pid {os.getpid()}"
          + (f", SLURM job {slurm_job}" if slurm_job else ""), file=sys.stderr)
    start = time.perf_counter()
    try:
        code = args.func(args)
    except (DataError, ResultError) as error:  # a missing or damaged input, a full disk: say what
        print(f"kdpipe {args.step}: error: {error}", file=sys.stderr)
        return 1
    print(f"{args.step} done in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return code
