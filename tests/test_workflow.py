"""The real workflow on a tiny config: outputs, reruns, kills, determinism (its faults:
tests/test_faults.py).

One tiny study runs once per session (module fixture); the rerun tests only dry-run against it,
each on its own edited config or a copy of the study, never changing it.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy.spatial.distance import jensenshannon
from scipy.special import logsumexp
from scipy.stats import kendalltau

from conftest import ENV, REPO, planned_jobs, snakemake, tables, write_config
from kdpipe.metrics import PERFORMANCE_METRICS
from kdpipe.tables import MODEL_COLUMNS

pytestmark = pytest.mark.slow  # every test runs Snakemake


def trained_students(logs) -> int:
    """How many students the block jobs whose logs these are trained (each log states it)."""
    total = 0
    for log in logs:
        found = re.search(r"block of \d+ students: \d+ already finished, training (\d+)",
                          Path(log).read_text())
        assert found, f"{log} does not say how many students it trained"
        total += int(found.group(1))
    return total


def run_counting_students(workdir: Path) -> int:
    """Run the study up to the models table; return the students its block jobs trained."""
    logs = workdir / "results/logs/train_block"
    shutil.rmtree(logs, ignore_errors=True)
    snakemake(workdir, "results/tables/models.parquet")
    return trained_students(logs.glob("*/*/*.log"))


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("study")
    write_config(workdir)
    snakemake(workdir)
    return workdir


def test_tiny_study_produces_every_table_and_figure(study):
    t = tables(study)
    models = t["models"]
    assert list(models.columns) == list(MODEL_COLUMNS)
    assert set(models.device) == {"cpu"}
    assert len(models) == 1 + 2 * 2 * 3 + 2 * 3  # teacher, kd+rcd per (width, seed), siddo
    assert models.groupby("method").size().to_dict() == {"": 1, "kd": 6, "rcd": 6, "siddo": 6}
    teacher = models[models.role == "teacher"].iloc[0]
    assert teacher.teacher_id == "digits-mlp/teacher" and teacher.method == ""
    assert np.isnan(teacher.prediction_agreement) and teacher.train_loss > 0
    assert set(t["stats"].comparison) == {"kd_vs_siddo", "kd_vs_rcd", "rcd_vs_siddo"}
    assert (study / "results/tables/models.csv").stat().st_size > 0
    figures = sorted(p.name for p in (study / "results/figures").iterdir())
    assert figures == sorted(["fig1_functional_digits-mlp.png", "fig2_payoff_digits-mlp.png",
                              "fig3_accuracy_digits-mlp.png", "fig4_width_digits-mlp.png",
                              "fig5_teacher_loss.png", "audit_digits-mlp.png"])
    errors = pd.read_parquet(study / "results/tables/teacher_errors.parquet")
    assert errors["count"].sum() == models[models.role == "teacher"].n_teacher_incorrect.sum()
    # one job per width trains every student of its three seeds
    log = (study / "results/logs/train_block/digits-mlp/teacher/w1_s0-2.log").read_text()
    assert "block of 9 students: 0 already finished, training 9" in log
    assert "epoch 12/12" in log and "kd a0.5_T1_w1_s0: loss" in log
    assert "rcd a0.5_T1_w1_s2: loss" in log and "siddo w1_s1: loss" in log
    assert "\r" not in log  # no progress bar in a log file


def independent_metrics(student, teacher, labels) -> dict:
    """The section-2 metrics by scipy and plain numpy, independently of kdpipe.metrics."""
    log_p = student - logsumexp(student, axis=1, keepdims=True)
    log_q = teacher - logsumexp(teacher, axis=1, keepdims=True)
    p, q = np.exp(log_p), np.exp(log_q)
    predicted, teacher_predicted = student.argmax(1), teacher.argmax(1)
    agree, right = predicted == teacher_predicted, teacher_predicted == labels
    return {
        "accuracy": np.mean(predicted == labels),
        "loss": -np.mean(log_p[np.arange(len(labels)), labels]),
        "activation_distance": np.mean(np.linalg.norm(p - q, axis=1)),
        "js_divergence": np.mean(jensenshannon(p, q, base=np.e, axis=1) ** 2),
        "prediction_agreement": agree.mean(),
        "correct_agreement": agree[right].mean(),
        "incorrect_agreement": agree[~right].mean(),
        "n_teacher_correct": right.sum(),
        "n_teacher_incorrect": (~right).sum(),
        # no ties among float logits: the discordant share is (1 - tau) / 2
        "rank_disagreement": np.mean([(1 - kendalltau(a, b).statistic) / 2
                                      for a, b in zip(student, teacher)]),
    }


def test_tables_match_metrics_recomputed_independently_from_saved_logits(study):
    models = tables(study)["models"]
    results = study / "results"
    teacher = models[models.role == "teacher"].iloc[0]
    teacher_logits = np.load(results / teacher.logits_path)
    labels = np.load(results / teacher.labels_path)
    assert teacher_logits.dtype == np.float32 and labels.dtype == np.int64
    teacher_logits = teacher_logits.astype(np.float64)
    assert teacher.accuracy == np.mean(teacher_logits.argmax(1) == labels)
    for row in models[models.role == "student"].itertuples():
        student = np.load(results / row.logits_path).astype(np.float64)
        for key, value in independent_metrics(student, teacher_logits, labels).items():
            assert getattr(row, key) == pytest.approx(value, rel=1e-9, abs=1e-12), (row.logits_path, key)


def test_statistics_tables_are_well_defined(study):
    t = tables(study)
    stats, asymmetry, scaling = t["stats"], t["asymmetry"], t["scaling"]
    assert set(PERFORMANCE_METRICS) <= set(stats.metric) and "p_paired" in stats
    undirected = stats.metric.isin(PERFORMANCE_METRICS)
    assert stats.loc[undirected, "toward_teacher"].isna().all()
    assert stats.loc[~undirected, "toward_teacher"].notna().all()
    directed = stats[~undirected & (stats.effect_size != 0)]
    higher = directed.metric.isin(["prediction_agreement", "correct_agreement",
                                   "incorrect_agreement"])
    assert (directed.toward_teacher == (np.sign(directed.effect_size) == np.where(higher, 1, -1))).all()
    # 3 seeds a group: no two-sided test can reach 0.05 (its smallest p is 0.1), so no verdict
    assert (stats.p_min == 0.1).all() and not stats.testable.any()
    assert stats.significant.isna().all() and (stats.verdict_note != "").all()
    assert not (asymmetry.ratio.abs() > 1e6).any()
    assert (asymmetry.ratio.isna() == (asymmetry.ratio_note != "")).all()
    distilled = scaling[scaling.method != "siddo"]
    assert (distilled.n_pairs_vs_siddo == 6).all()  # 2 widths x 3 seeds
    assert distilled[["slope_correct_vs_siddo", "slope_incorrect_vs_siddo"]].notna().all().all()
    claims = pd.read_parquet(study / "results/tables/claims.parquet")
    assert len(claims) == 2 and set(claims.width) == {0.5, 1.0}


def test_copied_by_class_counts_the_copied_teacher_errors_per_true_class(study):
    """Each student's row.json carries, per true class, the test samples the teacher gets wrong
    and the student copies; recomputed here by a plain loop over the saved logits."""
    models = tables(study)["models"]
    results = study / "results"
    teacher = models[models.role == "teacher"].iloc[0]
    teacher_pred = np.load(results / teacher.logits_path).argmax(1)
    labels = np.load(results / teacher.labels_path)
    for row in models[models.role == "student"].itertuples():
        stored = json.loads((results / row.logits_path).with_name("row.json").read_text())
        student_pred = np.load(results / row.logits_path).argmax(1)
        expected = [0] * 10
        for label, t, s in zip(labels, teacher_pred, student_pred):
            if t != label and s == t:
                expected[label] += 1
        assert stored["copied_by_class"] == expected
        assert sum(expected) == round(row.incorrect_agreement * row.n_teacher_incorrect)


def test_nothing_to_do_after_a_complete_run(study):
    assert planned_jobs(study) == {}


def test_adding_an_alpha_or_a_temperature_reruns_the_blocks_and_later_steps(study, tmp_path):
    # the blocks rerun (their student lists changed) but train only the new students (see
    # test_reruns_train_only_new_or_changed_students)
    expected = {"train_block": 2, "collect": 1, "statistics": 1, "figures": 1, "audit": 1,
                "all": 1}
    assert planned_jobs(study, write_config(tmp_path, alphas=[0.5, 0.9])) == expected
    assert planned_jobs(study, write_config(tmp_path, temperatures=[1, 4])) == expected


def test_one_job_per_run_is_a_setting_and_switching_to_it_trains_nothing(study, tmp_path):
    """block.split_runs: one job per (alpha, T, width, seed) for kd and rcd, one per (width,
    seed) for siddo, as in the workflow's first design; the students are the finished ones."""
    copy = tmp_path / "study"  # the shared study stays whole for the other tests
    shutil.copytree(study, copy, symlinks=True)
    write_config(copy, block={"split_runs": True})
    assert planned_jobs(copy)["train_block"] == 2 * 3 + 2 * 3
    assert run_counting_students(copy) == 0
    logs = (copy / "results/logs/train_block/digits-mlp/teacher").glob("*.log")
    assert {p.name for p in logs} >= {"a0.5_T1_w1_s0.log", "siddo_w0.5_s2.log"}
    write_config(copy)  # back to packed blocks: their manifests are still there, up to date
    assert "train_block" not in planned_jobs(copy)


