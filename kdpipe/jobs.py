"""The training jobs: a teacher, and a block of students that share (setup, teacher, width).

A block trains every student of its spec that is not already finished, all in one call of
``kdpipe.train.train`` (which fuses learners of one architecture into one computation), then
evaluates and writes each student into its own folder ``<teacher>/<method>/<run>/``. Those folders
are not Snakemake outputs (their number depends on the config, and Snakemake would delete them
before a rerun): they are the store of finished students. A student's row.json, written last,
carries a digest of everything its result depends on; a rerun of the block skips each student
whose row has the expected digest and whose test logits are readable, so that adding an alpha, a
temperature, a seed or a method trains only the new students, a changed recipe or retrained
teacher retrains what depends on it, and a lost student file retrains that student. The block's
declared output is a manifest listing its students' rows and test logits (kdpipe.store). How a
digest stays the same when a setting is added: kdpipe.digests.

A job holds a lock named after it (``exclusive``), so that a second copy of it stops rather than
train the same students at once, and stops after an epoch once the snakemake that started it
has ended (``stop_when_orphaned``).

Every function raises (JobError, kdpipe.data.DataError, kdpipe.io.ResultError) rather than
exiting: the command line (kdpipe.cli) turns those into a message and an exit status.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from kdpipe.digests import NEUTRAL, digest, recipe_with_neutral, without_neutral
from kdpipe.methods import MethodError, Registry
from kdpipe.store import (HISTORY, ROW, STUDENT_WEIGHTS, TEACHER_INIT, TEACHER_WEIGHTS,
                          TEST_LOGITS, TIMING, TRAIN_LOGITS, write_manifest)


class JobError(Exception):
    """A training job cannot do what it is asked: its device is absent, a student it shares is
    not there, its training diverged. The message says what, and what to do."""


def spec_recipe(spec: dict):
    """The ``kdpipe.train.Recipe`` of a job's spec, whose recipe leaves out the settings at their
    neutral values (kdpipe.digests) and has every other key."""
    from kdpipe.train import Recipe

    given = recipe_with_neutral(spec["recipe"])
    missing = [name for name in Recipe.__dataclass_fields__ if name not in given]
    if missing:
        raise JobError(f"the spec's recipe lacks {', '.join(missing)}; a config's recipe has them "
                       "from the schema's defaults (kdpipe.config.recipe fills them)")
    return Recipe(**given)


def relative(path, results) -> str:
    return os.path.relpath(Path(path).resolve(), Path(results).resolve())


def resolve_device(device: str) -> str:
    """The config's ``device`` as torch names it here: ``auto`` is CUDA where present, else CPU."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def device_kind(device: str) -> str:
    """``cpu``, ``cuda`` or ``mps``. Each kind's generators draw other numbers from the same seed,
    so a model's initial weights, batch orders and noise depend on the kind it trains on."""
    return resolve_device(device).partition(":")[0]


def setup_torch(threads: int, device: str) -> str:
    """Set torch's threads; resolve ``device`` and check that it exists; on CUDA, deterministic
    algorithms (runs identical run to run, as on a CPU)."""
    import torch

    torch.set_num_threads(threads)
    device = resolve_device(device)
    found = {"cuda": torch.cuda.device_count(), "mps": int(torch.backends.mps.is_available())}
    kind, _, index = device.partition(":")
    if kind != "cpu" and int(index or 0) >= found[kind]:
        raise JobError(f"config device is {device!r}, but torch finds {found[kind]} "
                       f"{kind.upper()} device(s) here (torch {torch.__version__}, CUDA build: "
                       f"{torch.version.cuda}); set device: auto or cpu")
    if kind == "cuda":
        # cuDNN's and cuBLAS's default kernels sum in a run-dependent order: on an H200 the
        # CNNs' weights differed run to run after 3 epochs (fused and alone), and were identical
        # with deterministic algorithms. cuBLAS needs this workspace setting before its first use.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    return device


# --- one copy of a job at a time, and none left running without its snakemake -------------------

@contextmanager
def exclusive(lock: Path, job: str):
    """Run the body holding an exclusive lock (``fcntl.flock``) on the file ``lock``, named
    after the job (its output's name, not its work's: a rerun of the job takes the same lock),
    in which the holder writes its process id, host and start. A second copy of the job, such
    as a rerun after a kill while the first still trains, or a requeued cluster job meeting a
    straggler, raises JobError naming the holder instead of training the same students at once.
    The kernel releases the lock when its holder exits, however it ends."""
    import fcntl

    lock = Path(lock)
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = True
        except BlockingIOError:
            handle.seek(0)
            try:
                holder = json.loads(handle.read())
                who = f"process {holder['pid']} on {holder['host']} (since {holder['since']})"
                end = f"kill {holder['pid']} on {holder['host']}"
            except (ValueError, KeyError, TypeError):
                who, end = "another process", "end it"
            raise JobError(f"{job} is already running: {who} holds its lock {lock}. A copy left "
                           "by a killed run stops by itself at the end of its current epoch, "
                           "seeing that the snakemake that started it has ended; wait for it to "
                           f"end (or {end}), then run again") from None
        except OSError as error:  # a file system without flock (some network mounts)
            print(f"warning: cannot lock {lock} ({error}): this file system does not support "
                  "flock, so a second copy of this job would not be stopped", file=sys.stderr)
            held = False
        if held:
            handle.truncate(0)
            handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                     "since": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")
            handle.flush()
        yield


