"""The training jobs at the command line (kdpipe/jobs.py): initial weights, the store of finished
students and its digests (kdpipe/digests.py), chunked evaluation, the copied errors per class."""
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import ENV, job_spec, kdpipe_step, prepare_digits
from kdpipe import config, jobs, models
from kdpipe.digests import NEUTRAL, digest, without_neutral
from kdpipe.train import generator, seed_for


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, device):
    work = tmp_path_factory.mktemp("jobs")
    data, labels = prepare_digits(work)
    log = kdpipe_step("train-teacher", "--spec",
                      job_spec(seed=0, recipe={"epochs": 2, "batch_size": 32}), "--data", data,
                      "--labels", labels, "--out", work / "s/teacher", "--results", work,
                      "--device", device)
    assert "WARNING" not in log  # a trained teacher is well above chance
    return work


def block(*args, **kwargs) -> str:
    """Train a block (``block_args``); return its log."""
    return kdpipe_step(*block_args(*args, **kwargs))


def block_args(work: Path, device: str, width: float, seeds, epochs: int, name: str,
               methods=("kd", "rcd", "siddo"), teacher="teacher", recipe=None) -> list:
    """A block's arguments; ``recipe``: the spec's recipe as it is (default: ``epochs`` of
    batches of 32 with the schema's defaults)."""
    students = []
    for seed in seeds:
        for m in methods:
            student = {"method": m, "seed": seed, "run": f"{name}_s{seed}"}
            if m != "siddo":
                student.update(alpha=0.5, temperature=1.0)
            students.append(student)
    # epochs may be 0 (a student's initial weights), which a config's recipe refuses
    spec = json.loads(job_spec(width=width, students=students,
                               recipe={"epochs": 1, "batch_size": 32}))
    spec["recipe"] = recipe if recipe is not None else {**spec["recipe"], "epochs": epochs}
    return ["train-block", "--spec", json.dumps(spec),
            "--data", work / "data/digits.pt", "--labels", work / "data/digits.labels.npy",
            "--teacher", work / "s" / teacher, "--manifest", work / f"s/{teacher}/blocks/{name}.json",
            "--results", work, "--device", device]


def outputs_of(model, work: Path, device: str):
    """The model's test logits, computed on ``device`` as a job there computes them."""
    from kdpipe.train import predict

    x_test = torch.load(work / "data/digits.pt", weights_only=True)["x_test"].to(device)
    with torch.no_grad():
        return predict(model.to(device), x_test).cpu().numpy()


def test_students_start_from_theta0_at_width_1_and_share_drawn_weights_elsewhere(teacher, device):
    """With 0 epochs a student's saved test logits are those of its initial weights: at width 1,
    of the teacher's saved init.pt; at width 0.5, of the weights drawn from (width, seed) by the
    device's generator, the same for kd, rcd and siddo."""
    work = teacher
    block(work, device, 1.0, [3], 0, "init_w1")
    block(work, device, 0.5, [3], 0, "init_w0.5")
    theta0 = models.build("mlp", (1, 8, 8), 10, 1.0)
    theta0.load_state_dict(torch.load(work / "s/teacher/init.pt", weights_only=True))
    drawn = models.build("mlp", (1, 8, 8), 10, 0.5)
    models.init_parameters(drawn.to(device), generator(seed_for("init", 0.5, 3), device))
    for run, model in (("init_w1_s3", theta0), ("init_w0.5_s3", drawn)):
        expected = outputs_of(model, work, device)
        for method in ("kd", "rcd", "siddo"):
            saved = np.load(work / f"s/teacher/{method}/{run}/logits.npy")
            np.testing.assert_allclose(saved, expected, rtol=1e-5, atol=1e-6, err_msg=method)
    # the teacher itself moved away from theta0: the comparison can tell weights apart
    assert not np.allclose(np.load(work / "s/teacher/logits.npy"), outputs_of(theta0, work, device),
                           atol=1e-3)


def test_a_rerun_of_a_block_trains_only_unfinished_or_changed_students(teacher, device):
    work = teacher
    log = block(work, device, 1.0, [0], 1, "store", methods=("kd", "siddo"))
    assert "training 2" in log
    row = work / "s/teacher/kd/store_s0/row.json"
    first = json.loads(row.read_text())
    log = block(work, device, 1.0, [0, 1], 1, "store", methods=("kd", "rcd", "siddo"))
    assert "block of 6 students: 2 already finished, training 4" in log
    assert json.loads(row.read_text()) == first  # untouched
    manifest = json.loads((work / "s/teacher/blocks/store.json").read_text())
    assert len(manifest["students"]) == 6
    assert all((work / r).exists() for r in manifest["students"])
    # a new recipe
    log = block(work, device, 1.0, [0, 1], 2, "store", methods=("kd", "rcd", "siddo"))
    assert "0 already finished, training 6" in log
    # a half-written student (no row.json: it is written last) is trained again
    (work / "s/teacher/rcd/store_s1/row.json").unlink()
    assert "5 already finished, training 1" in block(work, device, 1.0, [0, 1], 2, "store",
                                                      methods=("kd", "rcd", "siddo"))