def test_reruns_train_only_new_or_changed_students(tmp_path):
    """Counted from the block logs: adding an alpha, a temperature, a seed or a method trains
    only the new students; changing the recipe retrains every student (and the teacher)."""
    setups = {"digits-mlp": {"dataset": "digits", "arch": "mlp",
                             "recipe": {"epochs": 2, "batch_size": 32}}}
    config = dict(setups=setups, widths=[1], seeds=[0, 1])
    write_config(tmp_path, **config)
    assert run_counting_students(tmp_path) == 3 * 2  # kd, rcd, siddo x 2 seeds
    write_config(tmp_path, **config, alphas=[0.5, 0.9])
    assert run_counting_students(tmp_path) == 2 * 2  # kd, rcd at alpha 0.9
    write_config(tmp_path, **config, alphas=[0.5, 0.9], temperatures=[1, 4])
    assert run_counting_students(tmp_path) == 2 * 2 * 2  # kd, rcd x 2 alphas at T = 4
    config["seeds"] = [0, 1, 2]
    write_config(tmp_path, **config, alphas=[0.5, 0.9], temperatures=[1, 4])
    assert run_counting_students(tmp_path) == 2 * 2 * 2 + 1  # seed 2: kd, rcd x 4, siddo
    write_config(tmp_path, **config, alphas=[0.5, 0.9], temperatures=[1, 4],
                 kd_masked={"enabled": True})
    assert run_counting_students(tmp_path) == 2 * 4 * 3  # kd-masked, rcd-masked x 4 x 3 seeds
    assert "train_block" not in planned_jobs(tmp_path)
    setups["digits-mlp"]["recipe"]["lr"] = 0.002
    write_config(tmp_path, **config, alphas=[0.5, 0.9], temperatures=[1, 4],
                 kd_masked={"enabled": True})
    assert planned_jobs(tmp_path)["train_teacher"] == 1
    assert run_counting_students(tmp_path) == (4 * 4 + 1) * 3  # everything, for 3 seeds
    models = pd.read_parquet(tmp_path / "results/tables/models.parquet")
    assert len(models) == 1 + (4 * 4 + 1) * 3


