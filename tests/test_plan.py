"""The plan of a study (kdpipe/plan.py) checked against plans worked out by hand: students, blocks
and their names, the teacher that trains shared siddo students, the specs the training jobs are
given, the files and figures."""
import ast
import json
import subprocess
import sys

import pytest

from conftest import REPO, TINY
from kdpipe import config
from kdpipe.plan import Study, audit_stems, figure_stems, figures, number, run_name


def study(**changes) -> Study:
    return Study(config.validate({**json.loads(json.dumps(TINY)), **changes}))


def runs(students) -> list[tuple[str, str]]:
    return [(s["method"], s["run"]) for s in students]


# --- names ---------------------------------------------------------------------------------------

def test_numbers_in_paths_are_the_shortest_text_that_reads_back():
    assert [number(x) for x in (0.1, 1, 1.0, 2, 0.25, 0.5000001, 1e-05)] == [
        "0.1", "1", "1", "2", "0.25", "0.5000001", "1e-05"]
    assert number(0.5) != number(0.5000001)


def test_run_names_hold_what_a_student_depends_on():
    assert run_name("kd", "0.5", "4", "1", "3") == "a0.5_T4_w1_s3"
    assert run_name("rcd-masked", "0.1", "1", "0.5", "0") == "a0.1_T1_w0.5_s0"
    assert run_name("siddo", None, None, "2", "7") == "w2_s7"
    assert run_name("fm", "0.9", None, "0.25", "1") == "a0.9_w0.25_s1"


# --- the default study and the paper's ---------------------------------------------------------

def test_the_default_study_trains_336_students_in_18_blocks():
    plan = Study(config.load(REPO / "config/config.yaml"))
    assert plan.teachers == [("digits-mlp", "teacher"), ("digits-cnn", "teacher")]
    # the MLP packs 4 seeds per job (block_seeds), the CNN 2 (block.seeds): 7 students a seed
    assert list(plan.blocks["digits-mlp"]) == [f"w{w}_s{s}" for w in ("0.5", "1", "2")
                                               for s in ("0-3", "4-7")]
    assert list(plan.blocks["digits-cnn"]) == [f"w{w}_s{s}" for w in ("0.5", "1", "2")
                                               for s in ("0-1", "2-3", "4-5", "6-7")]
    sizes = {setup: {len(students) for _, students in blocks.values()}
             for setup, blocks in plan.blocks.items()}
    assert sizes == {"digits-mlp": {28}, "digits-cnn": {14}}
    assert len(plan.manifests()) == 18
    assert sum(len(plan.students(setup)) for setup in plan.setups) == 336
    width, students = plan.blocks["digits-cnn"]["w1_s2-3"]
    assert width == "1" and runs(students) == [
        ("kd", "a0.1_T1_w1_s2"), ("rcd", "a0.1_T1_w1_s2"), ("kd", "a0.5_T1_w1_s2"),
        ("rcd", "a0.5_T1_w1_s2"), ("kd", "a0.9_T1_w1_s2"), ("rcd", "a0.9_T1_w1_s2"),
        ("siddo", "w1_s2"),
        ("kd", "a0.1_T1_w1_s3"), ("rcd", "a0.1_T1_w1_s3"), ("kd", "a0.5_T1_w1_s3"),
        ("rcd", "a0.5_T1_w1_s3"), ("kd", "a0.9_T1_w1_s3"), ("rcd", "a0.9_T1_w1_s3"),
        ("siddo", "w1_s3")]
    # students x width^2: the MLP's width-2 blocks first, the CNN's width-0.5 ones last
    assert plan.block_priority("digits-mlp", "w2_s0-3") == 28 * 4
    assert plan.block_priority("digits-cnn", "w0.5_s6-7") == 14 * 0.25