def stop_when_orphaned(log):
    """``log`` (an epoch log of kdpipe.train.train) preceded by a check that the process that
    started this job, recorded now, is still its parent. Snakemake starts a training job as its
    own child (the rules ``exec`` python), so a job whose snakemake was killed is reparented and
    stops at the end of the epoch, writing nothing, instead of training on beside a rerun. (A
    parent-death signal would fire when the snakemake *thread* that started the job ends.)"""
    parent = os.getppid()

    def checked(epoch: int, learners: list) -> None:
        if os.getppid() != parent:
            raise JobError(f"the process that started this job (pid {parent}, its snakemake) has "
                           f"ended: stopped after epoch {epoch}, nothing of this job is written; "
                           "run the workflow again (the job resumes from its last checkpoint)")
        log(epoch, learners)

    return checked


def discard(saved) -> None:
    """Remove a finished job's checkpoint and any unreadable one it set aside."""
    if saved is not None:
        for path in (saved.path, saved.damaged):
            path.unlink(missing_ok=True)


# --- fingerprints: what a result depends on, without hashing gigabytes --------------------------

def data_fingerprint(spec: dict, data: Path, labels: Path) -> str:
    """The dataset's config (its prepare step is deterministic in it), the prepared file's size and
    the test labels' bytes: a re-prepared or edited dataset changes it."""
    return digest([spec.get("data"), os.stat(data).st_size,
                   hashlib.sha256(Path(labels).read_bytes()).hexdigest()])


