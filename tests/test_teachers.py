"""Teachers given by file and students of another architecture, through the real workflow: a
given teacher with its initial weights gives the students of the teacher it was saved from; one
without them gives width-1 students of a fresh initialisation; editing its file retrains the
students that learn from it, and only those; a missing file is a config error. A study whose
students have another architecture than its teacher writes every table and figure. (The
checks of a given file's tensors and of feature matching across architectures, at the job
level: tests/test_jobs.py.)"""
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import planned_jobs, snakemake, tables, write_config
from test_workflow import run_counting_students

pytestmark = pytest.mark.slow  # every test runs Snakemake

RECIPE = {"epochs": 2, "batch_size": 32}
STUDY = dict(widths=[0.5, 1], seeds=[0, 1])
# what tells a given teacher's tables from a trained one's: its name, the paths below it, its
# source, and its seed (a given teacher has none: -1)
IDENTITY = ["teacher_id", "logits_path", "teacher_source"]


def setups(**teacher) -> dict:
    """The tiny study's MLP setup on digits, with ``teacher`` as its teachers where given."""
    setup = {"dataset": "digits", "arch": "mlp", "recipe": RECIPE}
    return {"digits-mlp": {**setup, **teacher}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The study whose teacher it trains; its init.pt and model.pt are the given teachers'."""
    workdir = tmp_path_factory.mktemp("trained")
    write_config(workdir, setups=setups(), **STUDY)
    snakemake(workdir)
    return workdir


def given_study(workdir, trained, init: bool):
    """A study whose teacher ``pretrained`` is the trained study's, copied into workdir/files/
    (with its initial weights where ``init``), given by paths relative to the working folder."""
    (workdir / "files").mkdir()
    teacher = {"weights": "files/model.pt"}
    shutil.copy(trained / "results/digits-mlp/teacher/model.pt", workdir / "files")
    if init:
        shutil.copy(trained / "results/digits-mlp/teacher/init.pt", workdir / "files")
        teacher["init"] = "files/init.pt"
    write_config(workdir, setups=setups(teachers={"pretrained": teacher}), **STUDY)
    return workdir


@pytest.fixture(scope="module")
def with_init(tmp_path_factory, trained):
    workdir = given_study(tmp_path_factory.mktemp("with_init"), trained, init=True)
    snakemake(workdir)
    return workdir


@pytest.fixture(scope="module")
def without_init(tmp_path_factory, trained):
    workdir = given_study(tmp_path_factory.mktemp("without_init"), trained, init=False)
    snakemake(workdir)
    return workdir


def students(models: pd.DataFrame) -> pd.DataFrame:
    """The students' rows in a fixed order, without what names their teacher."""
    rows = models[models.role == "student"].drop(columns=IDENTITY + ["copied_by_class"])
    return rows.sort_values(["method", "width", "seed"]).reset_index(drop=True)


def logits(workdir, row) -> np.ndarray:
    return np.load(workdir / "results" / row.logits_path)


def test_a_teacher_given_with_its_init_has_the_trained_teachers_students(trained, with_init):
    """The same weights and theta0 given by file: the same students (same logits, same rows to
    float rounding) and statistics; only the teacher's name, paths and source differ."""
    ours, theirs = tables(with_init), tables(trained)
    models = ours["models"]
    assert set(models.teacher_source) == {"file"} and set(theirs["models"].teacher_source) == {
        "trained"}
    assert set(models.teacher_id) == {"digits-mlp/pretrained"}
    pd.testing.assert_frame_equal(students(models), students(theirs["models"]), rtol=1e-6)
    for row in models[models.role == "student"].itertuples():
        same = theirs["models"].logits_path == row.logits_path.replace("/pretrained/", "/teacher/")
        np.testing.assert_allclose(logits(with_init, row),
                                   logits(trained, theirs["models"][same].iloc[0]), rtol=1e-6)
    teacher = models[models.role == "teacher"].iloc[0]
    trained_teacher = theirs["models"][theirs["models"].role == "teacher"].iloc[0]
    assert teacher.seed == -1 and teacher.arch == "mlp"
    for column in ("accuracy", "loss", "train_loss", "n_teacher_incorrect", "ece"):
        assert teacher[column] == pytest.approx(trained_teacher[column], rel=1e-6), column
    for name in ("stats", "asymmetry", "scaling"):
        pd.testing.assert_frame_equal(ours[name].drop(columns="teacher_id"),
                                      theirs[name].drop(columns="teacher_id"), rtol=1e-6,
                                      obj=name)
    figures = {p.name for p in (with_init / "results/figures").iterdir()}
    assert {"fig1_functional_digits-mlp.png", "audit_digits-mlp.png"} <= figures


def test_without_init_width_1_students_start_fresh(trained, without_init):
    """Without theta0 the width-1 students start from weights drawn from their (width, seed),
    as every width-0.5 student does: they differ from the trained teacher's width-1 students,
    and the width-0.5 students, which never started from theta0, are the same. (That the fresh
    weights are those of the (width, seed) generator: tests/test_jobs.py.)"""
    assert not (without_init / "results/digits-mlp/pretrained/init.pt").exists()
    ours, theirs = tables(without_init)["models"], tables(trained)["models"]
    ours, theirs = ours[ours.role == "student"], theirs[theirs.role == "student"]
    assert ours.from_theta0.notna().all() and not ours.from_theta0.any()
    assert (theirs.from_theta0 == (theirs.width == 1)).all()
    for row in ours.itertuples():
        mine = logits(without_init, row)
        other = logits(trained, theirs[theirs.logits_path == row.logits_path.replace(
            "/pretrained/", "/teacher/")].iloc[0])
        if row.width == 1:
            assert not np.allclose(mine, other, atol=1e-3), row.logits_path
        else:
            np.testing.assert_allclose(mine, other, rtol=1e-6, err_msg=row.logits_path)


def test_editing_the_teacher_file_retrains_the_students_that_learn_from_it(with_init, tmp_path):
    """The file's content is in the teacher job's spec: untouched or only touched, nothing
    reruns; saved again with the same tensors, no student retrains; edited, the kd students
    retrain (counted from the block logs) and rcd and siddo, which depend on the teacher only
    through its theta0, are scored against it anew."""
    study = tmp_path / "study"
    shutil.copytree(with_init, study, symlinks=True)
    weights = study / "files/model.pt"
    assert planned_jobs(study) == {}
    weights.touch()
    assert planned_jobs(study) == {}
    state = torch.load(weights, weights_only=True)
    torch.save({name: tensor.clone() for name, tensor in state.items()}, weights)
    assert run_counting_students(study) == 0
    state["head.bias"] += 0.5
    torch.save(state, weights)
    assert planned_jobs(study)["train_teacher"] == 1
    assert run_counting_students(study) == 2 * 2  # kd at 2 widths x 2 seeds
    models = pd.read_parquet(study / "results/tables/models.parquet")
    teacher = models[models.role == "teacher"].iloc[0]
    assert (models[models.role == "student"].n_teacher_incorrect
            == teacher.n_teacher_incorrect).all()


def test_a_missing_teacher_file_is_a_config_error_naming_the_key(tmp_path):
    write_config(tmp_path, setups=setups(teachers={"given": {"weights": "absent/model.pt"}}),
                 **STUDY)
    result = snakemake(tmp_path, "-n", check=False)
    assert result.returncode != 0
    assert ("config error at setups.digits-mlp.teachers.given.weights: no file "
            "'absent/model.pt'") in result.stdout + result.stderr


def test_students_of_another_architecture_reach_every_table_and_figure(tmp_path):
    """A CNN teacher and MLP students: every table and figure is written; the rows name each
    model's architecture and the students' teacher's, and no student starts from the CNN's
    theta0."""
    cross = {"digits-cnn": {"dataset": "digits", "arch": "cnn", "student_arch": "mlp",
                            "recipe": RECIPE}}
    write_config(tmp_path, setups=cross, **STUDY)
    snakemake(tmp_path)
    models = tables(tmp_path)["models"]
    teacher, students = models[models.role == "teacher"], models[models.role == "student"]
    assert list(teacher.arch) == ["cnn"] and set(students.arch) == {"mlp"}
    assert set(models.teacher_arch) == {"cnn"} and set(models.teacher_source) == {"trained"}
    assert students.from_theta0.notna().all() and not students.from_theta0.any()
    assert len(students) == 2 * 2 * 3  # kd, rcd and siddo at 2 widths x 2 seeds
    for name in ("stats", "claims", "asymmetry", "scaling", "teacher_errors", "copied_errors"):
        assert len(pd.read_parquet(tmp_path / f"results/tables/{name}.parquet")), name
        assert (tmp_path / f"results/tables/{name}.csv").stat().st_size > 0, name
    figures = sorted(p.name for p in (tmp_path / "results/figures").iterdir())
    assert figures == sorted(["fig1_functional_digits-cnn.png", "fig2_payoff_digits-cnn.png",
                              "fig3_accuracy_digits-cnn.png", "fig4_width_digits-cnn.png",
                              "fig5_teacher_loss.png", "audit_digits-cnn.png"])
    weights = torch.load(tmp_path / "results/digits-cnn/teacher/model.pt", weights_only=True)
    assert weights["stage1.0.weight"].ndim == 4  # the teacher is a CNN: convolution kernels
