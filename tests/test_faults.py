"""Fault injection: every failure stops with a message that names the file or config key and the
remedy, and nothing half-written or silently wrong is left (docs/troubleshooting.md). The
failures and the tests that cover them:

1. divergence: training stops naming learner, epoch and loss
   (test_a_non_finite_loss_stops_training_naming_learner_epoch_and_loss,
   test_a_diverging_run_stops_naming_learner_epoch_and_loss_and_scores_nothing); the metrics refuse
   non-finite logits (test_non_finite_logits_are_refused); collect refuses NaN metrics where they
   cannot be (the NaN cases of test_collect_names_a_missing_or_damaged_student_file_and_the_remedy,
   and test_an_agreement_over_an_empty_subset_may_be_nan where they can); a teacher at chance is
   flagged in its log (test_a_teacher_at_chance_is_flagged,
   test_a_teacher_trained_to_nothing_gets_a_warning_in_its_log) and in the audit
   (test_at_chance_is_a_one_sided_binomial_test,
   test_a_teacher_at_chance_is_flagged_in_the_table_and_its_figure).
2. a --configfile replaces the default study: test_a_configfile_replaces_the_default_study,
   test_without_a_configfile_the_default_study_runs.
3. lost or damaged outputs named by collect with the remedy: test_collect_reads_a_sound_study,
   test_collect_names_a_missing_or_damaged_student_file_and_the_remedy,
   test_collect_names_damaged_labels, test_a_lost_student_file_stops_collect_with_the_remedy_which_works.
4. a damaged checkpoint set aside: test_a_damaged_checkpoint_is_set_aside_and_training_starts_over;
   a damaged prepared data file named: test_a_damaged_prepared_file_is_named_when_loaded.
5. numbers that collide in paths: test_numbers_that_print_alike_get_their_own_paths_and_values.

Clear messages:
- YAML and config errors name the key: test_bad_config_stops_before_any_job_naming_key_and_value,
  test_a_yaml_syntax_error_stops_before_any_job_and_verbose_names_line_and_column.
- dataset options out of range, checked by their family when prepared (one place for every
  family): test_digits_options_out_of_range_name_the_option.
- devices: test_every_torch_device_form_is_accepted, test_every_device_form_passes_the_schema,
  test_other_devices_are_refused, the device rows of
  test_bad_config_stops_before_any_job_naming_key_and_value, test_an_absent_cuda_device_is_named.
- a dataset of fewer than two classes: test_a_single_class_is_refused_when_prepared.
- a full disk: test_a_full_disk_names_the_folder_and_leaves_the_old_file_and_no_temporary,
  test_a_full_disk_behind_a_bare_error_is_named_too, test_other_write_errors_pass_unchanged.
- names with spaces: test_names_that_a_path_cannot_carry_are_refused, the name rows of
  test_bad_config_stops_before_any_job_naming_key_and_value.
- nothing left in /tmp: test_a_local_run_leaves_nothing_in_tmp.
- data files cut short (an interrupted download or extraction) are refused by name, never read
  in part: the section "data files cut short" at the end.
"""
import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request

import numpy as np
import pandas as pd
import pytest
import soundfile
import torch
from scipy.io import savemat

from conftest import (ENV, LABELS, REPO, TEACHER, TEACHER_CONFIDENCE, TINY, fresh_mlp, full_recipe,
                      job_spec, kdpipe_step, logits_for, planned_jobs, prepare_digits,
                      schema_errors, snakemake, tables, toy_data, write_audit_study, write_config)
from fixtures import (WNIDS, build_cifar10, build_imagefolder, build_shakespeare,
                      build_speechcommands, build_svhn, build_tinyimagenet, tone)
from kdpipe import audit, data, io, jobs
from kdpipe.data import DataError, audio, family, text
from kdpipe.io import ResultError
from kdpipe.metrics import accuracy, cross_entropy, student_metrics
from kdpipe.tables import collect_rows
from kdpipe.train import Checkpoint, Learner, RandomLogits, TrainingDiverged, train


# --- 1. divergence: training, metrics, a teacher at chance -------------------------------------