def test_the_paper_study_has_its_job_counts():
    plan = Study(config.load(REPO / "config/paper.yaml"))
    # 13 setups on 9 datasets; cifar10-resnet18 has three teachers
    assert len(plan.setups) == 13 and len({plan.dataset_of(s) for s in plan.setups}) == 9
    assert len(plan.teachers) == 15
    # 4 widths x 10 seeds: digits-mlp packs the 10 seeds in one job per width, the others one
    # job per seed: 4 + 14 teachers x 40
    assert len(plan.blocks["digits-mlp"]) == 4 and len(plan.blocks["cifar10-vit"]) == 40
    assert len(plan.manifests()) == 4 + 14 * 40 == 564
    assert {len(plan.students(setup)) for setup in plan.setups} == {4 * 10 * 7}
    # standard distillation: a ResNet-18 teacher, VGG-19 students
    spec = json.loads(plan.block_spec("cifar10-resnet18-to-vgg19", "teacher", "w1_s0-0"))
    assert (spec["arch"], spec["teacher_arch"]) == ("vgg19", "resnet18")
    assert json.loads(plan.teacher_spec("cifar10-resnet18-to-vgg19", "teacher"))["arch"] == \
        "resnet18"
    assert plan.resources("cifar10-resnet18") == {"gpu": 1, "mem_mb": 16000, "runtime": 360}
    assert plan.teacher_recipe("cifar10-resnet18", "epochs30")["epochs"] == 30
    assert plan.teacher_recipe("cifar10-resnet18", "teacher")["epochs"] == 200


def test_split_runs_is_one_job_per_run():
    """One job per (alpha, T, width, seed) for the kd family, per (width, seed) for siddo, per
    (alpha, width, seed) for fm: those jobs are named by the method where the run name lacks T."""
    plan = study(block={"split_runs": True}, widths=[1], seeds=[0, 1],
                 feature_matching={"enabled": True})
    assert list(plan.blocks["digits-mlp"]) == [
        "a0.5_T1_w1_s0", "siddo_w1_s0", "fm_a0.5_w1_s0",
        "a0.5_T1_w1_s1", "siddo_w1_s1", "fm_a0.5_w1_s1"]
    assert runs(plan.blocks["digits-mlp"]["a0.5_T1_w1_s1"][1]) == [("kd", "a0.5_T1_w1_s1"),
                                                                  ("rcd", "a0.5_T1_w1_s1")]
    assert runs(plan.blocks["digits-mlp"]["fm_a0.5_w1_s0"][1]) == [("fm", "a0.5_w1_s0"),
                                                                  ("fm-rcd", "a0.5_w1_s0")]


def test_a_student_carries_the_options_of_its_method():
    plan = study(widths=[2], seeds=[4], rcd={"distribution": "gaussian"},
                 kd_masked={"enabled": True, "mode": "classes", "incorrect_weight": 0.25},
                 feature_matching={"enabled": True},
                 setups={"s": {"dataset": "digits", "arch": "cnn", "fm_stage": "features",
                               "recipe": {"epochs": 1, "batch_size": 8}}})
    noise = {"distribution": "gaussian", "resample": "step"}
    masked = {"mode": "classes", "incorrect_weight": 0.25}
    expected = {
        ("0.5", "1"): [
            {"method": "kd", "seed": 4, "run": "a0.5_T1_w2_s4", "alpha": 0.5, "temperature": 1.0},
            {"method": "rcd", "seed": 4, "run": "a0.5_T1_w2_s4", "noise": noise, "alpha": 0.5,
             "temperature": 1.0},
            {"method": "kd-masked", "seed": 4, "run": "a0.5_T1_w2_s4", **masked, "alpha": 0.5,
             "temperature": 1.0},
            {"method": "rcd-masked", "seed": 4, "run": "a0.5_T1_w2_s4", "noise": noise, **masked,
             "alpha": 0.5, "temperature": 1.0}],
        (None, None): [{"method": "siddo", "seed": 4, "run": "w2_s4"}],
        ("0.5", None): [
            {"method": "fm", "seed": 4, "run": "a0.5_w2_s4", "stage": "features", "alpha": 0.5},
            {"method": "fm-rcd", "seed": 4, "run": "a0.5_w2_s4", "noise": noise,
             "stage": "features", "alpha": 0.5}],
    }
    assert plan.students_of("s", "2", "4") == expected


# --- teachers and the siddo students they share -------------------------------------------------