def weights_fingerprint(path: Path) -> str:
    """A digest of a saved state dict's tensors (not of the file: torch.save's bytes may differ
    for equal weights)."""
    import torch

    from kdpipe.io import ResultError
    from kdpipe.rows import remedy

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # missing, truncated or corrupt: whatever torch.load raises
        raise ResultError(f"teacher weights {path} are missing or damaged ({error}); "
                          f"{remedy(Path(path).parent / ROW)}") from None
    h = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().contiguous().reshape(-1)
        h.update(f"{key}:{tensor.dtype}:{tuple(state[key].shape)}".encode())
        h.update(tensor.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


class Teacher:
    """A teacher's folder, its fingerprints (computed once) and loaded pieces (loaded once). A
    teacher given by file without initial weights has no init.pt (its job removes any older one),
    and its init fingerprint is None."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._cache = {}

    def _once(self, key, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    @property
    def init_fingerprint(self) -> str | None:
        path = self.folder / TEACHER_INIT
        return self._once("init", lambda: weights_fingerprint(path) if path.exists() else None)

    @property
    def fingerprint(self) -> str:
        return self._once("all", lambda: digest(
            [self.init_fingerprint, weights_fingerprint(self.folder / TEACHER_WEIGHTS)]))


def starts_from_theta0(spec: dict) -> bool:
    """Whether a block's students start from their teacher's theta0 (init.pt): at width 1, of the
    teacher's architecture (a block spec's ``teacher_arch``, where it differs from ``arch``),
    where the teacher has one (not a teacher given by file without it: ``teacher_theta0``
    false). Every other student starts from weights drawn from its (width, seed)."""
    return (float(spec["width"]) == 1.0 and spec.get("teacher_arch", spec["arch"]) == spec["arch"]
            and spec.get("teacher_theta0", True))


def registry(spec: dict) -> Registry:
    """The methods a job's spec can name: the built-in ones and the user's it carries."""
    return Registry(spec.get("methods"))


def training_settings(spec: dict, student: dict, data_fp: str, teacher: Teacher,
                      kind: str) -> dict:
    """Everything a student's trained weights depend on, ``kind`` being the kind of device
    (``device_kind``) that draws its random streams, without the settings at their neutral
    values (kdpipe.digests). siddo does not depend on the teacher except through theta0 at
    width 1: teachers sharing a seed share their siddo students. A student of another kind of
    device is another student: kept apart, a block moved to a GPU never pairs new kd students
    with rcd or siddo students drawn from a CPU's streams (their shared initial weights are what
    those controls control for). A student's options (noise, masking, stage, a method's
    settings, a user's loss and the digest of its file's source) are all its keys but method,
    seed, run, alpha and temperature."""
    m = registry(spec).method(student["method"])
    settings = {"method": m.name, "seed": student["seed"], "width": float(spec["width"]),
                "arch": spec["arch"], "recipe": spec["recipe"], "data": data_fp,
                "options": {k: v for k, v in student.items()
                            if k not in ("method", "seed", "run", "alpha", "temperature")},
                "device": kind}
    if m.uses_alpha:
        settings["alpha"] = float(student["alpha"])
    if m.uses_temperature:
        settings["temperature"] = float(student["temperature"])
    if m.depends_on_teacher:
        settings["teacher"] = teacher.fingerprint
    elif starts_from_theta0(spec):
        settings["init"] = teacher.init_fingerprint
    return without_neutral(settings, NEUTRAL)


def finished(row_path: Path, expected: str, key="digest") -> bool:
    """A student is finished when its row.json (written last) has the expected digest."""
    try:
        return json.loads(Path(row_path).read_text()).get(key) == expected
    except (OSError, json.JSONDecodeError):
        return False


def readable_logits(path: Path, n: int, classes: int) -> bool:
    """Whether ``path`` holds float32 logits [n, classes], judged by the file's header alone (a
    block checks every stored student of it; collect checks the values)."""
    import numpy as np

    try:
        logits = np.load(path, mmap_mode="r")
    except (OSError, ValueError, EOFError):
        return False
    return logits.dtype == np.float32 and logits.shape == (n, classes)


# --- evaluation -----------------------------------------------------------------------------------

def evaluate(model, x, y, batch_size: int, keep: bool = False):
    """Mean cross-entropy of ``model`` on (x, y), in chunks of ``batch_size`` inputs
    (``kdpipe.train.predict_batches``: fp32 arithmetic; per-sample losses in float32, their sum
    in float64), so that memory does not grow with the data; with ``keep``, also the logits
    flattened to [samples, classes] float32 (a teacher's train logits, a model's test logits).
    Returns (loss, logits or None)."""
    import numpy as np
    import torch.nn.functional as F

    from kdpipe.train import predict_batches

    total, count, kept = 0.0, 0, []
    for i, logits in enumerate(predict_batches(model, x, batch_size)):
        logits = logits.float().reshape(-1, logits.shape[-1])
        labels = y[i * batch_size:(i + 1) * batch_size].reshape(-1)
        total += float(F.cross_entropy(logits, labels, reduction="sum").double())
        count += len(labels)
        if keep:
            kept.append(logits.cpu().numpy())
    return total / count, (np.concatenate(kept) if keep else None)


def at_chance_problem(n_correct: int, labels) -> str | None:
    """What is wrong with a teacher no better than the best constant guess (the most frequent test
    label), or None: kdpipe.audit's one-sided binomial test, which also flags it in the audit
    and, through collect, in the models table (at_chance)."""
    from kdpipe.audit import CHANCE_LEVEL, at_chance, chance_accuracy

    chance = chance_accuracy(labels)
    if at_chance(n_correct, len(labels), chance):
        return (f"test accuracy {n_correct / len(labels):.4f} is at chance: not significantly "
                f"above the {chance:.4f} of always predicting the most frequent class (one-sided "
                f"binomial test at {CHANCE_LEVEL})")
    return None


def chance_warning(n_correct: int, labels) -> str | None:
    """The teacher job's warning when its teacher is at chance (``at_chance_problem``)."""
    problem = at_chance_problem(n_correct, labels)
    return None if problem is None else \
        f"WARNING: the teacher's {problem}; its students measure nothing"


def refuse_chance_teacher(spec: dict, teacher_logits, labels) -> None:
    """Raise JobError where the block's teacher is at chance, unless its setup allows it
    (``allow_chance_teacher``): every student of such a teacher would measure nothing, while
    the tables and figures would look like results."""
    correct = int((teacher_logits.argmax(-1) == labels).sum())
    problem = at_chance_problem(correct, labels)
    if problem is not None and not spec.get("allow_chance_teacher", False):
        setup = spec["setup"]
        raise JobError(f"teacher {spec['teacher_id']}: {problem}. Its students would measure "
                       "nothing, so none is trained. Train the teacher better (more epochs or "
                       f"another lr in setups.{setup}.recipe), or, to study it anyway, set "
                       f"setups.{setup}.allow_chance_teacher: true (every figure of the setup "
                       "then says so in its title)")


def base_row(spec: dict, role: str, results: Path, logits: Path, labels: Path) -> dict:
    return {"setup": spec["setup"], "dataset": spec["dataset"], "arch": spec["arch"], "role": role,
            "teacher_id": spec["teacher_id"], "logits_path": relative(logits, results),
            "labels_path": relative(labels, results)}


def save_state(model, path: Path) -> None:
    import torch

    from kdpipe.io import atomic_path

    with atomic_path(path) as tmp:
        torch.save(model.state_dict(), tmp)


class EpochClock:
    """A training log (``kdpipe.train.train``'s ``log``) that records each epoch's wall time,
    from the end of the epoch before (or from the clock's start) to its own end, then hands the
    epoch on to ``log``. The models trained in one call share their epochs' times."""

    def __init__(self, log=None):
        self.log, self.seconds, self.last = log, {}, time.perf_counter()

    def __call__(self, epoch: int, learners: list) -> None:
        now = time.perf_counter()
        self.seconds[epoch], self.last = now - self.last, now
        if self.log is not None:
            self.log(epoch, learners)