def test_a_block_moved_to_another_kind_of_device_trains_its_students_anew(teacher, device):
    """Another kind of device draws other initial weights and batch orders from the same seeds.
    A block moved there finds none of its stored students finished, so that a new kd student is
    never paired with rcd and siddo students drawn on the first device; the rows name their
    device. (On a machine without CUDA, the move to cuda:99 fails once the block has planned.)"""
    work = teacher
    assert "training 3" in block(work, device, 0.5, [0], 1, "moved")
    rows = {m: json.loads((work / f"s/teacher/{m}/moved_s0/row.json").read_text())
            for m in ("kd", "rcd", "siddo")}
    assert {row["device"] for row in rows.values()} == {device.partition(":")[0]}
    other = "cuda:99" if device == "cpu" else "cpu"
    moved = subprocess.run([sys.executable, "-m", "kdpipe",
                            *map(str, block_args(work, other, 0.5, [0], 1, "moved"))],
                           env=ENV, capture_output=True, text=True)
    assert "block of 3 students: 0 already finished, training 3" in moved.stderr
    if other == "cpu":
        assert moved.returncode == 0, moved.stderr[-3000:]
        assert json.loads((work / "s/teacher/rcd/moved_s0/row.json").read_text())["device"] == "cpu"
    else:
        # the library raises, the command line says what and exits with status 1
        assert moved.returncode == 1 and "Traceback" not in moved.stderr
        assert "kdpipe train-block: error: config device is 'cuda:99'" in moved.stderr
        for m, row in rows.items():  # the finished students stay as they were
            assert json.loads((work / f"s/teacher/{m}/moved_s0/row.json").read_text()) == row


def test_a_setting_at_its_neutral_value_retrains_nothing_and_another_value_retrains(teacher,
                                                                                   device):
    """kdpipe.digests: precision and stop_at_train_loss came after the first stored students.
    At their neutral values (fp32, None) a block finds its students finished whether its spec
    leaves the settings out (as the workflow's specs do) or spells them out, so adding a setting
    retrains nothing. At another value (a default moved away from the neutral one) the students
    are other students, as they are after any change of a setting without a neutral value."""
    work = teacher
    filled = config.recipe(epochs=1, batch_size=32)
    assert (filled["precision"], filled["stop_at_train_loss"]) == ("fp32", None)
    before = {k: v for k, v in filled.items() if k not in ("precision", "stop_at_train_loss")}
    log = block(work, device, 0.5, [4], 1, "neutral", recipe=before)
    assert "block of 3 students: 0 already finished, training 3" in log
    log = block(work, device, 0.5, [4], 1, "neutral", recipe=filled)
    assert "block of 3 students: 3 already finished, training 0" in log
    for changed in ({"precision": "tf32"}, {"stop_at_train_loss": 1e-9}, {"weight_decay": 1e-6}):
        log = block(work, device, 0.5, [4], 1, "neutral", recipe={**filled, **changed})
        assert "block of 3 students: 0 already finished, training 3" in log, changed


def test_a_digest_is_the_sha256_of_the_sorted_json():
    assert digest({"b": 1, "a": [1.0, None]}) == hashlib.sha256(
        b'{"a": [1.0, null], "b": 1}').hexdigest()[:32]


def test_settings_at_their_neutral_values_are_left_out():
    assert NEUTRAL == {"device": "cpu",
                       "recipe": {"precision": "fp32", "stop_at_train_loss": None}}
    settings = {"method": "kd", "device": "cpu", "width": 1.0,
                "recipe": {"epochs": 3, "precision": "fp32", "stop_at_train_loss": None}}
    assert without_neutral(settings) == {"method": "kd", "width": 1.0, "recipe": {"epochs": 3}}
    other = {"method": "kd", "device": "cuda",
             "recipe": {"epochs": 3, "precision": "tf32", "stop_at_train_loss": 0.5}}
    assert without_neutral(other) == other


def test_a_cpu_student_at_the_neutral_values_has_the_settings_of_one_stored_before_them():
    """A student's digested settings, written out by hand as they were before precision,
    stop_at_train_loss and the device were settings: the recipe spelling out the neutral values
    and a CPU leave them as they were; another device is named."""
    teacher = SimpleNamespace(fingerprint="teacher-fp", init_fingerprint="theta0-fp")
    recipe = {"epochs": 3, "batch_size": 32, "lr": 0.001}
    spec = {"width": 1, "arch": "mlp",
            "recipe": {**recipe, "precision": "fp32", "stop_at_train_loss": None}}
    kd = {"method": "kd", "seed": 2, "run": "a0.5_T1_w1_s2", "alpha": 0.5, "temperature": 1.0}
    assert jobs.training_settings(spec, kd, "data-fp", teacher, "cpu") == {
        "method": "kd", "seed": 2, "width": 1.0, "arch": "mlp", "recipe": recipe,
        "data": "data-fp", "options": {}, "alpha": 0.5, "temperature": 1.0,
        "teacher": "teacher-fp"}
    siddo = {"method": "siddo", "seed": 2, "run": "w1_s2"}
    assert jobs.training_settings(spec, siddo, "data-fp", teacher, "cuda") == {
        "method": "siddo", "seed": 2, "width": 1.0, "arch": "mlp", "recipe": recipe,
        "data": "data-fp", "options": {}, "device": "cuda", "init": "theta0-fp"}