def test_teachers_sharing_a_seed_share_the_first_ones_siddo_students():
    setups = {"s": {"dataset": "digits", "arch": "mlp", "teacher_seed": 0,
                    "recipe": {"epochs": 3, "batch_size": 32},
                    "teachers": {"a": {"seed": 1}, "b": {}, "c": {"seed": 1, "recipe": {"epochs": 1}},
                                 "d": {"seed": 0}}}}
    plan = study(setups=setups, widths=[1], seeds=[0])
    assert [plan.teacher_seed("s", t) for t in "abcd"] == [1, 0, 1, 0]
    assert [plan.siddo_owner("s", t) for t in "abcd"] == ["a", "b", "a", "b"]
    assert plan.shared_siddo("s", "c", "w1_s0-0") == "results/s/a/blocks/w1_s0-0.json"
    assert plan.shared_siddo("s", "d", "w1_s0-0") == "results/s/b/blocks/w1_s0-0.json"
    assert plan.shared_siddo("s", "a", "w1_s0-0") is None  # the owner trains its own
    split = study(setups=setups, widths=[1], seeds=[0], block={"split_runs": True})
    assert split.shared_siddo("s", "c", "a0.5_T1_w1_s0") is None  # a block without siddo
    assert split.shared_siddo("s", "c", "siddo_w1_s0") == "results/s/a/blocks/siddo_w1_s0.json"
    assert plan.teacher_recipe("s", "c")["epochs"] == 1
    assert plan.teacher_recipe("s", "a")["epochs"] == 3


def test_teachers_given_by_file_share_siddo_students_by_the_weights_they_start_from(
        tmp_path, monkeypatch):
    """siddo depends on the weights width-1 students start from, not on the trained teacher:
    teachers of one seed share them, teachers given with one init file share them, and teachers
    given without one (whose width-1 students start fresh) share them with each other only. With
    students of another architecture, no student starts from a theta0: every teacher shares."""
    monkeypatch.chdir(tmp_path)
    for name in ("a.pt", "b.pt", "init.pt"):
        (tmp_path / name).write_bytes(name.encode())
    teachers = {"trained": {}, "a": {"weights": "a.pt", "init": "init.pt"},
                "b": {"weights": "b.pt", "init": "init.pt"}, "c": {"weights": "a.pt"},
                "d": {"weights": "b.pt"}, "seed1": {"seed": 1}}
    setup = {"dataset": "digits", "arch": "mlp", "recipe": {"epochs": 1, "batch_size": 8},
             "teachers": teachers}
    plan = study(setups={"s": setup}, widths=[1], seeds=[0])
    assert [plan.siddo_owner("s", t) for t in teachers] == ["trained", "a", "a", "c", "c",
                                                            "seed1"]
    assert [plan.teacher_source("s", t) for t in teachers] == ["trained"] + ["file"] * 4 + [
        "trained"]
    assert plan.shared_siddo("s", "d", "w1_s0-0") == "results/s/c/blocks/w1_s0-0.json"
    cross = study(setups={"s": {**setup, "student_arch": "cnn"}}, widths=[1], seeds=[0])
    assert {cross.siddo_owner("s", t) for t in teachers} == {"trained"}


def test_a_given_teachers_spec_holds_its_files_digests(tmp_path, monkeypatch):
    """The files' SHA-256 is in the teacher job's spec (its rerun trigger); the block specs say
    where the students cannot start from the teacher's theta0. (SHA-256 of b"abc" is the
    standard's own test vector.)"""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.pt").write_bytes(b"abc")
    (tmp_path / "init.pt").write_bytes(b"")
    teachers = {"with_init": {"weights": "model.pt", "init": "init.pt"},
                "bare": {"weights": "model.pt"}}
    setup = {"dataset": "digits", "arch": "mlp", "recipe": {"epochs": 1, "batch_size": 8},
             "teachers": teachers}
    plan = study(setups={"s": setup}, widths=[1], seeds=[0])
    abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    spec = json.loads(plan.teacher_spec("s", "with_init"))
    assert spec["given"] == {"weights": {"path": "model.pt", "sha256": abc},
                             "init": {"path": "init.pt", "sha256": empty}}
    assert "seed" not in spec and spec["recipe"]["epochs"] == 1 and spec["arch"] == "mlp"
    assert json.loads(plan.teacher_spec("s", "bare"))["given"] == {
        "weights": {"path": "model.pt", "sha256": abc}}
    assert "teacher_theta0" not in json.loads(plan.block_spec("s", "with_init", "w1_s0-0"))
    assert json.loads(plan.block_spec("s", "bare", "w1_s0-0"))["teacher_theta0"] is False
    # an edited file: another spec, so that Snakemake reruns the teacher
    (tmp_path / "model.pt").write_bytes(b"abd")
    edited = study(setups={"s": setup}, widths=[1], seeds=[0])
    assert edited.teacher_spec("s", "bare") != plan.teacher_spec("s", "bare")


