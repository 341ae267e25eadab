"""Shared fixtures and helpers, imported by the test files (`from conftest import snakemake`):
the real workflow, a kdpipe step in its own process, the config schema, the training toy data and
the audit's hand-worked study."""
import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from kdpipe import config, models
from kdpipe.metrics import accuracy, cross_entropy, student_metrics
from kdpipe.train import Recipe, generator

REPO = Path(__file__).resolve().parents[1]


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu",
                     help="torch device of the tests that take the `device` fixture (fused "
                          "training, the training jobs): cpu (default), cuda, cuda:N")


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device; the one kind of test that "
                                       "may skip under KDPIPE_FAIL_ON_SKIP")


def fail_a_skip(report):
    """Turn a skip report into a failure under KDPIPE_FAIL_ON_SKIP=1 (set by .ci/run): where
    everything the tests need is provided, a skip would pass a test that never ran."""
    if report.skipped and not hasattr(report, "wasxfail") \
            and os.environ.get("KDPIPE_FAIL_ON_SKIP") == "1":
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under KDPIPE_FAIL_ON_SKIP=1, which allows no skip: {reason}"
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A test's skip fails under KDPIPE_FAIL_ON_SKIP=1, unless the test is marked gpu."""
    report = yield
    return report if item.get_closest_marker("gpu") else fail_a_skip(report)


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    """A skipped module fails under KDPIPE_FAIL_ON_SKIP=1 too."""
    return fail_a_skip((yield))


@pytest.fixture(scope="session")
def device(request) -> str:
    """The device those tests train on: ``pytest --device cuda`` runs them on a GPU, set up as a
    job sets it up (deterministic algorithms)."""
    from kdpipe.jobs import setup_torch

    device = request.config.getoption("--device")
    return device if device == "cpu" else setup_torch(torch.get_num_threads(), device)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of small real data sets named by KDPIPE_SHARED_DATA, for the extra tests on
    real data (tests/test_data_real.py); they skip where it is unset, and fail where it names
    no folder."""
    if not os.environ.get("KDPIPE_SHARED_DATA"):
        pytest.skip("KDPIPE_SHARED_DATA is unset: it names the folder of small real data sets "
                    "(Tiny Shakespeare, FSDD recordings, CIFAR-10 JPEGs) these extra tests read")
    root = Path(os.environ["KDPIPE_SHARED_DATA"]).resolve()
    if not root.is_dir():
        pytest.fail(f"KDPIPE_SHARED_DATA is {root}, which is not a folder", pytrace=False)
    return root


TINY = {
    "datasets": {"digits": {"family": "digits"}},
    "setups": {"digits-mlp": {"dataset": "digits", "arch": "mlp",
                              "recipe": {"epochs": 12, "batch_size": 32}}},
    "alphas": [0.5],
    "widths": [0.5, 1],
    "seeds": [0, 1, 2],
    "plots": {"formats": ["png"], "dpi": 60},
}


def write_config(workdir: Path, **changes) -> Path:
    config = {**json.loads(json.dumps(TINY)), **changes}
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


# The rules call `python -m kdpipe`: this interpreter must be the `python` they find.
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def snakemake(workdir: Path, *args, check=True, config=None, **popen):
    """Run the workflow in ``workdir`` on ``config`` (default: workdir/config.yaml)."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
           str(workdir), "--configfile", str(config or workdir / "config.yaml"), "--cores", "2",
           *args]
    if popen:
        return subprocess.Popen(cmd, env=ENV, **popen)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=ENV)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def planned_jobs(workdir: Path, config=None) -> dict:
    """rule -> count of the jobs a dry run would execute ({} when nothing is to be done)."""
    result = snakemake(workdir, "-n", config=config)
    out = result.stdout + result.stderr
    if "Nothing to be done" in out:
        return {}
    table = out.split("Job stats:", 1)[1].strip().splitlines()[2:]
    jobs = {}
    for line in table:
        if not line.strip():
            break
        rule, count = line.split()
        jobs[rule] = int(count)
    jobs.pop("total")
    return jobs


