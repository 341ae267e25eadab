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
   test_a_teacher_at_chance_is_flagged_in_the_table_and_its_figure); its students are not
   trained unless the setup allows it, and then every figure says so in its title
   (test_a_teacher_at_chance_stops_its_students_unless_allowed_and_then_every_figure_says_so).
2. a --configfile replaces the default study: test_a_configfile_replaces_the_default_study,
   test_without_a_configfile_the_default_study_runs.
3. lost or damaged outputs named by collect with the remedy: test_collect_reads_a_sound_study,
   test_collect_names_a_missing_or_damaged_student_file_and_the_remedy,
   test_collect_names_a_damaged_teacher_file_and_a_remedy_that_keeps_its_students,
   test_collect_names_damaged_labels.
   A finished study damaged as a user damages one; each test follows the printed remedy
   literally and checks the study is whole again (its tables equal the original's), counting
   the students retrained from the block logs:
   - a damaged student file: test_a_damaged_student_file_stops_collect_with_the_remedy_which_works;
   - a lost student file, which Snakemake does not see, stops every run, --unlock too, until the
     manifest listing it goes:
     test_a_lost_student_file_stops_every_run_until_its_manifest_is_removed
     (unless the study was copied without its students' logits on purpose:
     test_a_study_copied_without_its_students_logits_still_draws_its_figures);
   - a lost teacher init.pt, which Snakemake does not track either:
     test_a_lost_teacher_init_stops_every_run_until_the_teachers_row_is_removed;
   - a damaged teacher row is retrained, its students kept:
     test_a_damaged_teacher_row_is_retrained_and_its_students_kept;
   - damaged prepared data, whose failed rerun deletes the teacher's files, which the next run
     rebuilds (and the audit then finds the files it reads):
     test_damaged_prepared_data_is_named_and_its_remedy_brings_the_teacher_back;
   - damaged test labels, seen by the teacher's job or by collect:
     test_damaged_test_labels_are_named_with_a_remedy_that_works.
   A job left running: a second copy stops naming the first
   (test_a_second_copy_of_a_running_block_is_refused_naming_the_first,
   test_a_lock_names_its_holder_and_a_file_system_without_flock_only_warns); a block whose
   snakemake is killed stops by itself
   (test_a_block_whose_snakemake_is_killed_stops_and_the_rerun_makes_the_study_whole).
4. a damaged checkpoint set aside: test_a_damaged_checkpoint_is_set_aside_and_training_starts_over,
   and removed when its job finishes:
   test_a_damaged_checkpoint_set_aside_goes_when_its_job_finishes;
   a damaged prepared data file named: test_a_damaged_prepared_file_is_named_when_loaded.
5. numbers that collide in paths: test_numbers_that_print_alike_get_their_own_paths_and_values;
   names too long for a path: test_a_name_too_long_for_a_path_is_refused_before_any_job,
   test_the_longest_path_component_the_plan_builds_fits_in_255_bytes.

Clear messages:
- YAML and config errors name the key: test_bad_config_stops_before_any_job_naming_key_and_value,
  test_a_yaml_syntax_error_stops_before_any_job_and_verbose_names_line_and_column.
- a target after --configfile, read as a config file; the docs' `--` form works:
  test_a_target_after_a_configfile_needs_the_double_dash_the_docs_show.
- a step's --spec: its help names every key, a lacking one is named
  (test_a_spec_built_from_the_help_runs_and_a_lacking_key_is_named,
  test_every_spec_the_workflow_gives_has_the_keys_its_step_names,
  test_the_figure_options_a_spec_may_hold_are_those_of_kdpipe_plots).
- figure 4 of one width says why it has no slope, in a title that fits:
  test_figure_4_of_one_width_says_why_it_has_no_slope_and_its_title_fits.
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
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile
import torch
import yaml
from scipy.io import savemat
from scipy.stats import binom, binomtest

from conftest import (ENV, LABELS, REPO, TEACHER, TEACHER_CONFIDENCE, TINY, fresh_mlp, full_recipe,
                      job_spec, kdpipe_step, logits_for, planned_jobs, prepare_digits,
                      schema_errors, snakemake, tables, toy_data, write_audit_study, write_config)
from fixtures import (WNIDS, build_cifar10, build_imagefolder, build_shakespeare,
                      build_speechcommands, build_svhn, build_tinyimagenet, tone)
from kdpipe import audit, config, data, io, jobs, plots
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


@pytest.mark.parametrize("n", [1, 20, 1258, 111_360])
def test_the_binomial_tail_is_scipy_s(n):
    """audit.binomial_upper_tail, written out so that jobs need not import scipy.stats, is
    scipy's one-sided binomial p-value, from the edges to the far tail, up to the size of Tiny
    Shakespeare's test text."""
    for p in (1e-3, 0.1, 0.25, 0.5, 0.99, 0.0, 1.0):
        for k in sorted({0, 1, n // 10, n // 4, n // 2, int(n * 0.27), n - 1, n, n + 1}):
            expected = binom.sf(k - 1, n, p)
            assert audit.binomial_upper_tail(k, n, p) == pytest.approx(expected, rel=1e-9,
                                                                         abs=1e-300), (k, n, p)
            if 0 <= k <= n and 0 < p < 1:
                assert binomtest(k, n, p, alternative="greater").pvalue == pytest.approx(
                    audit.binomial_upper_tail(k, n, p), rel=1e-9, abs=1e-300)


def test_a_block_job_tests_its_teacher_without_scipy():
    code = ("import sys, numpy as np; from kdpipe import jobs; "
            "labels = np.repeat(np.arange(10), 100); "
            "assert jobs.at_chance_problem(100, labels) is not None; "
            "assert jobs.at_chance_problem(900, labels) is None; "
            "sys.exit('scipy' in sys.modules)")
    subprocess.run([sys.executable, "-c", code], env=ENV, check=True)


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


@pytest.mark.slow
def test_a_teacher_at_chance_stops_its_students_unless_allowed_and_then_every_figure_says_so(
        tmp_path, monkeypatch):
    """Adam at lr 1e4 leaves the teacher at chance. Its students would measure nothing while
    the run passed and the figures looked like results: the block job stops before training,
    naming the teacher, its accuracy and the chance level; allow_chance_teacher, as the message
    says, lets it go on, and then every figure of the setup says so in its title."""
    setup = {"dataset": "digits", "arch": "mlp",
             "recipe": {"epochs": 2, "batch_size": 32, "optimizer": "adam", "lr": 1.0e4}}
    write_config(tmp_path, widths=[1], seeds=[0, 1], setups={"digits-mlp": setup},
                 plots={"formats": ["png"], "dpi": 40}, stats={"bootstrap": 10})
    found = failed_naming(tmp_path, r"kdpipe train-block: error: teacher digits-mlp/teacher: test "
                          r"accuracy (0\.\d+) is at chance: not significantly above the (0\.\d+) "
                          r"of always predicting the most frequent class .* set (\S+): true")
    assert not list((tmp_path / "results/digits-mlp/teacher").glob("*/*/row.json"))
    assert not (tmp_path / "results/tables/models.parquet").exists()

    edit_config(tmp_path, **{found.group(3): True})
    snakemake(tmp_path)
    models = pd.read_parquet(tmp_path / "results/tables/models.parquet")
    teacher = models[models.role == "teacher"].iloc[0]
    labels = np.load(tmp_path / "results/data/digits.labels.npy")
    logits = np.load(tmp_path / "results/digits-mlp/teacher/logits.npy")
    chance = np.bincount(labels).max() / len(labels)
    correct = int((logits.argmax(1) == labels).sum())
    assert teacher.chance_accuracy == pytest.approx(chance)
    assert f"{teacher.accuracy:.4f}" == found.group(1) and f"{chance:.4f}" == found.group(2)
    assert binomtest(correct, len(labels), chance, alternative="greater").pvalue >= 0.05
    assert teacher.at_chance and models.loc[models.role == "student", "at_chance"].isna().all()
    # every figure drawn from these tables, the audit's too, warns in its title
    titles = {}

    def keep_title(fig, out_dir, stem, formats, dpi):
        titles[stem] = fig.get_suptitle()
        return []

    monkeypatch.setattr(plots, "save_figure", keep_title)
    tables_dir = tmp_path / "results/tables"
    plots.make_figures(tables_dir, tmp_path / "figures", workers=1)
    audit.make_audit(tables_dir, tmp_path / "results", tmp_path / "figures", workers=1)
    assert sorted(titles) == sorted(p.stem for p in (tmp_path / "results/figures").glob("*.png"))
    for stem, title in titles.items():
        assert re.search("at chance", title, re.I), stem


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
    manifest = results / "s/teacher/blocks/w1.json"
    with pytest.raises(ResultError, match=problem) as error:
        collect_rows(rows, results, {rows[1]: manifest})
    assert (f"remove the folder {folder} and its block's manifest {manifest}, and run the "
            "workflow again") in str(error.value)


@pytest.mark.parametrize("damage, problem", [
    (lambda f: (f / "logits.npy").unlink(), r"test logits \S+logits.npy of \S+ are missing"),
    (truncate, r"test logits \S+logits.npy of \S+ are unreadable"),
    (lambda f: (f / "row.json").write_text('{"setup": "s", "acc'), r"model row \S+ is damaged"),
    (edit_row(accuracy=float("nan")), r"metrics that must be numbers: accuracy=nan"),
])
def test_collect_names_a_damaged_teacher_file_and_a_remedy_that_keeps_its_students(study, damage,
                                                                                    problem):
    """Removing a teacher's folder would remove its students too: its job is forced instead."""
    results, rows = study
    damage(results / "s/teacher")
    with pytest.raises(ResultError, match=problem) as error:
        collect_rows(rows, results)
    assert (f"retrain the teacher: snakemake --cores all --forcerun {results}/s/teacher/row.json "
            in str(error.value))


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


# --- 3b. a finished study damaged: the message, its remedy followed literally, the study whole ---

TEACHER_DIR = "results/digits-mlp/teacher"
BLOCK = f"{TEACHER_DIR}/blocks/w1_s0-1.json"  # the finished study's one block
BLOCK_LOGS = "results/logs/train_block"


def copy_of(finished, tmp_path) -> Path:
    """A copy of the finished study to damage; the original stays whole for the other tests."""
    workdir = tmp_path / "study"
    shutil.copytree(finished[0], workdir, symlinks=True)
    return workdir


def console(result) -> str:
    return result.stdout + result.stderr


def failed_naming(workdir: Path, pattern: str, *args) -> re.Match:
    """Run the workflow with ``args``, which must fail with ``pattern`` on its console (the
    failed job's log is shown there); the match."""
    result = snakemake(workdir, *args, check=False)
    assert result.returncode != 0
    found = re.search(pattern, console(result))
    assert found, console(result)[-3000:]
    return found


def run_counting_students(workdir: Path, *args) -> int:
    """Run the workflow, which must succeed; return how many students its block jobs trained,
    from their logs ("block of N students: K already finished, training M"), 0 where none ran."""
    shutil.rmtree(workdir / BLOCK_LOGS, ignore_errors=True)
    snakemake(workdir, *args)
    trained = 0
    for log in (workdir / BLOCK_LOGS).glob("*/*/*.log"):
        found = re.search(r"block of \d+ students: \d+ already finished, training (\d+)",
                          log.read_text())
        assert found, f"{log} does not say how many students it trained"
        trained += int(found.group(1))
    return trained


def assert_whole(workdir: Path, original: Path, rtol=None) -> None:
    """The study is whole again: every teacher file and block manifest is there and the tables
    equal the original's (exactly, or to ``rtol`` where a student was retrained alone rather
    than stacked with its block: float rounding, kdpipe.train)."""
    for name in ("init.pt", "model.pt", "train_logits.npy", "logits.npy", "row.json"):
        assert (workdir / TEACHER_DIR / name).is_file(), name
    assert (workdir / BLOCK).is_file()
    for name, table in tables(workdir).items():
        pd.testing.assert_frame_equal(table, tables(original)[name], check_exact=rtol is None,
                                      rtol=rtol or 1e-5, obj=name)


def edit_config(workdir: Path, **changes) -> None:
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    for key, value in changes.items():
        *path, last = key.split(".")
        entry = config
        for part in path:
            entry = entry.setdefault(part, {})
        entry[last] = value
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))


@pytest.mark.slow
def test_a_damaged_student_file_stops_collect_with_the_remedy_which_works(finished, tmp_path):
    original, _ = finished
    workdir = copy_of(finished, tmp_path)
    folder = workdir / TEACHER_DIR / "kd/a0.5_T1_w1_s1"
    truncate(folder)
    # the job's log on the console (show-failed-logs): the file, and what to do
    found = failed_naming(workdir, r"kdpipe collect: error: test logits \S+/kd/a0.5_T1_w1_s1/"
                          r"logits.npy of \S+row.json are unreadable .*; remove the folder (\S+) "
                          r"and its block's manifest (\S+), and run", "--forcerun", "collect")
    shutil.rmtree(workdir / found.group(1))
    (workdir / found.group(2)).unlink()
    assert run_counting_students(workdir) == 1
    assert_whole(workdir, original, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("lost", ["kd/a0.5_T1_w1_s1/logits.npy", "siddo/w1_s0/row.json"])
def test_a_lost_student_file_stops_every_run_until_its_manifest_is_removed(finished, tmp_path,
                                                                           lost):
    """Snakemake does not track a block's students (its manifest is its output): a plain run
    after one is lost would do nothing. The check at parse time names the file and the manifest
    to remove, and stops --unlock too, which must not trap the user: removing the manifest, as
    the message says, lets every command run, and the block retrains that student alone."""
    original, _ = finished
    workdir = copy_of(finished, tmp_path)
    (workdir / TEACHER_DIR / lost).unlink()
    for args in ((), ("--unlock",)):
        result = snakemake(workdir, *args, check=False)
        assert result.returncode != 0, f"snakemake {args} ran: {console(result)[-2000:]}"
        assert f"{TEACHER_DIR}/{lost} (listed by {BLOCK})" in console(result)
    remove = re.search(r"^\s*rm (.+)$", console(result), re.M)
    assert remove, console(result)[-3000:]
    for path in remove.group(1).split():
        (workdir / path).unlink()
    assert run_counting_students(workdir) == 1
    assert_whole(workdir, original, rtol=1e-4)


@pytest.mark.slow
def test_a_lost_teacher_init_stops_every_run_until_the_teachers_row_is_removed(finished, tmp_path):
    """A teacher's init.pt is not a Snakemake output (a teacher given by file may have none): the
    check at parse time names it and the teacher's row to remove, after which the teacher
    retrains to the same weights and every student is kept."""
    original, _ = finished
    workdir = copy_of(finished, tmp_path)
    (workdir / TEACHER_DIR / "init.pt").unlink()
    result = snakemake(workdir, "--unlock", check=False)
    assert result.returncode != 0
    assert f"{TEACHER_DIR}/init.pt (a teacher's initial weights)" in console(result)
    remove = re.search(r"^\s*rm (.+)$", console(result), re.M)
    assert remove and remove.group(1).split() == [f"{TEACHER_DIR}/row.json"], console(result)
    (workdir / remove.group(1)).unlink()
    assert run_counting_students(workdir) == 0
    assert_whole(workdir, original)


@pytest.mark.slow
def test_a_study_copied_without_its_students_logits_still_draws_its_figures(finished, tmp_path):
    """The figures and the audit read the tables and the teachers' files only: with
    check_student_logits false the check at every run leaves the students' logits out, so that
    a study copied without them runs its figures; by default it names them."""
    workdir = copy_of(finished, tmp_path)
    for logits in (workdir / TEACHER_DIR).glob("*/*/logits.npy"):
        logits.unlink()
    edit_config(workdir, **{"plots.dpi": 41})
    result = snakemake(workdir, check=False)
    assert result.returncode != 0 and "6 file(s) of finished jobs are missing" in console(
        result)
    edit_config(workdir, check_student_logits=False)
    assert planned_jobs(workdir) == {"figures": 1, "audit": 1, "all": 1}
    snakemake(workdir)


@pytest.mark.slow
def test_a_damaged_teacher_row_is_retrained_and_its_students_kept(finished, tmp_path):
    """Removing the teacher's folder, the remedy of a student's files, would remove every
    student too. Forcing the teacher's job retrains it to the same weights, so its block reruns
    and finds every student finished (their digests hold the teacher's weights)."""
    original, _ = finished
    workdir = copy_of(finished, tmp_path)
    row = workdir / TEACHER_DIR / "row.json"
    row.write_text(row.read_text()[:40])
    found = failed_naming(workdir, r"kdpipe collect: error: model row \S+row.json is damaged .*; "
                          r"retrain the teacher: snakemake --cores all --forcerun (\S+) \(",
                          "--forcerun", "collect")
    assert run_counting_students(workdir, "--forcerun", found.group(1)) == 0
    assert list((workdir / BLOCK_LOGS).glob("*/*/*.log"))  # the block reran, and trained none
    assert_whole(workdir, original)


@pytest.mark.slow
def test_damaged_prepared_data_is_named_and_its_remedy_brings_the_teacher_back(finished,
                                                                               tmp_path):
    """The prepared file changed, so the teacher reruns, stops naming it, and Snakemake deletes
    the teacher's outputs. Removing the file and running again, as the message says, must
    rebuild it and the teacher (a target of `all`: a job whose outputs exist does not rerun for
    a lost input), retraining no student, and a later change of the figures must find every
    file the audit reads."""
    original, _ = finished
    workdir = copy_of(finished, tmp_path)
    prepared = workdir / "results/data/digits.pt"
    prepared.write_bytes(prepared.read_bytes()[:prepared.stat().st_size // 2])
    found = failed_naming(workdir, r"kdpipe train-teacher: error: (\S+): damaged prepared data "
                          r"file .*; delete it and run the workflow again")
    (workdir / found.group(1)).unlink()
    assert run_counting_students(workdir) == 0
    assert_whole(workdir, original)
    edit_config(workdir, **{"plots.dpi": 41})
    assert planned_jobs(workdir) == {"figures": 1, "audit": 1, "all": 1}
    snakemake(workdir)


@pytest.mark.slow
@pytest.mark.parametrize("read_by", ["train-teacher", "collect"])
def test_damaged_test_labels_are_named_with_a_remedy_that_works(finished, tmp_path, read_by):
    """Test labels cut short. Changed, they rerun the teacher, whose job must name the file
    (numpy's error names none); with their old time kept (a backup restored, say) a forced
    collect reads them. Either way, removing them as the message says rebuilds them: collect and
    the audit declare them as inputs, so that they are rebuilt before either runs."""
    original, _ = finished
    workdir = copy_of(finished, tmp_path)
    labels = workdir / "results/data/digits.labels.npy"
    before = labels.stat()
    labels.write_bytes(labels.read_bytes()[:before.st_size // 2])
    args = ()
    if read_by == "collect":
        os.utime(labels, ns=(before.st_atime_ns, before.st_mtime_ns))
        args = ("--forcerun", "collect")
    found = failed_naming(workdir, rf"kdpipe {read_by}: error: test labels (\S+) are missing or "
                          r"damaged .*; remove them and run the workflow again", *args)
    (workdir / found.group(1)).unlink()
    assert run_counting_students(workdir) == 0
    assert_whole(workdir, original)


# --- 3c. a job left running: a second copy is refused, an orphan stops -------------------------

def without_block(workdir: Path) -> None:
    """Remove the block's manifest and its students, so that the next run trains all six."""
    (workdir / BLOCK).unlink()
    for method in ("kd", "rcd", "siddo"):
        shutil.rmtree(workdir / TEACHER_DIR / method)


def wait_until_ended(pid: int, seconds: float) -> bool:
    """Whether process ``pid`` (not a child of this one) ends, or is a zombie, within
    ``seconds``."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z"):
                return True
        except (FileNotFoundError, ProcessLookupError):
            return True
        time.sleep(0.1)
    return False


def test_a_lock_names_its_holder_and_a_file_system_without_flock_only_warns(tmp_path, monkeypatch,
                                                                           capsys):
    lock = tmp_path / "blocks/w1.lock"
    holder = rf"process {os.getpid()} on {re.escape(socket.gethostname())} \(since [^)]+\)"
    with jobs.exclusive(lock, "the block job w1"):
        with pytest.raises(jobs.JobError, match=rf"the block job w1 is already running: {holder} "
                                                rf"holds its lock {re.escape(str(lock))}"):
            with jobs.exclusive(lock, "the block job w1"):
                pytest.fail("a second copy ran")
    with jobs.exclusive(lock, "the block job w1"):  # released when its holder ends
        pass

    def no_flock(handle, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr("fcntl.flock", no_flock)
    ran = []
    with jobs.exclusive(lock, "the block job w1"):
        ran.append(True)
    assert ran and "this file system does not support flock" in capsys.readouterr().err


@pytest.mark.slow
def test_a_second_copy_of_a_running_block_is_refused_naming_the_first(finished, tmp_path):
    """A straggler still training a block (a requeued cluster job's first run, a copy left by a
    killed run) holds the block's lock: the workflow's copy of the job stops naming its process
    and host instead of training the same students beside it, and runs once it has ended."""
    original, _ = finished
    workdir = copy_of(finished, tmp_path)
    without_block(workdir)
    lock = (workdir / BLOCK).with_suffix(".lock")
    straggler = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom kdpipe.jobs import exclusive\n"
         "with exclusive(sys.argv[1], 'a block'):\n    print('holding', flush=True)\n"
         "    time.sleep(600)\n", str(lock)], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert straggler.stdout.readline() == "holding\n"
        result = snakemake(workdir, check=False)
    finally:
        straggler.kill()  # as the message says: end it (or wait for it)
        straggler.wait()
    assert result.returncode != 0
    assert re.search(rf"kdpipe train-block: error: the block job \S+w1_s0-1.json is already "
                     rf"running: process {straggler.pid} on {re.escape(socket.gethostname())} "
                     rf"\(since [^)]+\) holds its lock", console(result)), console(result)[-3000:]
    assert not list((workdir / TEACHER_DIR).glob("*/*/row.json"))
    assert run_counting_students(workdir) == 6
    assert_whole(workdir, original)


@pytest.mark.slow
def test_a_block_whose_snakemake_is_killed_stops_and_the_rerun_makes_the_study_whole(tmp_path):
    """kill -9 of snakemake leaves its running block job an orphan: it must stop at the end of
    its epoch, writing no student and no manifest (and, its log appending, no NUL bytes),
    rather than train on beside the rerun that --unlock allows. The rerun then ends as an
    uninterrupted run of the same config does. (The block is retrained as after editing the
    training code: its store removed, train_block forced.)"""
    reference = tmp_path / "reference"
    reference.mkdir()
    write_config(reference, widths=[1], seeds=[0, 1],
                 setups={"digits-mlp": {"dataset": "digits", "arch": "mlp",
                                        "recipe": {"epochs": 40, "batch_size": 32}}},
                 plots={"formats": ["png"], "dpi": 40}, stats={"bootstrap": 10})
    snakemake(reference)
    workdir = tmp_path / "study"
    shutil.copytree(reference, workdir, symlinks=True)
    without_block(workdir)
    log = workdir / BLOCK_LOGS / "digits-mlp/teacher/w1_s0-1.log"
    log.unlink()
    run = snakemake(workdir, "--forcerun", "train_block", start_new_session=True,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not (log.exists() and "epoch 1/40" in log.read_text()):
            assert run.poll() is None and time.time() < deadline, "no block was seen training"
            time.sleep(0.02)
    finally:
        if run.poll() is None:
            os.kill(run.pid, signal.SIGKILL)  # snakemake alone, as kill -9 <its pid> does
        run.wait()
    job = int(re.search(r"train-block on \S+, pid (\d+)", log.read_text()).group(1))
    assert wait_until_ended(job, 30), "the orphaned block job trains on"
    text = log.read_bytes().decode()
    assert "\0" not in text
    assert re.search(r"kdpipe train-block: error: the process that started this job \(pid \d+, "
                     r"its snakemake\) has ended: stopped after epoch \d+, nothing of this job is "
                     r"written", text), text[-2000:]
    assert "epoch 40/40" not in text
    assert not (workdir / BLOCK).exists()
    assert not list((workdir / TEACHER_DIR).glob("*/*/row.json"))
    snakemake(workdir, "--unlock")
    assert run_counting_students(workdir) == 6
    assert_whole(workdir, reference)


# --- 3d. messages of a finished study's reruns: checkpoints, a spec by hand, figure 4, targets ---

@pytest.mark.slow
def test_a_damaged_checkpoint_set_aside_goes_when_its_job_finishes(finished, tmp_path):
    """An unreadable checkpoint is set aside as *.damaged, for inspection while its job runs,
    and must not stay behind it."""
    original, _ = finished
    workdir = copy_of(finished, tmp_path)
    trained = sorted(json.loads(row.read_text())["train_digest"]
                     for row in (workdir / TEACHER_DIR).glob("*/*/row.json"))
    without_block(workdir)
    # where the block's job, training these six, keeps its checkpoint
    saved = jobs.checkpoint(workdir / "results/checkpoints", 5, "block", json.dumps(trained))
    saved.path.parent.mkdir(exist_ok=True)
    saved.path.write_bytes(b"not a checkpoint")
    assert run_counting_students(workdir) == 6
    log = next((workdir / BLOCK_LOGS).glob("*/*/*.log")).read_text()
    assert f"warning: checkpoint results/checkpoints/{saved.path.name} cannot be read" in log
    assert list((workdir / "results/checkpoints").iterdir()) == []
    assert_whole(workdir, original)


@pytest.mark.slow
def test_a_spec_built_from_the_help_runs_and_a_lacking_key_is_named(finished, tmp_path):
    """A user reading `kdpipe stats --help` finds every key the step reads; a spec without one
    gets the key named, not a KeyError."""
    original, _ = finished
    help_text = subprocess.run([sys.executable, "-m", "kdpipe", "stats", "--help"], env=ENV,
                               capture_output=True, text=True, check=True).stdout
    listed = help_text.split("with the keys:")[1].split("--out")[0]
    # "key (what); ..." with an optional key listed as "key (optional: what)"
    items = [item.split(" (", 1) for item in " ".join(listed.split()).split("; ")]
    keys = [key for key, what in items if not what.startswith("optional")]
    assert keys and "methods" not in keys
    stats_config = config.load(original / "config.yaml")["stats"]
    spec = {key: stats_config[key] for key in keys}
    tables_dir = tmp_path / "tables"
    shutil.copytree(original / "results/tables", tables_dir)
    kdpipe_step("stats", "--spec", json.dumps(spec), "--out", tables_dir)
    pd.testing.assert_frame_equal(pd.read_parquet(tables_dir / "scaling.parquet"),
                                  pd.read_parquet(original / "results/tables/scaling.parquet"))
    for key in keys:
        result = subprocess.run([sys.executable, "-m", "kdpipe", "stats", "--spec",
                                 json.dumps({k: v for k, v in spec.items() if k != key}),
                                 "--out", tables_dir], env=ENV, capture_output=True, text=True)
        assert result.returncode == 1
        assert f"kdpipe stats: error: --spec lacks {key!r}" in result.stderr
        assert "Traceback" not in result.stderr


@pytest.mark.parametrize("step", ["prepare-data", "train-teacher", "train-block", "collect",
                                  "stats", "figures", "audit"])
def test_every_spec_the_workflow_gives_has_the_keys_its_step_names(step):
    """The help names each step's keys (kdpipe.cli.SPEC_KEYS); the specs the rules build from a
    config have every required one, so that the workflow never trips the check."""
    from kdpipe.cli import SPEC_KEYS, parser
    from kdpipe.plan import Study

    study = Study(config.load(REPO / "config/config.yaml"))
    setup, teacher = study.teachers[0]
    given = {"prepare-data": study.dataset_spec(study.dataset_of(setup)),
             "train-teacher": json.loads(study.teacher_spec(setup, teacher)),
             "train-block": json.loads(study.block_spec(setup, teacher,
                                                         next(iter(study.blocks[setup])))),
             "collect": {"ece_bins": study.config["stats"]["ece_bins"]},
             "stats": study.config["stats"], "figures": study.config["plots"],
             "audit": study.config["plots"]}[step]
    required, optional = SPEC_KEYS[step]
    assert set(required) <= set(given)
    help_text = " ".join(parser()._subparsers._group_actions[0].choices[step].format_help().split())
    for key in [*required, *optional]:
        assert f" {key} (" in help_text


def test_the_figure_options_a_spec_may_hold_are_those_of_kdpipe_plots():
    from kdpipe.cli import SPEC_KEYS

    # beside the options, a spec may hold the config's own methods (kdpipe.methods.Registry)
    assert set(SPEC_KEYS["figures"][1]) == set(plots.DEFAULT_OPTIONS) | {"methods"}
    assert set(SPEC_KEYS["audit"][1]) == set(plots.DEFAULT_OPTIONS) - {"temperature",
                                                                       "training_curves"} | {
        "methods"}


@pytest.mark.slow
def test_figure_4_of_one_width_says_why_it_has_no_slope_and_its_title_fits(finished):
    """With widths [1] there is no slope to fit: the legend says so rather than a bare "n/a",
    and the title, longer than the figure of one alpha is wide, is wrapped inside it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    t = tables(finished[0])
    fig = plots.fig4_width(t["models"], t["scaling"], "digits-mlp", 1.0, plots.method_colors())
    FigureCanvasAgg(fig).draw()
    labels = [text.get_text() for ax in fig.axes for text in ax.get_legend().get_texts()]
    assert labels and all(label.endswith(": n/a (one width: no slope)") for label in labels)
    assert "no lines: the slopes need students of two widths or more" in fig.get_suptitle()
    title = fig._suptitle.get_window_extent(fig.canvas.get_renderer())
    assert fig.bbox.x0 <= title.x0 and title.x1 <= fig.bbox.x1


@pytest.mark.slow
def test_a_target_after_a_configfile_needs_the_double_dash_the_docs_show(finished, tmp_path):
    """Snakemake's --configfile takes several files: a target after it is read as one more
    config file. The form the docs show, `--configfile my.yaml -- <target>`, builds the target."""
    workdir = copy_of(finished, tmp_path)
    target = "results/figures/fig4_width_digits-mlp.png"
    (workdir / target).unlink()
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
               str(workdir), "--cores", "2", "-n", "--configfile", str(workdir / "config.yaml")]
    misread = subprocess.run([*command, target], capture_output=True, text=True, env=ENV)
    assert misread.returncode != 0
    dry_run = subprocess.run([*command, "--", target], capture_output=True, text=True, env=ENV)
    assert dry_run.returncode == 0, console(dry_run)[-3000:]
    assert re.search(r"^figures\s+1\ntotal\s+1$", dry_run.stdout, re.M), dry_run.stdout
    for page in ("docs/reruns.md", "docs/troubleshooting.md"):
        assert "--configfile my.yaml -- " in (REPO / page).read_text(), page


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


@pytest.mark.slow
def test_a_name_too_long_for_a_path_is_refused_before_any_job(tmp_path):
    """A 260-character setup name passed the config check, prepared the data, then failed with
    "File name too long": the schema bounds names (kdpipe.config)."""
    write_config(tmp_path, setups={"s" * 260: TINY["setups"]["digits-mlp"]})
    result = snakemake(tmp_path, "-n", check=False)
    assert result.returncode != 0
    assert re.search(r"config error at setups: 's{260}' is too long", console(result))
    assert not (tmp_path / "results").exists()


def test_the_longest_path_component_the_plan_builds_fits_in_255_bytes():
    """Names at the schema's longest (128 characters), numbers of the longest text a float or a
    seed has, every method and both kinds of block: no folder or file name the workflow builds,
    the temporary file of an atomic write included, exceeds a file system's 255 bytes."""
    from kdpipe.plan import Study

    assert "is too long" in schema_errors(setups={"s" * 129: TINY["setups"]["digits-mlp"]})[0]
    assert "is too long" in schema_errors(datasets={"d" * 129: {"family": "digits"}})[0]
    assert "is too long" in schema_errors(setups={"s": {**TINY["setups"]["digits-mlp"],
                                                        "teachers": {"t" * 129: {}}}})[0]
    assert "is greater than the maximum" in schema_errors(seeds=[2 ** 32])[0]
    dataset, setup, teacher = "d" * 128, "s" * 128, "t" * 128
    components = set()
    for split_runs in (False, True):
        study = Study(config.validate({
            "datasets": {dataset: {"family": "digits"}},
            "setups": {setup: {"dataset": dataset, "arch": "mlp", "teachers": {teacher: {}},
                               "recipe": {"epochs": 1, "batch_size": 8}}},
            # the longest text of a float (23 characters) and of a seed (10 digits)
            "alphas": [2.2250738585072014e-308], "temperatures": [1.7976931348623157e+308, 1],
            "widths": [2.2250738585072014e-308], "seeds": [4294967295, 4294967294],
            "block": {"split_runs": split_runs}, "kd_masked": {"enabled": True},
            "feature_matching": {"enabled": True}}))
        paths = [*study.data_files(dataset).values(), *study.every_teacher_file(),
                 *study.manifests(),
                 *(f"{study.teacher_dir(setup, teacher)}/{s['method']}/{s['run']}/logits.npy"
                   for s in study.students(setup)),
                 *(f"figures/{stem}.{ext}" for stem in study.figure_stems() + study.audit_stems()
                   for ext in ("png", "pdf", "svg"))]
        paths += [str(Path(p).with_suffix(".lock")) for p in study.manifests()]
        for path in paths:
            components.update(Path(path).parts)
            components.add(f".{Path(path).name}.abcdefgh.tmp")  # kdpipe.io.atomic_path's
    worst = max(components, key=lambda c: len(c.encode()))
    assert len(worst.encode()) <= 255, worst


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
