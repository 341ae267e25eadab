"""What a study costs before it runs (kdpipe/cost.py, ``kdpipe plan``), against independent counts:
the jobs of Snakemake's own dry run, FLOPs worked out by hand and counted directly, the bytes a
finished tiny study wrote, scipy's exact Mann-Whitney test and the statistics table of that
study; and the data sets' facts (kdpipe.data) against what their prepare steps write."""
import json
import re
import statistics
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from scipy.stats import mannwhitneyu
from torch.utils.flop_counter import FlopCounterMode

from conftest import ENV, REPO, TINY, planned_jobs, snakemake
from fixtures import (build_audiofolder, build_imagefolder, build_shakespeare,
                      build_speechcommands, build_textfile, build_urbansound8k)
from kdpipe import config, cost, data, models, power
from kdpipe.data import text
from kdpipe.plan import Study
from kdpipe.train import Checkpoint, Learner, Recipe, generator, train

DIGITS_TRAIN, DIGITS_TEST = 539, 1258  # digits split 70 % to test: ceil(0.7 * 1797) test images


def tiny(**changes) -> dict:
    return config.validate({**json.loads(json.dumps(TINY)), **changes})


def mlp_step_by_hand(width: float, samples: int = 1) -> tuple[int, int]:
    """FLOPs of the digits MLP (64 inputs, two hidden layers of round(256 width), 10 classes) on
    ``samples`` samples: 2 in out per linear layer forward; backward, each layer's weight
    gradient (2 in out) and, but for the first layer (its input needs no gradient), its input
    gradient (2 in out)."""
    hidden = round(256 * width)
    layers = [(64, hidden), (hidden, hidden), (hidden, 10)]
    forward = sum(2 * i * o for i, o in layers)
    backward = 2 * 64 * hidden + sum(4 * i * o for i, o in layers[1:])
    return samples * forward, samples * backward


# --- jobs ----------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name", ["config.yaml", "paper.yaml"])
def test_the_jobs_per_rule_are_those_of_the_dry_run(name, tmp_path):
    path = REPO / "config" / name
    (tmp_path / "config.yaml").write_text(path.read_text())
    planned = cost.job_counts(Study(config.load(path)))
    assert planned == planned_jobs(tmp_path)
    if name == "paper.yaml":
        assert sum(planned.values()) == 593


# --- FLOPs ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("width", [0.5, 1.0, 2.0])
def test_one_mlp_step_counts_its_matmuls_by_hand(width):
    counted = cost.arithmetic("mlp", (1, 8, 8), "float32", 10, width)
    forward, backward = mlp_step_by_hand(width, samples=32)
    assert 32 * counted.forward == forward and 32 * counted.backward == backward


@pytest.mark.parametrize("arch", ["char_lstm", "char_gpt"])
def test_a_language_model_counted_at_short_lengths_equals_a_direct_count(arch):
    """The quadratic through lengths 1-3 taken at the context gives what FlopCounterMode counts
    on whole windows (here of 24 characters)."""
    with torch.device("meta"):
        model = models.build(arch, (24,), 30, 0.25)
        with FlopCounterMode(display=False) as forward:
            out = model(torch.zeros(4, 24, dtype=torch.long))
        with FlopCounterMode(display=False) as backward:
            out.sum().backward()
    counted = cost.arithmetic(arch, (24,), "int64", 30, 0.25)
    assert 4 * counted.forward == forward.get_total_flops()
    assert 4 * counted.backward == backward.get_total_flops()


def test_a_setups_flops_are_its_models_steps_and_passes():
    """The tiny study: one teacher and, per width 0.5 and 1, 3 seeds of kd, rcd and siddo, 12
    epochs of the 539 training images; every model then runs over its train and test sets."""
    plan = cost.estimate(tiny())
    (setup,) = plan.setups
    per_sample = {w: mlp_step_by_hand(w) for w in (0.5, 1.0)}
    epochs = 12
    assert setup.flops["teachers"] == sum(per_sample[1.0]) * DIGITS_TRAIN * epochs
    assert setup.flops["students"] == 9 * sum(
        sum(per_sample[w]) for w in (0.5, 1.0)) * DIGITS_TRAIN * epochs
    assert setup.flops["teacher passes"] == 0  # no augmentation: kd reads cached logits
    assert setup.flops["evaluation"] == (per_sample[1.0][0] + 9 * sum(
        per_sample[w][0] for w in (0.5, 1.0))) * (DIGITS_TRAIN + DIGITS_TEST)