def test_deleting_figures_reruns_only_the_figure_steps(study, tmp_path):
    copy = tmp_path / "study"  # the shared study stays whole for the other tests
    shutil.copytree(study, copy, symlinks=True)
    shutil.rmtree(copy / "results/figures")
    assert planned_jobs(copy) == {"figures": 1, "audit": 1, "all": 1}


def test_report_holds_every_figure_with_its_caption_and_the_statistics(study):
    snakemake(study, "--report", "report.html")
    html = (study / "report.html").read_text(errors="replace")
    for stem in ("fig1_functional_digits-mlp", "fig2_payoff_digits-mlp", "fig3_accuracy_digits-mlp",
                 "fig4_width_digits-mlp", "fig5_teacher_loss", "audit_digits-mlp", "stats.csv"):
        assert stem in html, stem
    assert "asymmetric payoff" in html and "Mann-Whitney tests" in html
    assert planned_jobs(study) == {}  # reporting ran nothing


def test_changing_a_plotting_option_retrains_nothing(study, tmp_path):
    edited = write_config(tmp_path, plots={"formats": ["png"], "dpi": 61})
    assert planned_jobs(study, edited) == {"figures": 1, "audit": 1, "all": 1}


def test_changing_a_statistics_option_reruns_statistics_and_figures_only(study, tmp_path):
    edited = write_config(tmp_path, stats={"correction": "holm"})
    assert planned_jobs(study, edited) == {"statistics": 1, "figures": 1, "all": 1}