def test_a_spec_without_a_recipe_key_is_refused_naming_it(teacher, device):
    """A setting without a neutral value has no value a job could assume: the spec must hold it
    (the workflow's are filled from the schema)."""
    work = teacher
    recipe = {k: v for k, v in config.recipe(epochs=1, batch_size=32).items() if k != "lr"}
    result = subprocess.run([sys.executable, "-m", "kdpipe", *map(str, block_args(
        work, device, 0.5, [4], 1, "no_lr", recipe=recipe))], env=ENV, capture_output=True,
        text=True)
    assert result.returncode == 1
    assert "kdpipe train-block: error: the spec's recipe lacks lr" in result.stderr
    assert not (work / "s/teacher/blocks/no_lr.json").exists()


def test_a_retrained_teacher_retrains_only_the_students_that_depend_on_it(teacher, device):
    """At width 0.5, rcd and siddo depend on neither the teacher's init nor its weights: after the
    teacher changes they are scored against it anew, not retrained; kd is retrained."""
    work = teacher

    def train_teacher(epochs):
        kdpipe_step("train-teacher", "--spec",
                    job_spec(seed=0, recipe={"epochs": epochs, "batch_size": 32}),
                    "--data", work / "data/digits.pt", "--labels", work / "data/digits.labels.npy",
                    "--out", work / "s/other", "--results", work, "--device", device)
        return json.loads((work / "s/other/row.json").read_text())

    train_teacher(1)
    assert "training 3" in block(work, device, 0.5, [0], 1, "retrain", teacher="other")
    before = {m: json.loads((work / f"s/other/{m}/retrain_s0/row.json").read_text())
              for m in ("kd", "rcd", "siddo")}
    changed = train_teacher(3)
    log = block(work, device, 0.5, [0], 1, "retrain", teacher="other")
    assert "block of 3 students: 0 already finished, training 1" in log
    for m in ("rcd", "siddo"):
        after = json.loads((work / f"s/other/{m}/retrain_s0/row.json").read_text())
        assert after["train_digest"] == before[m]["train_digest"]
        assert after["accuracy"] == before[m]["accuracy"]  # the same student ...
        assert after["n_teacher_incorrect"] == changed["n_teacher_incorrect"]  # ... rescored
    kd = json.loads((work / "s/other/kd/retrain_s0/row.json").read_text())
    assert kd["train_digest"] != before["kd"]["train_digest"]


def test_evaluate_in_chunks_matches_the_float64_loss_and_keeps_the_logits():
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Linear(5, 7)
    x = torch.randn(1000, 5, generator=g)
    y = torch.randint(0, 7, (1000,), generator=g)
    loss, kept = jobs.evaluate(model, x, y, batch_size=64, keep=True)
    with torch.no_grad():
        logits = model(x).numpy()
    assert kept.shape == (1000, 7) and kept.dtype == np.float32
    np.testing.assert_allclose(kept, logits, rtol=1e-6)
    # independent: scipy-free float64 reference by hand
    z = logits.astype(np.float64)
    z = z - z.max(1, keepdims=True)
    reference = -np.mean(z[np.arange(1000), y.numpy()] - np.log(np.exp(z).sum(1)))
    assert loss == pytest.approx(reference, rel=1e-6)
    assert jobs.evaluate(model, x, y, batch_size=64)[1] is None


MEMORY_PROBE = """
import resource, torch
from kdpipe import jobs

class Sequence(torch.nn.Module):  # [B, L] tokens -> [B, L, 65] logits, like a char model
    def forward(self, x):
        return torch.nn.functional.one_hot(x, 65).float()

x = torch.randint(0, 65, (4000, 256))
jobs.evaluate(Sequence(), x[:64], x[:64], batch_size=64)  # warm up the allocator
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
jobs.evaluate(Sequence(), x, x, batch_size=64)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


def test_evaluate_memory_does_not_grow_with_the_train_set():
    """A Shakespeare-like train set of 1M positions x 65 classes: 266 MB of float32 logits, 532
    MB in float64; evaluating in chunks raises the process's peak memory by far less."""
    result = subprocess.run([sys.executable, "-c", MEMORY_PROBE], env=ENV, capture_output=True,
                            text=True, check=True)
    growth = int(result.stdout.split()[-1])
    assert growth < 4000 * 256 * 65 * 4 / 5, f"peak memory grew by {growth / 1e6:.0f} MB"
