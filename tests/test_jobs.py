"""The training jobs at the command line (kdpipe/jobs.py): initial weights, the store of finished
students and its digests (kdpipe/digests.py), chunked evaluation, the copied errors per class,
teachers given by file and students of another architecture than their teacher's."""
import hashlib
import json
import shutil
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
               methods=("kd", "rcd", "siddo"), teacher="teacher", recipe=None, options=None,
               **spec_changes) -> list:
    """A block's arguments; ``recipe``: the spec's recipe as it is (default: ``epochs`` of
    batches of 32 with the schema's defaults); ``options``: more keys of every student but
    siddo's (fm's stage); ``spec_changes``: keys of the spec (the students' arch, ...)."""
    students = []
    for seed in seeds:
        for m in methods:
            student = {"method": m, "seed": seed, "run": f"{name}_s{seed}"}
            if m != "siddo":
                student.update(alpha=0.5, temperature=1.0, **(options or {}))
            students.append(student)
    # epochs may be 0 (a student's initial weights), which a config's recipe refuses
    spec = json.loads(job_spec(width=width, students=students,
                               recipe={"epochs": 1, "batch_size": 32}, **spec_changes))
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
            row = json.loads((work / f"s/teacher/{method}/{run}/row.json").read_text())
            assert row["from_theta0"] is (model is theta0)
    # the teacher itself moved away from theta0: the comparison can tell weights apart
    assert not np.allclose(np.load(work / "s/teacher/logits.npy"), outputs_of(theta0, work, device),
                           atol=1e-3)


def test_a_training_job_imports_no_table_statistics_or_plotting_library(teacher, device):
    """A block or teacher job trains, evaluates and checks its teacher's files with torch and numpy: pandas,
    scipy and matplotlib would add about a second to every one of a study's block jobs (an
    import of scipy.stats alone 0.9 s), and torch._dynamo and sympy 2-3 s (test_train)."""
    teacher_job = ["train-teacher", "--spec", job_spec(seed=0, recipe={"epochs": 1, "batch_size": 32}),
                   "--data",
                   teacher / "data/digits.pt", "--labels", teacher / "data/digits.labels.npy",
                   "--out", teacher / "s/imports", "--results", teacher, "--device", device]
    for args in (block_args(teacher, device, 0.5, [5], 1, "imports"), teacher_job):
        result = subprocess.run([sys.executable, "-X", "importtime", "-m", "kdpipe",
                                 *map(str, args)], env=ENV, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-3000:]
        imported = {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines()
                    if line.startswith("import time:")}
        assert "kdpipe.train" in imported
        assert not {"pandas", "scipy", "matplotlib", "sympy"} & {n.split(".")[0] for n in imported}
        assert "torch._dynamo" not in imported


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


# --- teachers given by file, students of another architecture ------------------------------------

def give_teacher(work: Path, device: str, folder: str, digests=None, **files):
    """Run train-teacher on a teacher given by ``files`` (weights=, init=: paths) into s/<folder>,
    each file with its SHA-256 as the workflow hashes it (or as ``digests`` says)."""
    spec = json.loads(job_spec(recipe={"epochs": 1, "batch_size": 32}))
    spec["given"] = {part: {"path": str(path), "sha256": (digests or {}).get(part) or
                            hashlib.sha256(Path(path).read_bytes()).hexdigest()}
                     for part, path in files.items()}
    return subprocess.run([sys.executable, "-m", "kdpipe", "train-teacher", "--spec",
                           json.dumps(spec), "--data", str(work / "data/digits.pt"), "--labels",
                           str(work / "data/digits.labels.npy"), "--out", str(work / "s" / folder),
                           "--results", str(work), "--device", device],
                          env=ENV, capture_output=True, text=True)


def tensors_equal(a: Path, b: Path) -> bool:
    a, b = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_teacher_given_by_file_is_the_files_weights_and_init(teacher, device):
    """The trained teacher's files given back: the same weights, theta0 and logits, a row that
    says where it came from. Without init, no init.pt is left, not even one of an earlier
    teacher in that folder."""
    work, trained = teacher, teacher / "s/teacher"
    result = give_teacher(work, device, "given", weights=trained / "model.pt",
                          init=trained / "init.pt")
    assert result.returncode == 0, result.stderr[-3000:]
    given = work / "s/given"
    for name in ("model.pt", "init.pt"):
        assert tensors_equal(given / name, trained / name), name
    for name in ("logits.npy", "train_logits.npy"):
        np.testing.assert_array_equal(np.load(given / name), np.load(trained / name))
    row, trained_row = (json.loads((folder / "row.json").read_text()) for folder in (given, trained))
    assert (row["teacher_source"], row["seed"]) == ("file", -1)
    assert trained_row["teacher_source"] == "trained"
    assert row["given"]["weights"]["path"] == str(trained / "model.pt")
    assert row["accuracy"] == trained_row["accuracy"]

    (work / "s/bare").mkdir()
    shutil.copy(trained / "init.pt", work / "s/bare/init.pt")  # an earlier teacher's theta0
    result = give_teacher(work, device, "bare", weights=trained / "model.pt")
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (work / "s/bare/init.pt").exists()
    assert tensors_equal(work / "s/bare/model.pt", trained / "model.pt")