def test_killed_run_leaves_nothing_taken_as_complete_and_reruns_identically(study, tmp_path):
    """SIGKILL the whole run mid-training, after a block's checkpoint at epoch 5; the rerun
    resumes that block from its checkpoint and then matches an uninterrupted run bit for bit
    (which also proves that runs are deterministic)."""
    write_config(tmp_path)
    run = snakemake(tmp_path, start_new_session=True, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL)
    logs = tmp_path / "results/logs/train_block/digits-mlp/teacher"
    deadline = time.time() + 300
    try:
        while time.time() < deadline:  # wait for a block that is past its first checkpoint
            if any("epoch 6/" in p.read_text() and "done" not in p.read_text()
                   for p in logs.glob("*.log")):
                break
            assert run.poll() is None, "the run ended before it could be killed"
            time.sleep(0.02)
        else:
            pytest.fail("no block job was seen training")
    finally:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
    results = tmp_path / "results/digits-mlp/teacher"
    for row in results.glob("*/*/row.json"):
        json.loads(row.read_text())  # whatever exists is whole
    killed = [p.name for p in logs.glob("*.log") if "done" not in p.read_text()]
    assert killed and not any((results / "blocks" / name.replace(".log", ".json")).exists()
                              for name in killed)  # a killed block has no manifest
    snakemake(tmp_path, "--unlock")
    assert planned_jobs(tmp_path)["train_block"] >= len(killed)
    snakemake(tmp_path)
    resumed = [(logs / name).read_text() for name in killed]
    assert any("resumed from" in log and "after epoch 5" in log for log in resumed)
    for name, table in tables(tmp_path).items():
        pd.testing.assert_frame_equal(table, tables(study)[name], check_exact=True, obj=name)


def test_default_config_teachers_leave_enough_errors(tmp_path):
    """The default split must leave >= 30 teacher errors per setup for incorrect agreement."""
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    targets = [f"results/{setup}/teacher/row.json" for setup in config["setups"]]
    snakemake(tmp_path, *targets)
    for target in targets:
        row = json.loads((tmp_path / target).read_text())
        assert row["n_teacher_incorrect"] >= 30, row


def test_every_step_has_help():
    steps = ["prepare-data", "train-teacher", "train-block", "collect", "stats", "figures",
             "audit"]
    for step in steps:
        result = subprocess.run([sys.executable, "-m", "kdpipe", step, "--help"],
                                capture_output=True, text=True)
        assert result.returncode == 0 and "usage: python -m kdpipe" in result.stdout, step