def test_a_non_finite_loss_stops_training_naming_learner_epoch_and_loss():
    """At SGD lr 1e4 the logits become NaN, which would score as perfect agreement: training
    stops instead."""
    x, y = toy_data()
    learners = [Learner("kd", fresh_mlp(width=1), order_seed=0),
                Learner("rcd", fresh_mlp(width=1), RandomLogits(len(x), 3, seed=1), 0.5,
                        order_seed=0)]
    with pytest.raises(TrainingDiverged, match=r"learner 'kd'.* (nan|inf) in epoch 1"):
        train(learners, x, y, full_recipe(epochs=3, batch_size=16, optimizer="sgd", lr=1e4))
    assert issubclass(TrainingDiverged, RuntimeError)


@pytest.mark.slow
def test_a_diverging_run_stops_naming_learner_epoch_and_loss_and_scores_nothing(tmp_path):
    """At SGD lr 1e4 every logit becomes NaN, which would score as perfect agreement: the job
    stops naming learner, epoch and loss, and no table is written."""
    write_config(tmp_path, widths=[1], seeds=[0],
                 setups={"digits-mlp": {"dataset": "digits", "arch": "mlp",
                                        "recipe": {"epochs": 2, "batch_size": 32,
                                                   "optimizer": "sgd", "lr": 1.0e4}}})
    result = snakemake(tmp_path, check=False)
    console = result.stdout + result.stderr
    assert result.returncode != 0
    assert re.search(r"training diverged: learner '\w+' had a mean training loss of \S+ in "
                     r"epoch \d", console), console[-3000:]
    assert not (tmp_path / "results/tables/models.parquet").exists()


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_logits_are_refused(bad):
    good = np.array([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]])
    broken = good.copy()
    broken[1] = bad  # argmax of an all-NaN row is 0: it would agree with a class-0 teacher
    labels = np.array([2, 0])
    for student, teacher, name in ((broken, good, "student logits"), (good, broken, "teacher logits")):
        with pytest.raises(ValueError, match=f"{name} are not finite.*row 1"):
            student_metrics(student, teacher, labels)
    with pytest.raises(ValueError, match="not finite"):
        accuracy(broken, labels)
    with pytest.raises(ValueError, match="not finite"):
        cross_entropy(broken, labels)
    with pytest.raises(ValueError, match="not finite"):
        student_metrics(good, [[0.0, 1.0, 2.0], [-np.inf] * 3], labels)


# (Metrics that are NaN where they cannot be: collect refuses them, in section 3's table.)


def test_a_teacher_at_chance_is_flagged():
    labels = np.repeat(np.arange(10), 100)
    assert "at chance" in jobs.chance_warning(110, labels)
    assert jobs.chance_warning(500, labels) is None
    skewed = np.array([0] * 900 + [1] * 100)  # always guessing 0 already scores 0.9
    assert "at chance" in jobs.chance_warning(900, skewed)


def test_a_teacher_trained_to_nothing_gets_a_warning_in_its_log(tmp_path):
    data_file, labels = prepare_digits(tmp_path)
    log = kdpipe_step("train-teacher", "--spec",
                      job_spec(seed=0, recipe={"epochs": 1, "batch_size": 32, "lr": 1e-9}),
                      "--data", data_file, "--labels", labels, "--out", tmp_path / "t",
                      "--results", tmp_path, "--device", "cpu")
    assert "WARNING: the teacher's test accuracy" in log


def test_at_chance_is_a_one_sided_binomial_test():
    # P(X >= 9 | n = 20, p = 0.25) = 0.041 (scipy.stats.binom.sf(8, 20, 0.25)): above chance
    assert not audit.at_chance(9, 20, 0.25)
    assert audit.at_chance(8, 20, 0.25)  # P(X >= 8) = 0.10
    assert audit.chance_accuracy([0, 0, 0, 1]) == 0.75  # the majority class, not 1/C


def test_a_teacher_at_chance_is_flagged_in_the_table_and_its_figure(tmp_path):
    models = write_audit_study(tmp_path)
    always_zero = logits_for(np.zeros(len(LABELS), dtype=int), TEACHER_CONFIDENCE)  # 25 %: chance
    np.save(tmp_path / "perfect" / "teacher.npy", always_zero)
    errors = audit.teacher_errors(models, tmp_path)
    flags = errors.groupby("setup")[["teacher_accuracy", "chance_accuracy", "at_chance"]].first()
    assert flags.loc["perfect"].tolist() == [0.25, 0.25, True]
    assert flags.loc["errant"].tolist() == [13 / 20, 0.25, False]  # binomial p = 1e-4
    fig = audit.audit_figure("perfect", errors, audit.copied_errors(models, tmp_path), always_zero,
                             LABELS)
    assert "the teacher is at chance" in fig._suptitle.get_text()
    fig = audit.audit_figure("errant", errors, audit.copied_errors(models, tmp_path),
                             logits_for(TEACHER, TEACHER_CONFIDENCE), LABELS)
    assert "chance" not in fig._suptitle.get_text()