def test_augmented_kd_students_add_the_teachers_forward_on_every_batch():
    recipe = {"epochs": 12, "batch_size": 32, "augment": "crop_flip"}
    plan = cost.estimate(tiny(setups={"digits-mlp": {"dataset": "digits", "arch": "mlp",
                                                     "recipe": recipe}}))
    kd_students = 3 * 2  # seeds x widths; rcd and siddo do not run the teacher
    assert plan.setups[0].flops["teacher passes"] == (
        kd_students * mlp_step_by_hand(1.0)[0] * DIGITS_TRAIN * 12)


def test_students_of_another_architecture_cost_theirs_and_the_teacher_its_own():
    """A CNN teacher with MLP students: the students' steps are the MLP's (by hand); the
    teacher's and its evaluation pass are the CNN's, which the MLP students' setup without a
    student_arch does not have."""
    recipe = {"epochs": 12, "batch_size": 32}
    plan = cost.estimate(tiny(setups={
        "cnn-to-mlp": {"dataset": "digits", "arch": "cnn", "student_arch": "mlp",
                       "recipe": recipe},
        "mlp": {"dataset": "digits", "arch": "mlp", "recipe": recipe}}))
    crossed, alone = plan.setups
    assert crossed.arch == "cnn -> mlp"
    assert crossed.flops["students"] == alone.flops["students"] == 9 * sum(
        sum(mlp_step_by_hand(w)) for w in (0.5, 1.0)) * DIGITS_TRAIN * 12
    cnn = cost.arithmetic("cnn", (1, 8, 8), "float32", 10, 1.0)
    assert crossed.flops["teachers"] == (cnn.forward + cnn.backward) * DIGITS_TRAIN * 12


def test_a_teacher_given_by_file_is_evaluated_not_trained(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "teacher.pt").write_bytes(b"weights")  # the plan reads no weights
    plan = cost.estimate(tiny(setups={"digits-mlp": {
        "dataset": "digits", "arch": "mlp", "recipe": {"epochs": 12, "batch_size": 32},
        "teachers": {"given": {"weights": "teacher.pt"}}}}))
    (setup,) = plan.setups
    forward = mlp_step_by_hand(1.0)[0]
    assert setup.flops["teachers"] == 0
    assert setup.flops["evaluation"] == (forward + 9 * sum(
        mlp_step_by_hand(w)[0] for w in (0.5, 1.0))) * (DIGITS_TRAIN + DIGITS_TEST)
    weights = cost.arithmetic("mlp", (1, 8, 8), "float32", 10, 1.0).state_bytes
    assert setup.disk["teacher weights"] == weights  # its model.pt; no init.pt


def test_hours_are_flops_over_the_calibrated_rates_and_a_missing_rate_is_named():
    rates = {("mlp", 0.5, "fp32"): {"flops_per_second": 1e9},
             ("mlp", 1.0, "fp32"): {"flops_per_second": 4e9}}
    calibration = cost.Calibration("a test device", "2.x", None, "2026-01-01", "by hand", 1,
                                   rates, source="test")
    (setup,) = cost.estimate(tiny(), calibration).setups
    f = {w: mlp_step_by_hand(w) for w in (0.5, 1.0)}
    seconds = sum(f[1.0]) * DIGITS_TRAIN * 12 / 4e9 + f[1.0][0] * (DIGITS_TRAIN + DIGITS_TEST) / 4e9
    for w in (0.5, 1.0):
        seconds += 9 * (sum(f[w]) * DIGITS_TRAIN * 12 + f[w][0] * (DIGITS_TRAIN + DIGITS_TEST)) \
            / rates[("mlp", w, "fp32")]["flops_per_second"]
    assert setup.hours == pytest.approx(seconds / 3600, rel=1e-12)
    del rates[("mlp", 0.5, "fp32")]
    (setup,) = cost.estimate(tiny(), calibration).setups
    assert setup.hours is None and setup.missing_rates == ["mlp width 0.5 fp32"]
    assert "no rate for mlp width 0.5 fp32" in cost.report(cost.estimate(tiny(), calibration))