def write_history(path: Path, history: list, clock: EpochClock, recipe, samples: int) -> None:
    """A model's ``history.json``: per epoch it trained, the mean training loss and accuracy of
    its batches (``Learner.history``), the learning rate of the epoch's first step
    (``kdpipe.train.learning_rate``) and the epoch's wall time in seconds (null for an epoch
    trained before a resume from a checkpoint, whose time is not known)."""
    from kdpipe.io import write_json
    from kdpipe.train import learning_rate

    steps = math.ceil(samples / recipe.batch_size)
    write_json(path, {"steps_per_epoch": steps, "epochs": [
        {**epoch, "lr": learning_rate(recipe, (epoch["epoch"] - 1) * steps, recipe.epochs * steps),
         "seconds": clock.seconds.get(epoch["epoch"])} for epoch in history]})


def checkpoint(folder, every: int, name: str, key: str):
    """Periodic training state outside the job's outputs (Snakemake deletes those before a
    rerun), named by ``key`` so that changed work never resumes an old run."""
    from kdpipe.train import Checkpoint

    if folder is None or every <= 0:
        return None
    return Checkpoint(Path(folder) / f"{name}-{digest(key)[:20]}.pt", every, key)


# --- the teacher ----------------------------------------------------------------------------------

def train_teacher(spec: dict, data: Path, labels: Path, out: Path, results: Path, threads: int,
                  device: str, checkpoint_dir=None, checkpoint_every: int = 0) -> None:
    """Train a teacher from its seed, or load one given by file (``spec["given"]``), into
    ``out``: init.pt (theta0, where it has one), model.pt, its train and test logits, its row.
    A given teacher's files are checked against the setup's architecture first."""
    from kdpipe import data as datasets, metrics, models
    from kdpipe.io import write_json, write_npy
    from kdpipe.rows import read_labels
    from kdpipe.train import EpochLog, Learner, TrainingDiverged, generator, seed_for, train

    out, recipe = Path(out), spec_recipe(spec)
    log = stop_when_orphaned(EpochLog(f"{spec['setup']} teacher", recipe.epochs))
    y = read_labels(labels)  # before training: a damaged file stops the job at once
    device = setup_torch(threads, device)
    dataset = datasets.load(data, device)
    model = models.build(spec["arch"], dataset.input_shape, dataset.num_classes, 1.0).to(device)
    kind = device_kind(device)  # a run killed on one kind of device never resumes on another
    given, saved = spec.get("given"), None
    if given is not None:
        states = {part: given_state(file, model, spec["arch"], dataset)
                  for part, file in given.items()}
        if "init" in states:
            model.load_state_dict(states["init"])
            save_state(model, out / TEACHER_INIT)
        else:  # no theta0: its students start fresh, and no older init.pt may pass for one
            (out / TEACHER_INIT).unlink(missing_ok=True)
        (out / HISTORY).unlink(missing_ok=True)  # not trained: an older history is not its
        model.load_state_dict(states["weights"])
        seconds = 0.0
    else:
        models.init_parameters(model, generator(seed_for("teacher-init", spec["seed"]), device))
        save_state(model, out / TEACHER_INIT)
        saved = checkpoint(checkpoint_dir, checkpoint_every, "teacher",
                           json.dumps([without_neutral(spec), data_fingerprint(spec, data, labels),
                                       kind], sort_keys=True))
        learner = Learner("teacher", model, order_seed=seed_for("order", "teacher", spec["seed"]))
        clock = EpochClock(log)
        try:
            seconds = train([learner], dataset.x_train, dataset.y_train, recipe, log=clock,
                            checkpoint=saved)
        except TrainingDiverged as error:
            raise JobError(str(error)) from error
        write_history(out / HISTORY, learner.history, clock, recipe, len(dataset.x_train))
    save_state(model, out / TEACHER_WEIGHTS)
    train_loss, train_logits = evaluate(model, dataset.x_train, dataset.y_train,
                                        recipe.eval_batch_size, keep=True)
    write_npy(out / TRAIN_LOGITS, train_logits)
    _, logits = evaluate(model, dataset.x_test, dataset.y_test, recipe.eval_batch_size,
                         keep=True)
    write_npy(out / TEST_LOGITS, logits)
    correct = int((logits.argmax(-1) == y).sum())
    row = base_row(spec, "teacher", results, out / TEST_LOGITS, labels)
    # a teacher given by file has no seed: -1
    row.update(method="", alpha=None, temperature=None, width=1.0, seed=int(spec.get("seed", -1)),
               device=kind, train_loss=train_loss, accuracy=metrics.accuracy(logits, y),
               loss=metrics.cross_entropy(logits, y), n_teacher_correct=correct,
               n_teacher_incorrect=len(y) - correct,
               teacher_source="trained" if given is None else "file")
    if given is not None:
        row["given"] = given  # the files' paths and SHA-256 digests
    warning = chance_warning(correct, y)
    if warning:
        print(warning, file=sys.stderr)
    write_json(out / TIMING, {"train_seconds": seconds})
    write_json(out / ROW, row)
    discard(saved)