def tables(workdir: Path) -> dict:
    folder = workdir / "results" / "tables"
    return {name: pd.read_parquet(folder / f"{name}.parquet")
            for name in ("models", "stats", "asymmetry", "scaling")}


# --- a kdpipe step in its own process ----------------------------------------------------------

def kdpipe_step(*args) -> str:
    """Run `python -m kdpipe <args>` as a workflow job would; return its log (stderr)."""
    result = subprocess.run([sys.executable, "-m", "kdpipe", *map(str, args)], env=ENV,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr


def job_spec(recipe: dict, **extra) -> str:
    """The --spec of a training job on digits in setup 's', whose teacher is 's/teacher', with
    the schema's defaults filled into ``recipe`` as the workflow fills a config's."""
    return json.dumps({"setup": "s", "dataset": "digits", "arch": "mlp", "teacher_id": "s/teacher",
                       "data": {"family": "digits"}, "recipe": config.recipe(**recipe), **extra})


def prepare_digits(work: Path) -> tuple[Path, Path]:
    """Prepare digits as the data step does: work/data/digits.pt and its test labels."""
    data, labels = work / "data/digits.pt", work / "data/digits.labels.npy"
    kdpipe_step("prepare-data", "--spec", json.dumps({"family": "digits", "options": {}}),
                "--raw-dir", work, "--out", data, "--labels-out", labels)
    return data, labels


# --- the config schema -------------------------------------------------------------------------

# the schema file's keys and the method sections the registry defines (kdpipe.config.schema)
SCHEMA = config.schema()


def schema_errors(**changes) -> list[str]:
    """The schema's messages on the tiny config with ``changes``."""
    validator = jsonschema.validators.validator_for(SCHEMA)(SCHEMA)
    return [error.message for error in validator.iter_errors({**TINY, **changes})]


# --- training on toy data ----------------------------------------------------------------------

def full_recipe(**keys) -> Recipe:
    """A Recipe of ``keys`` with the config schema's defaults for the others. The keys are taken
    as they are: a test may go where a config may not (0 epochs, a learning rate of 0)."""
    return Recipe(**{**config.recipe(epochs=1, batch_size=1), **keys})


def toy_data(n=64, d=6, c=3, seed=0):
    g = generator(seed)
    x = torch.randn(n, d, generator=g)
    y = torch.randint(0, c, (n,), generator=g)
    return x, y


def fresh_mlp(width=0.1, seed=1, d=6, c=3):
    model = models.build("mlp", (d,), c, width)
    models.init_parameters(model, generator(seed))
    return model


def assert_fused_as_alone(learners, x, y, recipe, atol, rtol) -> None:
    """The learners ``learners()`` makes, trained together with fuse="always", end as each of
    another ``learners()`` trained alone does: every parameter of every module, within
    ``atol`` and ``rtol``."""
    from kdpipe.train import train

    together = learners()
    train(together, x, y, recipe, fuse="always")
    for k, fused in enumerate(together):
        alone = learners()[k]
        train([alone], x, y, recipe)
        for module, fused_module in zip(alone.modules(), fused.modules(), strict=True):
            for p, q in zip(module.parameters(), fused_module.parameters(), strict=True):
                torch.testing.assert_close(q, p, atol=atol, rtol=rtol)


# --- the audit's hand-worked study -------------------------------------------------------------

C = 4
LABELS = np.repeat(np.arange(C), 5)  # 20 test samples, 5 per class
# The teacher's predictions: 0->1 three times, 2->3 twice, 1->0 and 3->2 once; 7 errors.
TEACHER = np.array([0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 2, 2, 2, 3, 3, 3, 3, 3, 3, 2])
# Its max probability: 0.9 where right; on the errors, chosen so that each pair's mean is round.
TEACHER_CONFIDENCE = np.full(20, 0.9)
TEACHER_CONFIDENCE[[2, 3, 4, 9, 13, 14, 19]] = [0.5, 0.6, 0.7, 0.8, 0.4, 0.6, 0.95]

COPY_ALL = TEACHER
COPY_NONE = LABELS
PARTIAL = TEACHER.copy()
PARTIAL[4] = 0  # right instead of the teacher's 0->1: class 0 copies 2 of 3
PARTIAL[13] = 0  # wrong, but not the teacher's 3: class 2 copies 1 of 2
PARTIAL_COPIED = [2, 1, 1, 1]  # per true class; 5 of the 7 errors
# per true class, the teacher's errors each student copies, counted by hand (what row.json holds)
COPIED_BY_HAND = {id(COPY_ALL): [3, 1, 2, 1], id(COPY_NONE): [0, 0, 0, 0], id(PARTIAL): PARTIAL_COPIED}
# (method, alpha, temperature, width, seed, predictions) of the errant teacher's students
STUDENTS = [
    ("kd", 0.1, 1.0, 1.0, 0, COPY_ALL), ("kd", 0.1, 1.0, 1.0, 1, PARTIAL), ("kd", 0.1, 1.0, 1.0, 2, COPY_ALL),
    ("kd", 0.5, 1.0, 1.0, 0, COPY_NONE), ("kd", 0.1, 1.0, 2.0, 0, COPY_NONE),
    ("rcd", 0.1, 1.0, 1.0, 0, PARTIAL), ("rcd", 0.1, 1.0, 1.0, 1, COPY_NONE),
    ("siddo", 0.0, float("nan"), 1.0, 0, COPY_NONE), ("siddo", 0.0, float("nan"), 1.0, 1, PARTIAL),
]


def logits_for(predicted, confidence):
    """float32 logits whose softmax puts ``confidence`` on the predicted class, the rest evenly."""
    p = np.repeat(((1 - np.asarray(confidence)) / (C - 1))[:, None], C, axis=1)
    p[np.arange(len(p)), predicted] = confidence
    return np.log(p).astype(np.float32)


def write_audit_study(results):
    """Two setups: 'errant' (the teacher above, 9 students) and 'perfect' (a teacher with no
    errors, one student), each student's row with the copied_by_class a training job stores.
    Returns the models table, written to results/tables/models.parquet."""
    np.save(results / "labels.npy", LABELS)
    rows = []

    def add(path, logits, **row):
        np.save(results / path, logits)
        rows.append({"dataset": "toy", "arch": "mlp", "logits_path": path, "labels_path": "labels.npy", **row})

    for setup, teacher_predictions in (("errant", TEACHER), ("perfect", LABELS)):
        (results / setup).mkdir()
        teacher = logits_for(teacher_predictions, TEACHER_CONFIDENCE)
        right = int((teacher_predictions == LABELS).sum())
        add(f"{setup}/teacher.npy", teacher, setup=setup, role="teacher", teacher_id=f"{setup}/teacher",
            method="", alpha=np.nan, temperature=np.nan, width=1.0, seed=0, accuracy=accuracy(teacher, LABELS),
            loss=cross_entropy(teacher, LABELS), n_teacher_correct=right, n_teacher_incorrect=len(LABELS) - right)
        students = STUDENTS if setup == "errant" else [("siddo", 0.0, np.nan, 1.0, 0, PARTIAL)]
        for i, (method, alpha, temperature, width, seed, predictions) in enumerate(students):
            student = logits_for(predictions, np.full(len(LABELS), 0.7))
            add(f"{setup}/student{i}.npy", student, setup=setup, role="student", teacher_id=f"{setup}/teacher",
                method=method, alpha=alpha, temperature=temperature, width=width, seed=seed,
                copied_by_class=COPIED_BY_HAND[id(predictions)] if setup == "errant" else [0] * C,
                **student_metrics(student, teacher, LABELS))
    models = pd.DataFrame(rows)
    (results / "tables").mkdir()
    models.to_parquet(results / "tables" / "models.parquet", index=False)
    return models