def test_a_teacher_file_that_does_not_fit_is_refused_naming_the_file_and_first_tensor(
        teacher, device, tmp_path):
    """The setup's teacher is an MLP of digits' 64 inputs and 10 classes at width 1: its first
    tensor, stage1.0.weight, is [256, 64]. Nothing of the teacher is written."""
    work = teacher
    mlp = models.build("mlp", (1, 8, 8), 10, 1.0).state_dict()
    cases = {
        "cnn.pt": (models.build("cnn", (1, 8, 8), 10, 1.0).state_dict(),
                   "tensor 'stage1.0.weight': expected shape [256, 64], found [32, 1, 3, 3]"),
        "narrow.pt": (models.build("mlp", (1, 8, 8), 10, 0.5).state_dict(),
                      "tensor 'stage1.0.weight': expected shape [256, 64], found [128, 64]"),
        "lacking.pt": ({k: v for k, v in mlp.items() if k != "head.bias"},
                       "it lacks tensor 'head.bias' (expected shape [10])"),
        "extra.pt": ({**mlp, "extra": torch.zeros(3)}, "unexpected tensor 'extra' (shape [3])"),
    }
    for name, (state, problem) in cases.items():
        torch.save(state, tmp_path / name)
        result = give_teacher(work, device, "misfit", weights=tmp_path / name)
        assert result.returncode == 1 and "Traceback" not in result.stderr, name
        assert (f"kdpipe train-teacher: error: {tmp_path / name} is not a state_dict of mlp at "
                f"width 1 for this dataset (inputs [1, 8, 8], 10 classes): {problem}"
                in result.stderr), result.stderr[-2000:]
    # a whole pickled model, not a state_dict; the init file is checked like the weights
    torch.save(models.build("mlp", (1, 8, 8), 10, 1.0), tmp_path / "module.pt")
    result = give_teacher(work, device, "misfit", weights=work / "s/teacher/model.pt",
                          init=tmp_path / "module.pt")
    assert result.returncode == 1
    assert f"error: {tmp_path / 'module.pt'}: torch cannot load it as a state_dict" in result.stderr
    # a file edited after the workflow hashed it
    result = give_teacher(work, device, "misfit", digests={"weights": "0" * 64},
                          weights=work / "s/teacher/model.pt")
    assert result.returncode == 1
    assert (f"error: {work / 's/teacher/model.pt'} changed after the workflow read it"
            in result.stderr)
    assert not any((work / "s/misfit").glob("*.pt")) and not (work / "s/misfit/row.json").exists()


def test_students_without_theta0_start_from_the_weights_of_their_width_and_seed(teacher, device):
    """With 0 epochs a student's logits are those of its initial weights. At width 1, a teacher
    given without initial weights (the spec's teacher_theta0 false) and students of another
    architecture (the spec's teacher_arch) both leave every method at the weights drawn from
    (width 1, seed) by the device's generator, of the students' architecture."""
    work = teacher
    result = give_teacher(work, device, "fresh", weights=work / "s/teacher/model.pt")
    assert result.returncode == 0, result.stderr[-3000:]
    block(work, device, 1.0, [3], 0, "no_theta0", teacher="fresh", teacher_theta0=False)
    block(work, device, 1.0, [3], 0, "cross", arch="cnn", teacher_arch="mlp")
    for folder, run, arch in (("fresh", "no_theta0_s3", "mlp"), ("teacher", "cross_s3", "cnn")):
        drawn = models.build(arch, (1, 8, 8), 10, 1.0)
        models.init_parameters(drawn.to(device), generator(seed_for("init", 1.0, 3), device))
        expected = outputs_of(drawn, work, device)
        for method in ("kd", "rcd", "siddo"):
            student = work / f"s/{folder}/{method}/{run}"
            np.testing.assert_allclose(np.load(student / "logits.npy"), expected, rtol=1e-5,
                                       atol=1e-6, err_msg=f"{run} {method}")
            row = json.loads((student / "row.json").read_text())
            assert (row["arch"], row["from_theta0"]) == (arch, False)
    # kd of a CNN student learns from the MLP teacher's logits
    assert "training 3" in block(work, device, 1.0, [4], 1, "cross_kd", arch="cnn",
                                 teacher_arch="mlp")