def given_state(file: dict, model, arch: str, dataset) -> dict:
    """The state_dict of a teacher given by file (``{"path", "sha256"}`` of its job's spec),
    checked against ``model``, the setup's ``arch`` at width 1: a file changed since the
    workflow hashed it, one torch cannot load as a state_dict, or a missing, unexpected or
    misshapen tensor raises JobError naming the file and the first such tensor."""
    import pickle

    import torch

    path = Path(file["path"])
    if hashlib.sha256(path.read_bytes()).hexdigest() != file["sha256"]:
        raise JobError(f"{path} changed after the workflow read it (its SHA-256 differs from "
                       "the job's); run the workflow again")
    remedy = "save one with torch.save(model.state_dict(), path)"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
        raise JobError(f"{path}: torch cannot load it as a state_dict ({error}); "
                       f"{remedy}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise JobError(f"{path} holds a {type(state).__name__}, not a state_dict (tensor names "
                       f"to tensors); {remedy}")
    expected = model.state_dict()
    problem = None
    for name, tensor in expected.items():
        if name not in state:
            problem = f"it lacks tensor {name!r} (expected shape {list(tensor.shape)})"
        elif state[name].shape != tensor.shape:
            problem = (f"tensor {name!r}: expected shape {list(tensor.shape)}, found "
                       f"{list(state[name].shape)}")
        if problem:
            break
    unexpected = [name for name in state if name not in expected]
    if problem is None and unexpected:
        problem = (f"unexpected tensor {unexpected[0]!r} (shape "
                   f"{list(state[unexpected[0]].shape)})")
    if problem is not None:
        raise JobError(f"{path} is not a state_dict of {arch} at width 1 for this dataset "
                       f"(inputs {list(dataset.input_shape)}, {dataset.num_classes} classes): "
                       f"{problem}")
    return state


# --- a block of students --------------------------------------------------------------------------

def student_folder(teacher_dir: Path, student: dict) -> Path:
    return Path(teacher_dir) / student["method"] / student["run"]


def train_block(spec: dict, data: Path, labels: Path, teacher_dir: Path, manifest: Path,
                results: Path, threads: int, device: str, checkpoint_dir=None,
                checkpoint_every: int = 0, siddo_from=None) -> None:
    """Train the students of ``spec["students"]`` that are not finished, write each one's folder,
    then the manifest. ``siddo_from``: another teacher's folder (same setup and teacher seed)
    whose siddo students this teacher's rows reference instead of training them again."""
    import numpy as np

    from kdpipe import data as datasets
    from kdpipe.io import ResultError
    from kdpipe.rows import check_logits, read_labels, remedy
    from kdpipe.train import EpochLog, TrainingDiverged, train

    recipe, teacher = spec_recipe(spec), Teacher(teacher_dir)
    log = stop_when_orphaned(EpochLog(f"{spec['teacher_id']} w={float(spec['width']):g}",
                                      recipe.epochs))
    y = read_labels(labels)
    teacher_logits = np.asarray(check_logits(teacher.folder / TEST_LOGITS, len(y), None,
                                             teacher.folder / ROW))
    if spec.get("teacher_theta0", True) and not (teacher.folder / TEACHER_INIT).is_file():
        raise ResultError(f"the teacher's initial weights {teacher.folder / TEACHER_INIT} are "
                          f"missing; remove its row {teacher.folder / ROW} and run the workflow "
                          "again: the teacher retrains to the same weights and keeps its students")
    refuse_chance_teacher(spec, teacher_logits, y)
    data_fp = data_fingerprint(spec, data, labels)
    kind = device_kind(device)

    def stored(row_folder: Path, logits_folder: Path, expected: str, key="digest") -> bool:
        """A row with the expected digest, and the test logits it is scored from readable."""
        return finished(row_folder / ROW, expected, key) and readable_logits(
            logits_folder / TEST_LOGITS, *teacher_logits.shape)

    study_methods = registry(spec)
    plan = []  # (student, its folder, training digest, row digest, folder of its logits)
    for student in spec["students"]:
        trained = digest(training_settings(spec, student, data_fp, teacher, kind))
        folder = student_folder(teacher.folder, student)
        source = folder
        if siddo_from is not None and study_methods.method(student["method"]).teacher_free:
            source = student_folder(siddo_from, student)
            if not stored(source, source, trained, key="train_digest"):
                raise JobError(f"{source} holds no finished siddo student with these settings; "
                               f"the block of {siddo_from} trains it")
        plan.append((student, folder, trained, digest([trained, teacher.fingerprint]), source))
    unscored = [p for p in plan if not stored(p[1], p[4], p[3])]
    # trained anew: a student of its own whose trained weights are not stored (or whose logits
    # are lost); the others only get a new row (a siddo student of another teacher, or one whose
    # teacher was retrained without changing what the student depends on)
    todo = [p for p in unscored if p[4] == p[1] and not stored(p[1], p[1], p[2], "train_digest")]
    print(f"block of {len(plan)} students: {len(plan) - len(unscored)} already finished, "
          f"training {len(todo)}", file=sys.stderr)

    if todo:
        device = setup_torch(threads, device)
        dataset = datasets.load(data, device)
        if not readable_logits(teacher.folder / TRAIN_LOGITS, dataset.y_train.numel(),
                               teacher_logits.shape[1]):
            raise ResultError(f"teacher train logits {teacher.folder / TRAIN_LOGITS} are missing "
                              f"or damaged; {remedy(teacher.folder / ROW)}")
        learners = build_learners(spec, [p[0] for p in todo], dataset, teacher.folder, device)
        saved = checkpoint(checkpoint_dir, checkpoint_every, "block",
                           json.dumps(sorted(p[2] for p in todo)))
        clock = EpochClock(log)
        try:
            seconds = train(learners, dataset.x_train, dataset.y_train, recipe, log=clock,
                            checkpoint=saved)
        except TrainingDiverged as error:  # no student of the block is written: say why
            raise JobError(str(error)) from error
        for (student, folder, trained, row_digest, _), learner in zip(todo, learners):
            write_history(folder / HISTORY, learner.history, clock, recipe,
                          len(dataset.x_train))
            write_student(spec, student, learner.model, dataset, folder, folder, trained,
                          row_digest, teacher_logits, y, labels, results,
                          seconds / len(learners), recipe, kind)
        discard(saved)
    for student, folder, trained, row_digest, source in unscored:
        if not any(p[1] == folder for p in todo):  # stored weights' logits, scored anew
            write_student(spec, student, None, None, folder, source, trained, row_digest,
                          teacher_logits, y, labels, results, 0.0, recipe, kind)
    write_manifest(manifest, [relative(p[1] / ROW, results) for p in plan],
                   [relative(p[4] / TEST_LOGITS, results) for p in plan])


def write_student(spec, student, model, dataset, folder: Path, source: Path, trained: str,
                  row_digest: str, teacher_logits, y, labels: Path, results: Path,
                  seconds: float, recipe, kind: str) -> None:
    """The student's test logits and row (metrics against this block's teacher), row.json last;
    with the spec's ``keep_weights`` (keep_student_weights), also its trained weights. Without a
    model, the logits and train loss are those of ``source``'s finished student."""
    import numpy as np

    from kdpipe import metrics
    from kdpipe.audit import copied_by_class
    from kdpipe.io import write_json, write_npy

    if model is not None:
        train_loss, _ = evaluate(model, dataset.x_train, dataset.y_train, recipe.eval_batch_size)
        _, logits = evaluate(model, dataset.x_test, dataset.y_test, recipe.eval_batch_size,
                             keep=True)
        if spec.get("keep_weights"):
            save_state(model, folder / STUDENT_WEIGHTS)
        else:  # weights an earlier run kept are not this student's
            (folder / STUDENT_WEIGHTS).unlink(missing_ok=True)
        write_npy(folder / TEST_LOGITS, logits)
        write_json(folder / TIMING, {"train_seconds": seconds})
    else:
        train_loss = json.loads((source / ROW).read_text())["train_loss"]
        logits = np.load(source / TEST_LOGITS)
    m = registry(spec).method(student["method"])
    row = base_row(spec, "student", results, source / TEST_LOGITS, labels)
    row.update(method=m.name, alpha=float(student["alpha"]) if m.uses_alpha else 0.0,
               temperature=float(student["temperature"]) if m.uses_temperature else None,
               width=float(spec["width"]), seed=int(student["seed"]), device=kind,
               from_theta0=starts_from_theta0(spec), train_loss=train_loss,
               train_digest=trained, digest=row_digest)
    row.update(metrics.student_metrics(logits, teacher_logits, y))
    row["copied_by_class"] = copied_by_class(logits, teacher_logits, y)
    write_json(folder / ROW, row)


def initial_model(spec: dict, seed: int, dataset, teacher_dir: Path, device: str):
    """A student's initial weights, of the students' architecture (the spec's ``arch``): the
    teacher's theta0 where they start from it (``starts_from_theta0``: width 1, the teacher's
    architecture, a teacher that has one), else drawn from (width, seed); the same for every
    method of that (width, seed)."""
    import torch

    from kdpipe import models
    from kdpipe.train import generator, seed_for

    width = float(spec["width"])
    model = models.build(spec["arch"], dataset.input_shape, dataset.num_classes, width).to(device)
    if starts_from_theta0(spec):
        model.load_state_dict(torch.load(Path(teacher_dir) / TEACHER_INIT, map_location=device,
                                         weights_only=True))
    else:
        models.init_parameters(model, generator(seed_for("init", width, seed), device))
    return model


def build_learners(spec: dict, students: list, dataset, teacher_dir: Path, device: str) -> list:
    """One Learner per student, in order, built from its method's entry (kdpipe.methods): its
    target kind, masking, settings and loss; the teacher's pieces are loaded once per block. A
    user's loss is imported and called on one batch first (``check_user_loss``)."""
    import functools

    from kdpipe.train import (ConstantLogits, DownweightedClasses, FeatureMatch, Learner,
                              RandomLogits, TeacherFeatures, generator, seed_for, staged_forward)

    study_methods = registry(spec)
    cache = {}

    def once(key, make):
        if key not in cache:
            cache[key] = make()
        return cache[key]

    teacher = lambda: once("teacher", lambda: load_teacher(spec, dataset, teacher_dir, device))
    logits_shape = (*dataset.y_train.shape[1:], dataset.num_classes)
    learners = []
    for student in students:
        m = study_methods.method(student["method"])
        seed, width = int(student["seed"]), float(spec["width"])
        initial = once(("init", seed), lambda: initial_model(spec, seed, dataset, teacher_dir,
                                                              device))
        target = weights = feature_match = None
        if m.target == "teacher":
            target = once("target", lambda: teacher_target(spec, dataset, teacher_dir, device))
        elif m.target == "noise":
            target = RandomLogits(len(dataset.y_train), logits_shape, seed_for("noise", seed),
                                  device=device, **student.get("noise", {}))
        elif m.target == "uniform":
            target = once("uniform", lambda: ConstantLogits(logits_shape, device))
        if m.masked:
            if student.get("mode", "samples") == "samples":
                weights = once(("weights", student["incorrect_weight"]), lambda: masked_weights(
                    dataset, teacher_dir, student["incorrect_weight"], device))
            else:  # "classes": down-weight the target's mass on the wrong classes instead
                target = DownweightedClasses(target, dataset.y_train, student["incorrect_weight"],
                                             float(student.get("temperature", 1.0)),
                                             dataset.num_classes)
        if m.uses_stage:
            stage = matched_stage(spec, student.get("stage"), initial, teacher())
            adapter = stage_adapter(initial, teacher(), stage, dataset.x_train[:2],
                                    generator(seed_for("adapter", width, seed), device))
            feature_match = FeatureMatch(stage, adapter)
            if m.target == "teacher-stage":
                target = TeacherFeatures(teacher(), stage)
            else:
                shape = staged_forward(teacher(), stage, dataset.x_train[:1], stop=True).shape[1:]
                target = RandomLogits(len(dataset.y_train), shape, seed_for("noise", seed),
                                      device=device, **student.get("noise", {}))
        loss = m.loss
        if m.user_loss:
            loss = once(("loss", m.name), lambda: check_user_loss(
                m, student, spec, initial, dataset,
                once("target", lambda: teacher_target(spec, dataset, teacher_dir, device))))
        if m.loss_settings:
            loss = functools.partial(loss, **{key: student[key] for key in m.loss_settings})
        learners.append(Learner(f"{m.name} {student['run']}", copy.deepcopy(initial), target,
                                alpha=float(student.get("alpha", 0.0)) if m.uses_alpha else 0.0,
                                temperature=float(student.get("temperature", 1.0)),
                                sample_weights=weights, feature_match=feature_match,
                                order_seed=seed_for("order", "student", seed), loss=loss,
                                fuse=m.fuse))
    return learners


def check_user_loss(m, student: dict, spec: dict, model, dataset, teacher_target):
    """A user's loss function, imported from its file and called once before training: on one
    batch of training data with the student's initial model (in eval mode, without gradients)
    and the teacher's target, alone and, where it may fuse, under ``torch.func.vmap`` over two
    copies. Raises JobError naming the config key and the file where the file cannot be
    imported, has changed since the workflow read it, lacks the function, or the loss is not a
    finite scalar (or does not work under vmap)."""
    import torch
    from torch.func import vmap

    from kdpipe.methods import load_loss, loss_parts, loss_source

    key = f"{m.config_key}.loss"
    path = loss_parts(m.loss)[0]
    try:
        loss = load_loss(key, m.loss)
        if loss_source(m.loss) != student["loss_source"]:
            raise MethodError(key, f"loss file {str(path)!r} has changed since the workflow read "
                                   "it; run the workflow again")
    except MethodError as error:
        raise JobError(f"config {error}") from None
    index = torch.arange(min(len(dataset.y_train), spec["recipe"]["batch_size"]),
                         device=dataset.y_train.device)
    alpha = float(student.get("alpha", 0.0)) if m.uses_alpha else 0.0
    temperature = float(student.get("temperature", 1.0))
    was_training = model.training
    with torch.no_grad():
        model.eval()
        output = model(dataset.x_train[index])
        model.train(was_training)
        y, target = dataset.y_train[index], teacher_target(index, dataset.x_train[index], 0, 0)
        calls = [("called on one batch", lambda: loss(output, y, target, alpha, temperature,
                                                     None), ())]
        if m.fuse:
            pair = [torch.stack([t, t]) for t in (output, y, target)]
            calls.append(("under torch.func.vmap", lambda: vmap(
                loss, in_dims=(0, 0, 0, 0, 0, None))(*pair, torch.tensor([alpha] * 2),
                                                      torch.tensor([temperature] * 2), None),
                (2,)))
        for how, call, shape in calls:
            try:
                value = call()
            except Exception as error:  # whatever the user's function raises
                hint = (f"; make it work under vmap or set {m.config_key}.fuse: false"
                        if shape else "")
                raise JobError(f"config {key}: the loss {m.loss!r} fails when {how}: "
                               f"{type(error).__name__}: {error}{hint}") from error
            if not torch.is_tensor(value) or tuple(value.shape) != shape:
                got = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
                raise JobError(f"config {key}: the loss {m.loss!r} returned {got} when {how}, "
                               "not a scalar tensor (docs/methods.md)")
            if not torch.isfinite(value).all():
                raise JobError(f"config {key}: the loss {m.loss!r} returned {value.tolist()} "
                               f"when {how}, not a finite value")
    return loss


def masked_weights(dataset, teacher_dir: Path, incorrect_weight: float, device: str):
    """Per training sample: 1 where the teacher's (un-augmented) prediction is right, else
    ``incorrect_weight`` (0: the KD term is dropped on the teacher's errors)."""
    import numpy as np
    import torch

    logits = torch.from_numpy(np.load(Path(teacher_dir) / TRAIN_LOGITS)).to(device)
    right = logits.argmax(-1).view(dataset.y_train.shape) == dataset.y_train
    return torch.where(right, 1.0, float(incorrect_weight))


def teacher_target(spec, dataset, teacher_dir: Path, device: str):
    """The teacher's cached train logits, or, where batches are augmented, the teacher itself."""
    import numpy as np
    import torch

    from kdpipe.train import TeacherLogits, TeacherModel

    if spec["recipe"]["augment"] == "none":
        logits = torch.from_numpy(np.load(Path(teacher_dir) / TRAIN_LOGITS)).to(device)
        return TeacherLogits(logits.view(*dataset.y_train.shape, -1))
    return TeacherModel(load_teacher(spec, dataset, teacher_dir, device))


def load_teacher(spec, dataset, teacher_dir: Path, device: str):
    """The trained teacher, of its architecture (a block spec's ``teacher_arch``, else
    ``arch``), in eval mode."""
    import torch

    from kdpipe import models

    arch = spec.get("teacher_arch", spec["arch"])
    teacher = models.build(arch, dataset.input_shape, dataset.num_classes, 1.0).to(device)
    teacher.load_state_dict(torch.load(Path(teacher_dir) / TEACHER_WEIGHTS, map_location=device,
                                       weights_only=True))
    return teacher.eval()


def last_stage(model) -> str:
    """The default stage to match: the last one before the classifier head."""
    return [name for name, _ in model.named_children() if name != "head"][-1]


def matched_stage(spec: dict, stage: str | None, student, teacher) -> str:
    """The stage fm matches: ``stage`` (the setup's fm_stage), else the teacher's last before
    the head. It must be a stage of both models: else JobError names both architectures'
    stages (students of another architecture need an fm_stage that both have)."""
    stage = stage or last_stage(teacher)
    theirs = [name for name, _ in teacher.named_children()]
    mine = [name for name, _ in student.named_children()]
    if stage not in theirs or stage not in mine:
        teacher_arch = spec.get("teacher_arch", spec["arch"])
        raise JobError(f"feature matching: stage {stage!r} is not a stage of both the teacher's "
                       f"architecture {teacher_arch} (stages: {', '.join(theirs)}) and the "
                       f"students' {spec['arch']} (stages: {', '.join(mine)}); set "
                       f"setups.{spec['setup']}.fm_stage to a stage both have")
    return stage


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
    # the dimensions that differ (None: the outputs differ in rank, which nothing maps)
    differ = [d for d in range(len(mine)) if mine[d] != theirs[d]] \
        if len(mine) == len(theirs) else None
    if differ == [len(mine) - 1]:
        adapter = nn.Linear(mine[-1], theirs[-1])
    elif differ == [1] and len(mine) in (3, 4):
        adapter = (nn.Conv1d if len(mine) == 3 else nn.Conv2d)(mine[1], theirs[1], 1)
    else:
        raise JobError(f"feature matching at stage {stage!r}: the student's output "
                       f"{list(mine)} cannot be mapped to the teacher's {list(theirs)} (a 1x1 "
                       "convolution maps channels, a linear map the last dimension; the other "
                       "dimensions must agree); choose another fm_stage")
    adapter = adapter.to(x.device)
    models.init_parameters(adapter, generator)
    return adapter