# --- 2. a --configfile replaces the default study ----------------------------------------------

# The paper study's job graph; update here when the workflow's jobs change.
PAPER_JOBS = {"prepare_data": 9, "train_teacher": 15, "train_block": 564,
              "collect": 1, "statistics": 1, "figures": 1, "audit": 1, "all": 1}


def with_default_config(workdir):
    """A working directory that holds config/config.yaml, as the repository root does."""
    (workdir / "config").mkdir()
    shutil.copy(REPO / "config/config.yaml", workdir / "config/config.yaml")
    return workdir


@pytest.mark.slow
def test_a_configfile_replaces_the_default_study(tmp_path):
    workdir = with_default_config(tmp_path)
    paper = shutil.copy(REPO / "config/paper.yaml", workdir / "paper.yaml")
    assert planned_jobs(workdir, paper) == PAPER_JOBS
    dry_run = snakemake(workdir, "-n", config=paper)
    assert "digits-cnn" not in dry_run.stdout + dry_run.stderr  # a setup of the default study only


@pytest.mark.slow
def test_without_a_configfile_the_default_study_runs(tmp_path):
    workdir = with_default_config(tmp_path)
    result = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"),
                             "--directory", str(workdir), "-n"],
                            capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    # 3 widths x (digits-mlp: 2 blocks of 4 seeds; digits-cnn: 4 blocks of 2)
    assert re.search(r"train_block\s+18\n", result.stdout)


# --- 3. lost or damaged outputs: collect names the file and the remedy -------------------------

N, C = 12, 3


def teacher_row(**changes) -> dict:
    return {"setup": "s", "dataset": "d", "arch": "mlp", "role": "teacher", "teacher_id": "s/teacher",
            "method": "", "alpha": None, "temperature": None, "width": 1.0, "seed": 0,
            "accuracy": 0.75, "loss": 0.6, "train_loss": 0.3, "n_teacher_correct": 9,
            "n_teacher_incorrect": 3, "logits_path": "s/teacher/logits.npy",
            "labels_path": "data/d.labels.npy", **changes}


def student_row(**changes) -> dict:
    return {**teacher_row(), "role": "student", "method": "kd", "alpha": 0.5, "temperature": 1.0,
            "accuracy": 0.5, "loss": 0.9, "train_loss": 0.4, "activation_distance": 0.2,
            "js_divergence": 0.1, "prediction_agreement": 0.8, "correct_agreement": 0.9,
            "incorrect_agreement": 0.5, "rank_disagreement": 0.1,
            "logits_path": "s/teacher/kd/a0.5_T1_w1_s0/logits.npy", **changes}


@pytest.fixture
def study(tmp_path):
    """A tiny results folder: labels, a teacher and one kd student, each with its row.json."""
    rng = np.random.default_rng(0)
    (tmp_path / "data").mkdir()
    np.save(tmp_path / "data/d.labels.npy", rng.integers(0, C, N).astype(np.int64))
    rows = []
    for row in (teacher_row(), student_row()):
        logits = tmp_path / row["logits_path"]
        logits.parent.mkdir(parents=True, exist_ok=True)
        np.save(logits, rng.normal(size=(N, C)).astype(np.float32))
        (logits.parent / "row.json").write_text(json.dumps(row))
        rows.append(logits.parent / "row.json")
    return tmp_path, rows


def student_folder(results):
    return results / student_row()["logits_path"].rsplit("/", 1)[0]


def test_collect_reads_a_sound_study(study):
    results, rows = study
    table = collect_rows(rows, results)
    assert list(table.role) == ["teacher", "student"]
    assert list(table.device) == ["", ""]  # rows stored before devices were recorded


def write_logits(array):
    return lambda folder: np.save(folder / "logits.npy", array)


