"""Fault injection: every failure stops with a message that names the file or config key and the
remedy, and nothing half-written or silently wrong is left (README "When something goes wrong")."""
import errno
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import ENV, REPO, planned_jobs, snakemake, tables, write_config
from kdpipe import io, jobs
from kdpipe.io import ResultError
from kdpipe.tables import collect_rows

# --- collect: a listed model's files missing or damaged ----------------------------------------

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


# --- a full disk -------------------------------------------------------------------------------

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


# --- device ------------------------------------------------------------------------------------

def test_an_absent_cuda_device_is_named():
    with pytest.raises(SystemExit, match=r"config device is 'cuda:99', but torch finds \d+ CUDA "
                                         r"device\(s\) here .*set device: auto or cpu"):
        jobs.setup_torch(1, "cuda:99")
    assert jobs.setup_torch(1, "cpu") == "cpu"


# --- config: what the workflow plans -----------------------------------------------------------

# The paper study's job graph; update here when the workflow's jobs change.
PAPER_JOBS = {"prepare_data": 9, "train_teacher": 14, "train_block": 524,
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
    assert re.search(r"train_block\s+24\n", result.stdout)  # 2 setups x 3 widths x 4 blocks of seeds


@pytest.mark.slow
def test_numbers_that_print_alike_get_their_own_paths_and_values(tmp_path):
    """%g made a0.5 of both 0.5 and 0.5000001: one student trained for two alphas."""
    write_config(tmp_path, alphas=[0.5, 0.5000001], widths=[1], seeds=[0])
    dry_run = snakemake(tmp_path, "-n", "-p").stdout
    # the block trains both, each in its own folder, at its own alpha
    assert '{"alpha": 0.5, "method": "kd", "run": "a0.5_T1_w1_s0"' in dry_run
    assert '{"alpha": 0.5000001, "method": "kd", "run": "a0.5000001_T1_w1_s0"' in dry_run


@pytest.mark.slow
@pytest.mark.parametrize("change, message", [
    ({"results": "my results"}, r"config error at results: 'my results' does not match"),
    ({"data_dir": "raw data"}, r"config error at data_dir: 'raw data' does not match"),
    ({"setups": {"digits mlp": {"dataset": "digits", "arch": "mlp",
                                "recipe": {"epochs": 1, "batch_size": 8}}}},
     r"config error at setups: 'digits mlp' does not match"),
    ({"datasets": {"my digits": {"family": "digits"}}},
     r"config error at datasets: 'my digits' does not match"),
    ({"device": "gpu"}, r"config error at device: 'gpu' does not match"),
    ({"device": "cuda:x"}, r"config error at device: 'cuda:x' does not match"),
])
def test_names_that_would_break_paths_and_unknown_devices_are_refused(tmp_path, change, message):
    write_config(tmp_path, **change)
    result = snakemake(tmp_path, "-n", check=False)
    assert result.returncode != 0
    assert re.search(message, result.stdout + result.stderr), result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1", "mps"])
def test_every_device_form_passes_the_schema(tmp_path, device):
    write_config(tmp_path, device=device)
    assert planned_jobs(tmp_path)["train_teacher"] == 1


# --- a real run: lost outputs, /tmp ------------------------------------------------------------

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
def test_a_local_run_leaves_nothing_in_tmp(finished):
    _, scratch = finished
    assert os.listdir(scratch) == []


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


# --- training that diverges --------------------------------------------------------------------

@pytest.mark.slow
def test_a_diverging_run_stops_naming_learner_epoch_and_loss_and_scores_nothing(tmp_path):
    """SGD at lr 1e4 once made every logit NaN, scored as perfect agreement."""
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