def test_feature_matching_across_architectures_needs_a_stage_both_have(teacher, device):
    """An MLP teacher, CNN students: a stage only the MLP has is refused naming both
    architectures' stages, a stage both have whose outputs no adapter maps naming both shapes;
    either before any training, and without a manifest."""
    work = teacher
    cases = {
        "stem": "feature matching: stage 'stem' is not a stage of both the teacher's "
                "architecture mlp (stages: stem, stage1, stage2, head) and the students' cnn "
                "(stages: stage1, stage2, head); set setups.s.fm_stage to a stage both have",
        "stage2": "feature matching at stage 'stage2': the student's output [2, 64, 2, 2] "
                  "cannot be mapped to the teacher's [2, 256]",
    }
    for stage, message in cases.items():
        args = block_args(work, device, 1.0, [0], 1, f"fm_{stage}", methods=("fm",),
                          options={"stage": stage}, arch="cnn", teacher_arch="mlp")
        result = subprocess.run([sys.executable, "-m", "kdpipe", *map(str, args)], env=ENV,
                                capture_output=True, text=True)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert f"kdpipe train-block: error: {message}" in result.stderr, result.stderr[-2000:]
        assert "epoch" not in result.stderr  # refused before training
        assert not (work / f"s/teacher/blocks/fm_{stage}.json").exists()


# --- training histories and kept weights ------------------------------------------------------

def kept(args: list) -> list:
    """A block's arguments with keep_student_weights on (the spec's keep_weights)."""
    at = args.index("--spec") + 1
    return [*args[:at], json.dumps({**json.loads(args[at]), "keep_weights": True}),
            *args[at + 1:]]


def test_every_model_writes_its_training_history(teacher, device):
    """history.json of the teacher (2 epochs at a constant lr of 0.001) and of each student of a
    block under a cosine schedule: one entry per epoch, finite values, the learning rate of each
    epoch's first step as the schedule gives it, worked out here, and the epoch's wall time."""
    work = teacher
    recipe = config.recipe(epochs=3, batch_size=32, lr=0.01, schedule="cosine")
    block(work, device, 0.5, [5], 3, "history", recipe=recipe)
    samples = len(torch.load(work / "data/digits.pt", weights_only=True)["x_train"])
    steps = -(-samples // 32)
    cosine = [0.5 * 0.01 * (1 + np.cos(np.pi * e * steps / (3 * steps))) for e in range(3)]
    for folder, epochs, lrs in [(work / "s/teacher", 2, [0.001, 0.001])] + [
            (work / f"s/teacher/{m}/history_s5", 3, cosine) for m in ("kd", "rcd", "siddo")]:
        history = json.loads((folder / "history.json").read_text())
        assert history["steps_per_epoch"] == steps
        assert [e["epoch"] for e in history["epochs"]] == list(range(1, epochs + 1))
        assert [e["lr"] for e in history["epochs"]] == pytest.approx(lrs, rel=1e-12)
        for epoch in history["epochs"]:
            assert 0 <= epoch["accuracy"] <= 1 and np.isfinite(epoch["loss"])
            assert epoch["seconds"] > 0


def test_kept_weights_give_the_stored_logits_exactly(teacher, device):
    work = teacher
    kdpipe_step(*kept(block_args(work, device, 0.5, [6], 1, "kept")))
    for method in ("kd", "rcd", "siddo"):
        folder = work / f"s/teacher/{method}/kept_s6"
        model = models.build("mlp", (1, 8, 8), 10, 0.5)
        model.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
        assert np.array_equal(outputs_of(model, work, device), np.load(folder / "logits.npy"))


def test_keeping_weights_retrains_no_stored_student(teacher, device):
    """Students stored without weights stay as they are when keep_student_weights is turned on
    (no model.pt); a student retrained without it loses the weights an earlier run kept."""
    work = teacher
    block(work, device, 0.5, [7], 1, "later")
    rows = [(work / f"s/teacher/{m}/later_s7/row.json").read_text() for m in ("kd", "siddo")]
    log = kdpipe_step(*kept(block_args(work, device, 0.5, [7], 1, "later")))
    assert "block of 3 students: 3 already finished, training 0" in log
    assert rows == [(work / f"s/teacher/{m}/later_s7/row.json").read_text()
                    for m in ("kd", "siddo")]
    assert not list((work / "s/teacher").glob("*/later_s7/model.pt"))
    kdpipe_step(*kept(block_args(work, device, 0.5, [7], 2, "later")))  # a new recipe: retrained
    assert len(list((work / "s/teacher").glob("*/later_s7/model.pt"))) == 3
    block(work, device, 0.5, [7], 3, "later")  # retrained again, without keeping
    assert not list((work / "s/teacher").glob("*/later_s7/model.pt"))