def truncate(folder):
    data = (folder / "logits.npy").read_bytes()
    (folder / "logits.npy").write_bytes(data[:len(data) // 2])


def edit_row(**changes):
    def edit(folder):
        row = json.loads((folder / "row.json").read_text())
        (folder / "row.json").write_text(json.dumps({**row, **changes}))
    return edit


@pytest.mark.parametrize("damage, problem", [
    (lambda f: (f / "logits.npy").unlink(), r"test logits \S+logits.npy of \S+row.json are missing"),
    (truncate, r"test logits \S+logits.npy of \S+ are unreadable"),
    (write_logits(np.zeros((N - 1, C), np.float32)), r"float32 \[11, 3\], not float32 \[12, 3\]"),
    (write_logits(np.zeros((N, C + 1), np.float32)), r"float32 \[12, 4\], not float32 \[12, 3\]"),
    (write_logits(np.zeros((N, C))), r"float64 \[12, 3\], not float32 \[12, 3\]"),
    (write_logits(np.full((N, C), np.nan, np.float32)), r"not finite everywhere"),
    (lambda f: (f / "row.json").unlink(), r"model row \S+row.json is missing"),
    (lambda f: (f / "row.json").write_text('{"setup": "s", "acc'), r"model row \S+ is damaged"),
    (edit_row(accuracy=float("nan")), r"metrics that must be numbers: accuracy=nan"),
    (edit_row(js_divergence=None), r"metrics that must be numbers: js_divergence=None"),
    (edit_row(correct_agreement=float("nan")), r"must be numbers: correct_agreement=nan"),
])
def test_collect_names_a_missing_or_damaged_student_file_and_the_remedy(study, damage, problem):
    results, rows = study
    folder = student_folder(results)
    damage(folder)
    with pytest.raises(ResultError, match=problem) as error:
        collect_rows(rows, results)
    assert f"remove the folder {folder} and run the workflow again" in str(error.value)


def test_collect_names_damaged_labels(study):
    results, rows = study
    np.save(results / "data/d.labels.npy", np.zeros(N, np.float32))
    with pytest.raises(ResultError, match=r"test labels \S+d.labels.npy are float32 \[12\], not "
                                          r"int64 \[N\]; remove them"):
        collect_rows(rows, results)


def test_an_agreement_over_an_empty_subset_may_be_nan(study):
    """A teacher with no errors leaves incorrect agreement undefined: that NaN is not damage."""
    results, rows = study
    edit_row(incorrect_agreement=float("nan"), n_teacher_correct=N,
             n_teacher_incorrect=0)(student_folder(results))
    assert np.isnan(collect_rows(rows, results).incorrect_agreement.iloc[1])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A tiny finished study, run with its own TMPDIR."""
    workdir = tmp_path_factory.mktemp("faults")
    scratch = workdir / "tmp"
    scratch.mkdir()
    write_config(workdir, widths=[1], seeds=[0, 1],
                 setups={"digits-mlp": {"dataset": "digits", "arch": "mlp",
                                        "recipe": {"epochs": 2, "batch_size": 32}}},
                 plots={"formats": ["png"], "dpi": 40}, stats={"bootstrap": 10})
    result = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"),
                             "--directory", str(workdir), "--configfile",
                             str(workdir / "config.yaml"), "--cores", "2"],
                            capture_output=True, text=True, timeout=900,
                            env={**ENV, "TMPDIR": str(scratch)})
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, scratch


@pytest.mark.slow
def test_a_lost_student_file_stops_collect_with_the_remedy_which_works(finished, tmp_path):
    original, _ = finished
    workdir = tmp_path / "study"
    shutil.copytree(original, workdir, symlinks=True)
    folder = workdir / "results/digits-mlp/teacher/kd/a0.5_T1_w1_s1"
    (folder / "logits.npy").unlink()
    result = snakemake(workdir, "--forcerun", "collect", check=False)
    console = result.stdout + result.stderr
    assert result.returncode != 0
    # the job's log on the console (show-failed-logs): the file, and what to do
    found = re.search(r"kdpipe collect: error: test logits \S+/kd/a0.5_T1_w1_s1/logits.npy of "
                      r"\S+row.json are missing; remove the folder \S+ and its block's manifest "
                      r"(\S+), and run", console)
    assert found, console[-3000:]
    shutil.rmtree(folder)
    (workdir / found.group(1)).unlink()
    snakemake(workdir)
    # the student is retrained alone, not stacked with the others of its block: the same result
    # to float rounding (kdpipe.train)
    for name, table in tables(workdir).items():
        pd.testing.assert_frame_equal(table, tables(original)[name], rtol=1e-4, obj=name)


# --- 4. a damaged checkpoint, damaged prepared data --------------------------------------------

def test_a_damaged_checkpoint_is_set_aside_and_training_starts_over(tmp_path, capsys):
    """A truncated checkpoint is named and set aside, and training starts over, rather than
    blocking its job."""
    x, y = toy_data()
    recipe = full_recipe(epochs=4, batch_size=16)
    checkpoint = Checkpoint(tmp_path / "state.pt", every=2, key="job")
    train([Learner("m", fresh_mlp(), order_seed=0)], x, y, recipe,
          checkpoint=Checkpoint(checkpoint.path, every=2, key="job"), log=lambda e, _: None)
    whole = checkpoint.path.read_bytes()
    checkpoint.path.write_bytes(whole[:len(whole) // 2])
    capsys.readouterr()
    learner, seen = Learner("m", fresh_mlp(), order_seed=0), []
    train([learner], x, y, recipe, checkpoint=checkpoint, log=lambda e, _: seen.append(e))
    assert seen == [1, 2, 3, 4]  # from scratch
    damaged = tmp_path / "state.pt.damaged"
    assert damaged.read_bytes() == whole[:len(whole) // 2]
    assert str(checkpoint.path) in capsys.readouterr().err
    reference = Learner("m", fresh_mlp(), order_seed=0)
    train([reference], x, y, recipe)
    for p, q in zip(reference.model.parameters(), learner.model.parameters()):
        assert torch.equal(p, q)


def test_a_damaged_prepared_file_is_named_when_loaded(tmp_path):
    out = tmp_path / "digits.pt"
    data.prepare("digits", {}, tmp_path, out)
    out.write_bytes(out.read_bytes()[:5000])
    with pytest.raises(DataError, match=f"{out}: damaged prepared data file"):
        data.load(out)
    out.write_bytes(b"not a torch file")
    with pytest.raises(DataError, match=f"{out}: damaged prepared data file"):
        data.load(out)
    out.unlink()
    with pytest.raises(DataError, match=f"{out}: prepared data file is missing"):
        data.load(out)


# --- 5. numbers that collide in paths ----------------------------------------------------------

@pytest.mark.slow
def test_numbers_that_print_alike_get_their_own_paths_and_values(tmp_path):
    """%g made a0.5 of both 0.5 and 0.5000001: one student trained for two alphas."""
    write_config(tmp_path, alphas=[0.5, 0.5000001], widths=[1], seeds=[0])
    dry_run = snakemake(tmp_path, "-n", "-p").stdout
    # the block trains both, each in its own folder, at its own alpha
    assert '{"alpha": 0.5, "method": "kd", "run": "a0.5_T1_w1_s0"' in dry_run
    assert '{"alpha": 0.5000001, "method": "kd", "run": "a0.5000001_T1_w1_s0"' in dry_run


# --- clear messages: config, YAML, data options, devices, classes, disk, /tmp ------------------

@pytest.mark.slow
@pytest.mark.parametrize("change, message", [
    ({"colour": "red"}, r"config error at \(top level\): Additional properties are not allowed \('colour'"),
    ({"alphas": [0.5, 1.5]}, r"config error at alphas\[1\]: 1.5 is greater than the maximum of 1"),
    ({"seeds": []}, r"config error at seeds: \[\] should be non-empty"),
    ({"widths": [1, 0]}, r"config error at widths\[1\]: 0 is less than or equal to the minimum of 0"),
    ({"threads": "two"}, r"config error at threads: 'two' is not of type 'integer'"),
    ({"setups": {"x": {"dataset": "digits", "arch": "resnet-9000",
                       "recipe": {"epochs": 1, "batch_size": 8}}}},
     r"config error at setups.x.arch: 'resnet-9000' is not one of"),
    ({"datasets": {"digits": {"family": "mnist-typo"}}},
     r"config error at datasets.digits.family: 'mnist-typo' is not one of"),
    ({"setups": {"x": {"dataset": "cifar", "arch": "mlp", "recipe": {"epochs": 1, "batch_size": 8}}}},
     r"config error at setups.x.dataset: unknown dataset 'cifar'"),
    ({"kd_masked": {"enabled": True, "mode": "classes"}},
     r"config error at kd_masked.incorrect_weight: 0 with mode classes makes the KD target one-hot"),
    # names that would break paths, and devices torch does not know
    ({"results": "my results"}, r"config error at results: 'my results' does not match"),
    ({"data_dir": "raw data"}, r"config error at data_dir: 'raw data' does not match"),
    ({"setups": {"digits mlp": {"dataset": "digits", "arch": "mlp",
                                "recipe": {"epochs": 1, "batch_size": 8}}}},
     r"config error at setups: 'digits mlp' does not match"),
    ({"datasets": {"my digits": {"family": "digits"}}},
     r"config error at datasets: 'my digits' does not match"),
    ({"setups": {"digits-mlp": {"dataset": "digits", "arch": "mlp",
                                "recipe": {"epochs": 1, "batch_size": 8, "precision": "fp16"}}}},
     r"config error at setups.digits-mlp.recipe.precision: 'fp16' is not one of"),
    ({"device": "gpu"}, r"config error at device: 'gpu' does not match"),
    ({"device": "cuda:x"}, r"config error at device: 'cuda:x' does not match"),
])
def test_bad_config_stops_before_any_job_naming_key_and_value(tmp_path, change, message):
    write_config(tmp_path, **change)
    result = snakemake(tmp_path, "-n", check=False)
    console = result.stdout + result.stderr
    assert result.returncode != 0
    assert re.search(message, console), console
    assert "eval_batch_size" not in console  # the key and the problem, not the filled config
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_a_yaml_syntax_error_stops_before_any_job_and_verbose_names_line_and_column(tmp_path):
    """Snakemake reads the file before the workflow starts and says no more than that it is not
    YAML; its --verbose traceback names where (docs/troubleshooting.md)."""
    config = tmp_path / "config.yaml"
    config.write_text("datasets:\n  digits: {family: digits\nseeds: [0]\n")  # an unclosed brace
    result = snakemake(tmp_path, "-n", "--verbose", check=False)
    console = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Config file is not valid JSON or YAML" in console, console[-3000:]
    assert f'in "{config}", line 2, column 11' in console, console[-3000:]  # the brace
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("changes", [
    {"results": "my results"}, {"results": "out$dir"}, {"data_dir": "raw data"},
    {"datasets": {"my digits": {"family": "digits"}}},
    {"setups": {"digits mlp": TINY["setups"]["digits-mlp"]}},
])
def test_names_that_a_path_cannot_carry_are_refused(changes):
    assert len(schema_errors(**changes)) == 1 and "does not match" in schema_errors(**changes)[0]


@pytest.mark.parametrize("options, key", [({"test_fraction": 1.5}, "test_fraction"),
                                          ({"test_fraction": 0}, "test_fraction"),
                                          ({"split_seed": -1}, "split_seed")])
def test_digits_options_out_of_range_name_the_option(options, key):
    with pytest.raises(DataError, match=f"dataset 'digits': option '{key}'"):
        family("digits").prepare(options, None)


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12", "mps"])
def test_every_torch_device_form_is_accepted(device):
    assert schema_errors(device=device) == []


@pytest.mark.slow
@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1", "mps"])
def test_every_device_form_passes_the_schema(tmp_path, device):
    write_config(tmp_path, device=device)
    assert planned_jobs(tmp_path)["train_teacher"] == 1


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:x", "CUDA", "cpu ", ""])
def test_other_devices_are_refused(device):
    assert schema_errors(device=device) == [
        f"{device!r} does not match '^(auto|cpu|mps|cuda(:[0-9]+)?)$'"]


def test_an_absent_cuda_device_is_named():
    with pytest.raises(jobs.JobError, match=r"config device is 'cuda:99', but torch finds \d+ "
                                            r"CUDA device\(s\) here .*set device: auto or cpu"):
        jobs.setup_torch(1, "cuda:99")
    assert jobs.setup_torch(1, "cpu") == "cpu"


def test_a_single_class_is_refused_when_prepared(tmp_path):
    build_speechcommands(tmp_path)
    out = tmp_path / "one-word.pt"
    with pytest.raises(DataError, match="dataset 'speechcommands': 1 class"):
        data.prepare("speechcommands", {"words": ["one"]}, tmp_path, out)
    assert not out.exists()


def test_a_full_disk_names_the_folder_and_leaves_the_old_file_and_no_temporary(tmp_path,
                                                                                monkeypatch):
    target = tmp_path / "logits.npy"
    np.save(target, np.ones(3, np.float32))  # a finished result, to be kept

    def full_disk_save(file, array):
        file.write(b"\x93NUMPY half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "save", full_disk_save)
    with pytest.raises(ResultError, match=f"no space left on {re.escape(str(tmp_path))} while "
                                          "writing logits.npy: nothing was written"):
        io.write_npy(target, np.zeros(3, np.float32))
    assert os.listdir(tmp_path) == ["logits.npy"]
    monkeypatch.undo()
    assert np.array_equal(np.load(target), np.ones(3, np.float32))


def test_a_full_disk_behind_a_bare_error_is_named_too(tmp_path, monkeypatch):
    """torch.save reports a full disk as a RuntimeError without errno: the free space decides."""
    class Full:
        f_bavail = 0

    monkeypatch.setattr(os, "statvfs", lambda folder: Full)
    with pytest.raises(ResultError, match="no space left on"):
        with io.atomic_path(tmp_path / "model.pt"):
            raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos")
    assert os.listdir(tmp_path) == []


def test_other_write_errors_pass_unchanged(tmp_path):
    with pytest.raises(RuntimeError, match="not a disk problem"):
        with io.atomic_path(tmp_path / "x.json"):
            raise RuntimeError("not a disk problem")
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_a_local_run_leaves_nothing_in_tmp(finished):
    _, scratch = finished
    assert os.listdir(scratch) == []


# --- too few seeds for a verdict: NA with a note, said at parse and in the statistics log -------

@pytest.mark.slow
def test_two_seeds_give_no_verdicts_and_say_so_before_and_after(finished):
    """With 2 seeds per group no two-sided Mann-Whitney test can go below 2 / C(4, 2) = 1/3: the
    tables hold no True or False verdict, only NA with the reason; the config check said so
    before any job and the statistics log names the cells."""
    workdir, _ = finished
    t = tables(workdir)
    assert set(t["models"].seed) == {0, 1} and set(t["models"].width) == {1.0}
    stats, claims = t["stats"], pd.read_parquet(workdir / "results/tables/claims.parquet")
    tested = stats.p.notna()
    assert tested.any()
    assert stats.significant.isna().all() and not stats.testable.any()
    assert (stats.loc[tested, "p_min"] == 1 / 3).all()
    assert (stats.loc[tested, "verdict_note"] == "2 and 2 seeds: the smallest two-sided p is 0.33, "
            "not below the level 0.05; this test cannot reject").all()
    assert stats.loc[~tested, "verdict_note"].str.startswith("no test: ").all()
    assert stats.toward_teacher.notna().sum() > 0  # a direction, not a verdict: kept
    assert len(claims) == 1
    assert claims.claim_holds.isna().all() and claims.rcd_below_kd.isna().all()
    assert claims.verdict_note.iloc[0] == stats.loc[(stats.metric == "accuracy") & (
        stats.comparison == "kd_vs_rcd"), "verdict_note"].iloc[0]
    log = (workdir / "results/logs/statistics.log").read_text()
    assert (f"warning: {tested.sum()} of {tested.sum()} Mann-Whitney tests cannot reach p < 0.05 "
            "whatever the data (too few seeds)") in log
    assert ("  setup digits-mlp, teacher digits-mlp/teacher, 2 and 2 seeds (smallest p 0.33): "
            "alpha 0.5; T 1; width 1; kd_vs_rcd, kd_vs_siddo, rcd_vs_siddo\n") in log
    # the config check, at every parse: 1 teacher x 1 width x 1 alpha x 1 T x 3 comparisons x 9
    # metrics = 27 tests; Holm over them needs 2 / C(14, 7) * 27 = 0.016 (6 seeds: 0.058)
    parse = snakemake(workdir, "-n").stderr
    assert ("warning: with 2 seeds per group no Mann-Whitney test can reach p < 0.05 (smallest p "
            "0.33); every significance verdict and claim will be NA (untestable). Use at least 4 "
            "seeds (7 with Holm over 27 tests).") in parse


# --- data files cut short: refused by name, with the sizes and the remedy ----------------------

def cut(path, keep: float) -> tuple[int, int]:
    """Truncate ``path`` to ``keep`` of its bytes; return (its size before, its size after)."""
    whole = path.read_bytes()
    path.write_bytes(whole[:int(len(whole) * keep)])
    return len(whole), path.stat().st_size


@pytest.mark.parametrize("subtype, channels", [("PCM_16", 1), ("PCM_U8", 1), ("PCM_24", 2),
                                               ("FLOAT", 1)])
def test_a_wav_cut_short_is_refused_not_zero_padded(tmp_path, subtype, channels):
    """libsndfile reads the samples a cut WAV still holds; the clip would be padded to length."""
    samples = tone(440.0, 0.5, 16000)
    path = tmp_path / "clip.wav"
    soundfile.write(path, np.stack([samples] * channels, axis=1), 16000, subtype)
    whole, present = cut(path, 0.5)
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}: cut short: its WAV header says "
                                        rf"the file holds {whole:,} bytes .*but it has "
                                        rf"{present:,}.*re-download or re-extract"):
        audio.read_wav(path)
    path.write_bytes(path.read_bytes()[:30])  # cut inside the format chunk
    with pytest.raises(DataError, match=r"clip.wav: cut short: .*chunk 'fmt '"):
        audio.read_wav(path)


def test_a_speech_commands_clip_cut_short_stops_prepare_naming_it(tmp_path):
    build_speechcommands(tmp_path)
    clip = tmp_path / "speech_commands_v0.02" / "one" / sorted(
        p.name for p in (tmp_path / "speech_commands_v0.02" / "one").iterdir())[0]
    cut(clip, 0.6)
    with pytest.raises(DataError, match=rf"{re.escape(str(clip))}: cut short"):
        family("speechcommands").prepare({}, tmp_path)


def test_a_cifar_batch_cut_short_is_named_with_the_remedy(tmp_path):
    build_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_4"
    _, present = cut(batch, 0.9)
    with pytest.raises(DataError, match=rf"data_batch_4: corrupt pickle, or cut short "
                                        rf"\({present:,} bytes.*acquire the data set again"):
        family("cifar10").prepare({}, tmp_path)


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "compressed"])
@pytest.mark.parametrize("keep", [0.5, 0.9999])
def test_an_svhn_mat_cut_short_is_named_with_its_sizes(tmp_path, compressed, keep):
    """The official files are compressed MATLAB 5 files; even the last bytes are missed."""
    build_svhn(tmp_path)
    path = tmp_path / "train_32x32.mat"
    mat = {"X": np.zeros((32, 32, 3, 30), np.uint8) + 7, "y": np.ones((30, 1), np.uint8)}
    savemat(path, mat, do_compression=compressed)
    whole, present = cut(path, keep)
    with pytest.raises(DataError, match=rf"train_32x32.mat: cut short: its variables' headers "
                                        rf"say the file holds at least [\d,]+ bytes, but it has "
                                        rf"{present:,}.*acquire the data set again"):
        family("svhn").prepare({}, tmp_path)
    assert present < whole


def test_a_tinyimagenet_jpeg_cut_short_is_named(tmp_path):
    build_tinyimagenet(tmp_path)
    image = tmp_path / "tiny-imagenet-200" / "train" / WNIDS[2] / "images" / f"{WNIDS[2]}_1.JPEG"
    _, present = cut(image, 0.7)
    with pytest.raises(DataError, match=rf"{WNIDS[2]}_1.JPEG: unreadable image, damaged or cut "
                                        rf"short \({present:,} bytes; image file is truncated"):
        family("tinyimagenet").prepare({}, tmp_path)


def test_a_png_cut_short_is_named(tmp_path):
    build_imagefolder(tmp_path)
    image = sorted((tmp_path / "dog").iterdir())[0]
    cut(image, 0.8)
    with pytest.raises(DataError, match=rf"{image.name}: unreadable image, damaged or cut short"):
        family("imagefolder").prepare({"test_fraction": 0.25}, tmp_path)


def test_a_tiny_shakespeare_cut_short_fails_its_checksum(tmp_path, monkeypatch):
    """A text cannot say its length; the official play's sha256 can."""
    build_shakespeare(tmp_path)
    path = tmp_path / "input.txt"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setattr(text, "SHAKESPEARE_SHA256", digest)  # as if it were the official file
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, *args, **kwargs: pytest.fail(url))
    cut(path, 0.5)
    with pytest.raises(DataError, match=r"input.txt: sha256 is .*not the official one: delete it"):
        family("shakespeare").acquire({}, tmp_path)