def test_paper_config_builds_its_whole_job_graph_without_data(tmp_path):
    (tmp_path / "config.yaml").write_text((REPO / "config/paper.yaml").read_text())
    jobs = planned_jobs(tmp_path)
    config = yaml.safe_load((REPO / "config/paper.yaml").read_text())
    teachers = blocks = 0
    for setup in config["setups"].values():
        n = len(setup.get("teachers", {"teacher": {}}))
        seeds_per_job = setup.get("block_seeds", config["block"]["seeds"])
        teachers += n
        blocks += n * len(config["widths"]) * -(-len(config["seeds"]) // seeds_per_job)
    assert jobs == {"prepare_data": len(config["datasets"]), "train_teacher": teachers,
                    "train_block": blocks, "collect": 1, "statistics": 1, "figures": 1,
                    "audit": 1, "all": 1}


HEAVY = ("torch", "numpy", "pandas", "scipy", "matplotlib", "seaborn")


def test_parsing_the_snakefile_imports_nothing_heavy(tmp_path):
    """A SLURM job re-parses the Snakefile: parsing must not import torch, numpy, pandas,
    scipy, matplotlib or seaborn, nor any kdpipe module but those of the standard library alone:
    the config check and the study's plan (config also imports yaml and jsonschema, which
    Snakemake has imported already), the method registry, the neutral values of the digests, the
    power arithmetic, and the package's own import of compare (whose heavy imports are inside its
    functions) with the atomic writes it names, and the names of the stored files with the check
    that the finished students' files are there. A wrapper Snakefile records the modules that
    including ours adds."""
    config = yaml.safe_load((REPO / "config/paper.yaml").read_text())
    config.update(kd_masked={"enabled": True}, feature_matching={"enabled": True})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "Snakefile").write_text(
        "import json, sys\n"
        "BEFORE = set(sys.modules)\n"
        f"include: {str(REPO / 'Snakefile')!r}\n"
        "added = sorted(set(sys.modules) - BEFORE)\n"
        "open('parse_modules.json', 'w').write(json.dumps(added))\n")
    cmd = [sys.executable, "-m", "snakemake", "-s", str(tmp_path / "Snakefile"), "--directory",
           str(tmp_path), "--configfile", str(tmp_path / "config.yaml"), "--cores", "1", "-n"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    added = json.loads((tmp_path / "parse_modules.json").read_text())
    assert [m for m in added if m.split(".")[0] in HEAVY] == []
    assert [m for m in added if m.startswith("kdpipe")] == [
        "kdpipe", "kdpipe.compare", "kdpipe.config", "kdpipe.digests", "kdpipe.io",
        "kdpipe.methods", "kdpipe.plan", "kdpipe.power", "kdpipe.store"]


@pytest.mark.parametrize("mode", ["samples", "classes"])
def test_kd_masked_students_their_comparisons_and_figure(tmp_path, mode):
    """Our kd-masked and its control train beside kd and rcd, and reach the tables and fig7."""
    # a teacher trained briefly still errs on its training data: something to mask
    setups = {"digits-mlp": {"dataset": "digits", "arch": "mlp",
                             "recipe": {"epochs": 2, "batch_size": 32}}}
    # classes mode with weight 0 would be siddo: the config refuses it
    masked = {"enabled": True, "mode": mode, "incorrect_weight": 0.0 if mode == "samples" else 0.25}
    write_config(tmp_path, widths=[1], setups=setups, kd_masked=masked)
    snakemake(tmp_path)
    t = tables(tmp_path)
    models = t["models"]
    assert models.groupby("method").size().to_dict() == {
        "": 1, "kd": 3, "rcd": 3, "kd-masked": 3, "rcd-masked": 3, "siddo": 3}
    comparisons = set(t["stats"].comparison)
    assert {"kd-masked_vs_siddo", "kd-masked_vs_rcd-masked", "rcd-masked_vs_siddo",
            "kd-masked_vs_kd"} <= comparisons
    assert {"kd-masked", "rcd-masked"} <= set(t["asymmetry"].method)
    assert (tmp_path / "results/figures/fig7_masked_digits-mlp.png").stat().st_size > 0
    # same init and batches as kd: only the masked KD term differs, so the models differ
    for kd, masked in zip(models[models.method == "kd"].logits_path,
                          models[models.method == "kd-masked"].logits_path):
        assert not np.array_equal(np.load(tmp_path / "results" / kd),
                                  np.load(tmp_path / "results" / masked))


def test_missing_dataset_files_stop_the_data_step_with_a_message_not_a_traceback(tmp_path):
    # UrbanSound8K cannot be downloaded: its step names the files to put where (no network used)
    write_config(tmp_path, datasets={"digits": {"family": "urbansound8k"}})
    result = snakemake(tmp_path, check=False)
    assert result.returncode != 0
    log = (tmp_path / "results/logs/prepare_data/digits.log").read_text()
    assert "kdpipe prepare-data: error:" in log and "Traceback" not in log
    assert not (tmp_path / "results/data/digits.pt").exists()


def test_feature_matching_students_their_comparisons_and_figure(tmp_path):
    """fm and fm-rcd train beside kd and rcd (an adapter maps width 0.5 to the teacher's stage),
    and reach the statistics, asymmetry and scaling tables and fig8."""
    write_config(tmp_path, seeds=[0, 1], feature_matching={"enabled": True})
    snakemake(tmp_path)
    t = tables(tmp_path)
    models = t["models"]
    assert models.groupby("method").size().to_dict() == {
        "": 1, "kd": 4, "rcd": 4, "fm": 4, "fm-rcd": 4, "siddo": 4}
    fm = models[models.method == "fm"]
    assert fm.temperature.isna().all() and (fm.alpha == 0.5).all()
    assert {"fm_vs_siddo", "fm_vs_fm-rcd", "fm-rcd_vs_siddo"} <= set(t["stats"].comparison)
    assert {"fm", "fm-rcd"} <= set(t["asymmetry"].method) and "fm" in set(t["scaling"].method)
    assert (tmp_path / "results/figures/fig8_fm_digits-mlp.png").stat().st_size > 0
    log = (tmp_path / "results/logs/train_block/digits-mlp/teacher/w0.5_s0-1.log").read_text()
    assert "fm a0.5_w0.5_s0: loss" in log and "fm-rcd a0.5_w0.5_s1: loss" in log


def test_teachers_of_different_train_loss_each_get_their_students(tmp_path):
    """Two teachers in one setup (one stopped early): each has its own students and statistics,
    and figure 5 plots both against their train losses. They share a teacher seed, hence
    theta0: siddo (which does not depend on the trained teacher) is trained once, for the first,
    and the second's siddo rows score those same logits against their own teacher."""
    setups = {"digits-mlp": {"dataset": "digits", "arch": "mlp",
                             "recipe": {"epochs": 12, "batch_size": 32},
                             "teachers": {"teacher": {}, "early": {"recipe": {"epochs": 2}}}}}
    write_config(tmp_path, setups=setups, widths=[1], seeds=[0, 1])
    assert planned_jobs(tmp_path)["train_teacher"] == 2
    snakemake(tmp_path)
    t = tables(tmp_path)
    teachers = t["models"][t["models"].role == "teacher"].set_index("teacher_id")
    assert set(teachers.index) == {"digits-mlp/teacher", "digits-mlp/early"}
    assert teachers.loc["digits-mlp/early", "train_loss"] > teachers.loc["digits-mlp/teacher",
                                                                           "train_loss"]
    students = t["models"][t["models"].role == "student"]
    assert students.groupby("teacher_id").size().to_dict() == {
        "digits-mlp/teacher": 6, "digits-mlp/early": 6}  # kd, rcd, siddo x 2 seeds each
    assert set(t["stats"].teacher_id) == set(teachers.index)
    assert (t["stats"].groupby("teacher_id").n2.max() == 2).all()  # siddo matched per teacher
    assert (tmp_path / "results/digits-mlp/early/kd/a0.5_T1_w1_s0/row.json").exists()
    assert (tmp_path / "results/figures/fig5_teacher_loss.png").stat().st_size > 0
    # the config file lists "early" first (yaml.safe_dump sorts keys): it trains the siddo students
    logs = tmp_path / "results/logs/train_block/digits-mlp"
    assert trained_students([logs / "early/w1_s0-1.log"]) == 6  # kd, rcd, siddo x 2 seeds
    assert trained_students([logs / "teacher/w1_s0-1.log"]) == 4  # kd, rcd x 2 seeds
    siddo = students[students.method == "siddo"].set_index(["teacher_id", "seed"])
    for seed in (0, 1):
        mine, shared = siddo.loc[("digits-mlp/early", seed)], siddo.loc[("digits-mlp/teacher", seed)]
        assert shared.logits_path == mine.logits_path == f"digits-mlp/early/siddo/w1_s{seed}/logits.npy"
        assert shared.accuracy == mine.accuracy and shared.train_loss == mine.train_loss
        # ... scored against each one's own teacher
        own = np.load(tmp_path / "results" / teachers.loc["digits-mlp/teacher", "logits_path"])
        student = np.load(tmp_path / "results" / shared.logits_path)
        assert shared.prediction_agreement == np.mean(student.argmax(1) == own.argmax(1))
        assert shared.n_teacher_incorrect == teachers.loc["digits-mlp/teacher", "n_teacher_incorrect"]
        assert shared.n_teacher_incorrect != mine.n_teacher_incorrect
    assert not (tmp_path / "results/digits-mlp/teacher/siddo/w1_s0/logits.npy").exists()