def test_a_setup_may_have_its_own_student_architecture_and_widths():
    setups = {"own": {"dataset": "digits", "arch": "cnn", "student_arch": "mlp",
                      "widths": [0.25, 1], "recipe": {"epochs": 1, "batch_size": 8}},
              "study": {"dataset": "digits", "arch": "mlp",
                        "recipe": {"epochs": 1, "batch_size": 8}}}
    plan = study(setups=setups, widths=[0.5, 2], seeds=[0])
    assert list(plan.blocks["own"]) == ["w0.25_s0-0", "w1_s0-0"]
    assert list(plan.blocks["study"]) == ["w0.5_s0-0", "w2_s0-0"]
    assert (plan.student_arch("own"), plan.student_arch("study")) == ("mlp", "mlp")
    spec = json.loads(plan.block_spec("own", "teacher", "w1_s0-0"))
    assert (spec["arch"], spec["teacher_arch"], spec["width"]) == ("mlp", "cnn", 1.0)
    assert json.loads(plan.teacher_spec("own", "teacher"))["arch"] == "cnn"
    same = json.loads(plan.block_spec("study", "teacher", "w2_s0-0"))
    assert same["arch"] == "mlp" and "teacher_arch" not in same
    assert len(plan.manifests()) == 4


# --- what the jobs are given ---------------------------------------------------------------------

def test_training_specs_leave_out_settings_at_their_neutral_values():
    """The specs are the training jobs' params (Snakemake's rerun trigger) and a teacher's is its
    checkpoint's key: a setting at its neutral value is not in them, so adding one changes no
    job."""
    recipe = {"epochs": 2, "batch_size": 32}
    setups = {"s": {"dataset": "digits", "arch": "mlp", "recipe": recipe,
                    "teachers": {"teacher": {}, "early": {"recipe": {"stop_at_train_loss": 0.5}}}}}
    plan = study(setups=setups, widths=[1], seeds=[0])
    filled = {"epochs": 2, "batch_size": 32, "optimizer": "adam", "lr": 0.001, "momentum": 0.9,
              "weight_decay": 0, "schedule": "constant", "eval_batch_size": 1024,
              "augment": "none", "augment_options": {}}
    assert json.loads(plan.teacher_spec("s", "teacher")) == {
        "setup": "s", "dataset": "digits", "arch": "mlp", "teacher_id": "s/teacher",
        "data": {"family": "digits", "options": {}}, "recipe": filled, "seed": 0}
    early = json.loads(plan.teacher_spec("s", "early"))
    assert early["recipe"] == {**filled, "stop_at_train_loss": 0.5}
    block = json.loads(plan.block_spec("s", "teacher", "w1_s0-0"))
    assert block["recipe"] == filled and block["width"] == 1.0
    assert runs(block["students"]) == [("kd", "a0.5_T1_w1_s0"), ("rcd", "a0.5_T1_w1_s0"),
                                       ("siddo", "w1_s0")]
    # spelled out at the neutral value: the same spec; another value: in the spec
    setups["s"]["recipe"] = {**recipe, "precision": "fp32"}
    assert study(setups=setups, widths=[1], seeds=[0]).block_spec("s", "teacher", "w1_s0-0") == \
        plan.block_spec("s", "teacher", "w1_s0-0")
    setups["s"]["recipe"] = {**recipe, "precision": "bf16"}
    bf16 = study(setups=setups, widths=[1], seeds=[0]).block_spec("s", "teacher", "w1_s0-0")
    assert json.loads(bf16)["recipe"] == {**filled, "precision": "bf16"}