def test_a_calibration_file_is_checked_naming_what_it_lacks(tmp_path):
    path = tmp_path / "device.json"
    path.write_text(json.dumps({"device": "x", "torch": "2", "cuda": None, "date": "d",
                                "command": "c", "learners": 1,
                                "rates": [{"arch": "mlp", "width": 1, "precision": "fp32"}]}))
    with pytest.raises(cost.PlanError, match=r"rates\[0\] lacks or garbles 'flops_per_second'"):
        cost.load_calibration(path)
    path.write_text(json.dumps({"device": "x"}))
    with pytest.raises(cost.PlanError, match="lacks torch, cuda, date, command, learners, rates"):
        cost.load_calibration(path)


def test_a_rate_measured_here_goes_through_the_calibration_file(tmp_path):
    """benchmarks/bench_device.py --calibrate writes what kdpipe plan --device-profile reads: a
    rate per (architecture, width, precision) of the config, with the device, versions, date and
    command; the plan then prints hours and where they come from."""
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({**TINY, "widths": [0.5]}))
    profile = tmp_path / "device.json"
    subprocess.run([sys.executable, str(REPO / "benchmarks/bench_device.py"), "--calibrate",
                    str(profile), "--configfile", str(study), "--seconds", "0.2"], env=ENV,
                   check=True, capture_output=True)
    calibration = cost.load_calibration(profile)
    assert set(calibration.rates) == {("mlp", 0.5, "fp32"), ("mlp", 1.0, "fp32")}
    assert calibration.torch == torch.__version__ and "--calibrate" in calibration.command
    assert all(r["flops_per_second"] > 0 and r["batch_size"] == 32
               for r in calibration.rates.values())
    result = subprocess.run([sys.executable, "-m", "kdpipe", "plan", "--configfile", str(study),
                             "--device-profile", str(profile)], env=ENV, capture_output=True,
                            text=True, check=True)
    assert f"at the training rates of {profile}" in result.stdout
    hours = re.search(r"^  total .* (\d[\d,.]*)$", result.stdout, flags=re.M)
    assert hours and float(hours.group(1).replace(",", "")) >= 0


def bench_device():
    """benchmarks/bench_device.py as a module (it is a script, not part of the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_device",
                                                  REPO / "benchmarks/bench_device.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_device_is_busy_for_the_union_of_its_kernels():
    """Kernels on two streams that overlap count once (intervals in microseconds)."""
    busy = bench_device().busy_seconds
    assert busy([(20, 30), (0, 10), (5, 15)]) == pytest.approx(25e-6)
    assert busy([(0, 100), (10, 20), (30, 40)]) == pytest.approx(100e-6)
    assert busy([]) == 0


def test_utilisation_rows_hold_the_step_s_flops_by_hand_over_its_time(tmp_path):
    """bench_device.py --utilisation: each row's FLOPs a step are K students' forward and
    backward on one batch, counted by hand for the MLP; the achieved rate is that over the
    median epoch's time a step, and its share of peak that over the matmul measured in the run;
    the profile's shares are shares."""
    out = tmp_path / "utilisation.json"
    result = subprocess.run([sys.executable, str(REPO / "benchmarks/bench_device.py"),
                             "--utilisation", "--quick", "--archs", "mlp", "--widths", "0.125",
                             "--precisions", "fp32", "--ks", "1,2", "--json", str(out)],
                            env=ENV, capture_output=True, text=True, check=True)
    found = json.loads(out.read_text())
    assert found["complete"] and found["torch"] == torch.__version__
    assert "--utilisation" in found["command"] and found["peaks"]["fp32"] > 0
    forward, backward = mlp_step_by_hand(0.125, samples=16)  # --quick: batches of 16
    for row, k, engine in zip(found["rows"], (1, 2), ("alone", "fused"), strict=True):
        assert (row["arch"], row["k"], row["engine"], row["batch_size"]) == ("mlp", k, engine, 16)
        assert row["step_flops"] == k * (forward + backward)
        assert len(row["epoch_seconds"]) == 3  # --repeats, after the warm-up epoch
        steps = row["steps_per_epoch"]
        assert row["step_seconds"] == pytest.approx(statistics.median(row["epoch_seconds"]) / steps)
        assert row["flops_per_second"] == pytest.approx(row["step_flops"] / row["step_seconds"])
        assert row["utilisation"] == pytest.approx(row["flops_per_second"] / found["peaks"]["fp32"])
        profile = row["profile"]
        assert 0 < profile["kernel_share"] <= 1 and profile["launch_share"] is None  # a CPU
        assert profile["ops_per_step"] > 0
        assert [op["name"][:6] for op in profile["top_ops"]] == ["aten::"] * 3
        assert row_line(row) in result.stdout
    assert "summary: best mlp width 0.125 K " in result.stdout
    refused = subprocess.run([sys.executable, str(REPO / "benchmarks/bench_device.py"),
                              "--utilisation", "--archs", "nope"], env=ENV, capture_output=True,
                             text=True)
    assert refused.returncode == 1 and "--archs: no workload for nope; known: " in refused.stderr