def test_files_of_the_study():
    plan = study(results="out/run1", widths=[1], seeds=[0, 1])
    assert plan.data_files("digits") == {"data": "out/run1/data/digits.pt",
                                         "labels": "out/run1/data/digits.labels.npy"}
    assert plan.teacher_rows() == ["out/run1/digits-mlp/teacher/row.json"]
    assert plan.manifests() == ["out/run1/digits-mlp/teacher/blocks/w1_s0-1.json"]
    assert plan.dataset_spec("digits") == {"family": "digits", "options": {}}
    # the rules' patterns come from the same methods
    assert plan.manifest("{setup}", "{teacher}", "{block}") == \
        "out/run1/{setup}/{teacher}/blocks/{block}.json"


# --- figures -------------------------------------------------------------------------------------

def test_figures_follow_setups_temperatures_and_trained_methods():
    assert figure_stems(["a", "b_c"], [1.0, 1.0]) == [
        "fig1_functional_a", "fig2_payoff_a", "fig3_accuracy_a", "fig4_width_a",
        "fig1_functional_b_c", "fig2_payoff_b_c", "fig3_accuracy_b_c", "fig4_width_b_c",
        "fig5_teacher_loss"]
    assert figure_stems(["a", "b"], [1.0, 4.0]) == [
        "fig1_functional_a", "fig2_payoff_a", "fig3_accuracy_a", "fig4_width_a",
        "fig1_functional_b", "fig2_payoff_b", "fig3_accuracy_b", "fig4_width_b",
        "fig5_teacher_loss", "fig6_temperature_a", "fig6_temperature_b"]
    assert figures(["a"], [1], ["kd", "rcd", "siddo", "fm", "fm-rcd"])[-2:] == [
        ("fig5_teacher_loss", "fig5_teacher_loss", None, "kd"), ("fig8_fm_a", "fig8_fm", "a", "fm")]
    assert audit_stems(["a", "b"]) == ["audit_a", "audit_b"]
    # a study's: its setups, its temperatures, the methods its config enables
    plan = study(temperatures=[1, 2], kd_masked={"enabled": True})
    assert plan.figure_stems() == [
        "fig1_functional_digits-mlp", "fig2_payoff_digits-mlp", "fig3_accuracy_digits-mlp",
        "fig4_width_digits-mlp", "fig5_teacher_loss", "fig6_temperature_digits-mlp",
        "fig7_masked_digits-mlp"]
    assert plan.audit_stems() == ["audit_digits-mlp"]


def test_the_training_curves_add_one_figure_per_setup_only_when_asked():
    """plots.training_curves (off by default) adds fig9_training per setup at the end; off, the
    default study's figures are those it always had."""
    default = config.load(REPO / "config/config.yaml")
    stems = [f"{figure}_{setup}" for setup in ("digits-mlp", "digits-cnn")
             for figure in ("fig1_functional", "fig2_payoff", "fig3_accuracy", "fig4_width")]
    stems.append("fig5_teacher_loss")
    assert Study(default).figure_stems() == stems
    default["plots"]["training_curves"] = True
    assert Study(default).figure_stems() == stems + ["fig9_training_digits-mlp",
                                                     "fig9_training_digits-cnn"]


# --- cheap to import -----------------------------------------------------------------------------

@pytest.mark.parametrize("module", ["kdpipe.plan", "kdpipe.config", "kdpipe.digests"])
def test_the_planning_modules_import_no_heavy_library(module):
    """The Snakefile imports them while it is parsed (and a cluster job parses it again)."""
    code = ("import sys; before = set(sys.modules); import " + module + "; "
            "print(sorted(m for m in set(sys.modules) - before))")
    added = ast.literal_eval(subprocess.run([sys.executable, "-c", code], capture_output=True,
                                            text=True, check=True).stdout)
    heavy = [m for m in added if m.split(".")[0] in
             ("torch", "numpy", "pandas", "scipy", "matplotlib", "seaborn", "sklearn")]
    assert heavy == []