def row_line(row: dict) -> str:
    """The start of a row's printed line."""
    return f"{row['arch']:10} {row['width']:5g} {row['k']:3d} {row['precision']:9} {row['engine']}"


# --- disk, history, kept weights and power of a finished tiny study ------------------------------

@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The tiny study run to the end with its students' weights kept and the training curves
    drawn."""
    work = tmp_path_factory.mktemp("planned")
    changes = {"keep_student_weights": True,
               "plots": {"formats": ["png"], "dpi": 40, "training_curves": True}}
    (work / "config.yaml").write_text(yaml.safe_dump({**TINY, **changes}))
    snakemake(work)
    return work


def sizes(folder, pattern) -> int:
    return sum(path.stat().st_size for path in folder.glob(pattern))


@pytest.mark.slow
def test_the_disk_estimate_is_what_the_study_wrote(study, monkeypatch):
    """Logits to the byte; weights and the prepared data within 2 % (torch.save's own bytes are
    estimated); the rows, timings and histories within 15 %."""
    monkeypatch.chdir(study)
    plan = cost.estimate(config.load("config.yaml"))
    disk, results = plan.setups[0].disk, study / "results"
    teacher = results / "digits-mlp/teacher"
    assert disk["logits"] == sizes(teacher, "**/*logits.npy")
    assert disk["teacher weights"] == pytest.approx(sizes(teacher, "*.pt"), rel=0.02)
    assert disk["student weights"] == pytest.approx(sizes(teacher, "*/*/model.pt"), rel=0.02)
    small = sum(sizes(teacher, f"**/{name}") for name in ("row.json", "timing.json",
                                                          "history.json"))
    assert disk["rows and histories"] == pytest.approx(small, rel=0.15)
    assert plan.data[0].bytes == pytest.approx(sizes(results, "data/*"), rel=0.02)


def test_the_checkpoint_estimate_is_a_blocks_checkpoint(tmp_path):
    """A block of 6 students of the MLP at width 0.5, Adam: the checkpoint of its first epoch
    holds their weights, both Adam moments and their histories."""
    recipe = Recipe(**config.recipe(epochs=2, batch_size=32))
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    learners = []
    for seed in range(6):
        model = models.build("mlp", (1, 8, 8), 10, 0.5)
        models.init_parameters(model, generator(seed))
        learners.append(Learner("s", model, order_seed=seed))
    saved = Checkpoint(tmp_path / "block.pt", every=1, key="k")
    train(learners, x, y, recipe, checkpoint=saved, fuse="never")
    arithmetic = cost.arithmetic("mlp", (1, 8, 8), "float32", 10, 0.5)
    estimate = 6 * (arithmetic.state_bytes + cost.optimizer_bytes(
        config.recipe(epochs=2, batch_size=32), arithmetic))
    assert estimate == pytest.approx(saved.path.stat().st_size, rel=0.05)


@pytest.mark.slow
def test_the_planned_tests_are_the_statistics_tables_family(study, monkeypatch):
    monkeypatch.chdir(study)
    found = cost.estimate(config.load("config.yaml")).power
    stats = pd.read_parquet(study / "results/tables/stats.parquet")
    assert found.tests == int(stats["p"].notna().sum()) == power.planned_tests(
        config.load("config.yaml"))
    key = ["teacher_id", "alpha", "width", "metric", "comparison"]
    planned = found.table.set_index(key).sort_index()
    tested = stats.set_index(key).sort_index()
    assert list(planned.index) == list(tested.index)
    np.testing.assert_array_equal(planned["p_min"], tested["p_min"])
    np.testing.assert_array_equal(planned["testable"], tested["testable"].astype(bool))


@pytest.mark.slow
def test_the_training_curves_come_from_the_history_table(study):
    results = study / "results"
    history = pd.read_parquet(results / "tables/history.parquet")
    models_table = pd.read_parquet(results / "tables/models.parquet")
    # every model's 12 epochs, each with finite values
    assert len(history) == 12 * len(models_table)
    assert history.groupby(["method", "alpha", "width", "seed", "role"], dropna=False).size() \
        .eq(12).all()
    assert np.isfinite(history[["loss", "accuracy", "lr", "seconds"]].to_numpy()).all()
    assert (results / "figures/fig9_training_digits-mlp.png").stat().st_size > 1000


@pytest.mark.slow
def test_kept_student_weights_give_the_stored_logits(study):
    from kdpipe.train import predict

    results = study / "results"
    x_test = data.load(results / "data/digits.pt").x_test
    for row in pd.read_parquet(results / "tables/models.parquet").itertuples():
        if row.role != "student":
            continue
        folder = (results / row.logits_path).parent
        model = models.build("mlp", (1, 8, 8), 10, row.width)
        model.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
        assert np.array_equal(predict(model, x_test).numpy(), np.load(folder / "logits.npy"))


# --- power ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("seeds", [2, 3, 4, 5])
def test_the_smallest_p_of_each_planned_test_is_scipys_at_complete_separation(seeds):
    table = cost.estimate(tiny(seeds=list(range(seeds)))).power.table
    low, high = np.arange(seeds, dtype=float), seeds + np.arange(seeds, dtype=float)
    exact = mannwhitneyu(high, low, alternative="two-sided", method="exact").pvalue
    np.testing.assert_allclose(table["p_min"], exact, rtol=1e-12)
    assert (table["testable"] == (exact < 0.05)).all()


def test_three_seeds_warn_that_no_cell_can_be_significant():
    text = cost.report(cost.estimate(tiny()))  # 3 seeds: 2 / C(6, 3) = 0.1
    assert "WARNING: this design cannot reach significance" in text
    assert "6 of 6 cells can never reach p < 0.05" in text
    assert "Use at least 4 seeds" in text
    assert "WARNING" not in cost.report(cost.estimate(tiny(seeds=[0, 1, 2, 3])))


def test_holm_over_the_family_needs_more_seeds():
    """6 seeds: 2 / C(12, 6) = 0.0022; Holm over the 54 tests multiplies it to 0.12; 7 seeds give
    54 x 2 / 3432 = 0.031."""
    found = cost.estimate(tiny(seeds=list(range(6)), stats={"correction": "holm"})).power
    assert found.tests == 2 * 3 * 9  # widths x comparisons x metrics
    assert found.table["p_min_adjusted"].iloc[0] == pytest.approx(54 * 2 / 924)
    assert not found.table["testable"].any() and found.fewest_seeds == 7


# --- the command ---------------------------------------------------------------------------------

def test_kdpipe_plan_prints_the_papers_plan_without_data(tmp_path):
    result = subprocess.run([sys.executable, "-m", "kdpipe", "plan", "--configfile",
                             str(REPO / "config/paper.yaml")], env=ENV, capture_output=True,
                            text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    # 15 teachers; 4 widths x 10 seeds, one seed a job but digits-mlp's 10
    assert "train_block 564" in result.stdout and "total 593" in result.stdout
    assert "unknown until prepared" not in result.stdout  # every family declares its facts
    # 15 teachers x 4 widths x 3 alphas x 3 comparisons x 9 metrics
    assert "4,860 Mann-Whitney tests" in result.stdout


def test_kdpipe_plan_names_a_bad_config_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**TINY, "alphas": [1.5]}))
    result = subprocess.run([sys.executable, "-m", "kdpipe", "plan", "--configfile", str(path)],
                            env=ENV, capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "kdpipe plan: error: config error at alphas[0]" in result.stderr


def test_a_folder_data_set_is_unknown_until_it_is_there(tmp_path, monkeypatch):
    """An imagefolder set without its folder: its setup's jobs and power are planned, its FLOPs,
    hours and disk are not; once the folder is there, they come from a look at it."""
    monkeypatch.chdir(tmp_path)
    own = tiny(datasets={"own": {"family": "imagefolder", "options": {"size": 8}}},
               setups={"own-cnn": {"dataset": "own", "arch": "cnn",
                                   "recipe": {"epochs": 1, "batch_size": 4}}})
    plan = cost.estimate(own)
    assert plan.data[0].facts is None and plan.setups[0].flops is None
    assert "unknown until prepared" in cost.report(plan)
    options = build_imagefolder(tmp_path / "data/own")  # 16 images of 2 classes
    plan = cost.estimate({**own, "datasets": {"own": {**own["datasets"]["own"],
                                                      "options": {"size": 8, **options}}}})
    assert plan.data[0].facts == data.Facts(12, 4, (3, 8, 8), "uint8", 2)
    assert plan.setups[0].flops["students"] > 0


# --- the data sets' facts -----------------------------------------------------------------------

def test_digits_facts_are_its_prepared_split():
    for fraction in (0.7, 0.25, 0.5):
        prepared = data.family("digits").prepare({"test_fraction": fraction}, None)
        found = data.facts("digits", {"test_fraction": fraction})
        assert (found.train, found.test) == (len(prepared["x_train"]), len(prepared["x_test"]))
        assert found.input_shape == tuple(prepared["x_train"].shape[1:])


@pytest.mark.parametrize("family, build", [
    ("imagefolder", build_imagefolder), ("audiofolder", build_audiofolder),
    ("textfile", build_textfile)])
def test_a_look_at_a_researchers_files_gives_what_prepare_writes(family, build, tmp_path):
    raw = tmp_path / "raw"
    options = build(raw)
    assert data.facts(family, options) is None
    data.prepare(family, options, raw, tmp_path / "prepared.pt")
    assert data.scan(family, options, raw) == data.prepared_facts(tmp_path / "prepared.pt")


@pytest.mark.parametrize("family, build, options", [
    ("speechcommands", build_speechcommands, {"features": "waveform"}),
    ("speechcommands", build_speechcommands, {"features": "logmel", "hop_length": 100}),
    ("urbansound8k", build_urbansound8k, {"features": "logmel", "seconds": 1.5})])
def test_the_audio_families_declare_the_shape_they_prepare(family, build, options, tmp_path):
    build(tmp_path)
    prepared = data.prepare(family, options, tmp_path, tmp_path / "prepared.pt")
    assert data.facts(family, options).input_shape == prepared.input_shape


def test_the_windows_of_a_text_are_those_prepared(tmp_path):
    """The window arithmetic shared with the official file's declared facts, on a synthetic
    text of the same family."""
    options = build_shakespeare(tmp_path)
    prepared = data.prepare("shakespeare", options, tmp_path, tmp_path / "prepared.pt")
    characters = len((tmp_path / "input.txt").read_text())
    options = text.check_windows("shakespeare", {**text.WINDOW_DEFAULTS, **options})
    found = text.window_facts(characters, len(prepared.classes), options, "input.txt")
    assert found == data.prepared_facts(tmp_path / "prepared.pt")


@pytest.mark.parametrize("options", [{}, {"context": 256, "stride": 64},
                                     {"context": 100, "test_fraction": 0.3}])
def test_tiny_shakespeares_declared_facts_are_the_official_files(options, shared_data, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "input.txt").write_bytes((shared_data / "tinyshakespeare/input.txt").read_bytes())
    data.prepare("shakespeare", options, raw, tmp_path / "prepared.pt")
    assert data.facts("shakespeare", options) == data.prepared_facts(tmp_path / "prepared.pt")


def test_every_family_declares_facts_or_says_it_cannot():
    for name in data.FAMILIES:
        assert callable(getattr(data.family(name), "facts", None)), name


def test_feature_matching_students_add_the_teachers_forward_to_their_stage():
    """fm's target is the teacher's output of its stage on every batch: for the MLP the stage
    before the head, two layers of the teacher (2 in out each)."""
    plan = cost.estimate(tiny(feature_matching={"enabled": True}))
    fm_students = 1 * 2 * 3  # alphas x widths x seeds; fm-rcd's targets are noise
    stage = 2 * 64 * 256 + 2 * 256 * 256
    assert plan.setups[0].flops["teacher passes"] == fm_students * stage * DIGITS_TRAIN * 12


def test_kdpipe_plan_calibrates_this_cpu_on_request(tmp_path):
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({**TINY, "widths": [1]}))
    result = subprocess.run([sys.executable, "-m", "kdpipe", "plan", "--configfile", str(study),
                             "--calibrate-here"], env=ENV, capture_output=True, text=True,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"mlp width 1 fp32: [\d.]+ GFLOP/s", result.stderr)
    assert "device-hours: one job at a time on CPU" in result.stdout
