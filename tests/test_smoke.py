"""Every setup of config/paper.yaml, one epoch, on tiny synthetic fixtures in the official data
layouts (tests/fixtures.py): the real workflow end to end on the CPU, acquiring nothing (the
files are already in place). Shakespeare's acquire accepts only the official file (its sha256),
so its setups read the fixture's generated play through the textfile family: the same windows
and models, under the same dataset name."""
import inspect

import pandas as pd
import pytest
import yaml

from conftest import REPO, snakemake
from fixtures import FIXTURES

pytestmark = pytest.mark.slow  # the real workflow, every paper setup


def smoke_config(data_dir) -> dict:
    config = yaml.safe_load((REPO / "config/paper.yaml").read_text())
    for name, dataset in config["datasets"].items():
        options = dataset.get("options", {})
        if dataset["family"] == "digits":
            continue
        build = FIXTURES[dataset["family"]]
        features = {"features": options["features"]} if "features" in options and \
            "features" in inspect.signature(build).parameters else {}
        fixture = build(data_dir / name, **features)
        dataset["options"] = {**options, **fixture}
        if dataset["family"] == "shakespeare":
            dataset.update(family="textfile", options={**dataset["options"],
                                                       "path": str(data_dir / name / "input.txt")})
    for setup in config["setups"].values():
        setup["recipe"]["epochs"] = 1
        # one epoch on a few synthetic samples leaves a teacher at chance: this test is about
        # the plumbing, so its students are trained all the same
        setup["allow_chance_teacher"] = True
    config.update(results="results", data_dir=str(data_dir), alphas=[0.5], widths=[0.5],
                  seeds=[0], plots={"formats": ["png"], "dpi": 40}, stats={"bootstrap": 10})
    return config


def test_every_paper_setup_runs_one_epoch_end_to_end(tmp_path):
    config = smoke_config(tmp_path / "data")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    snakemake(tmp_path)
    models = pd.read_parquet(tmp_path / "results/tables/models.parquet")
    teachers = {f"{name}/{teacher}" for name, setup in config["setups"].items()
                for teacher in setup.get("teachers", {"teacher": {}})}
    assert set(models.setup) == set(config["setups"]) and set(models.teacher_id) == teachers
    assert len(models) == 4 * len(teachers)  # each teacher, its kd, rcd and siddo student
    assert all(sorted(methods) == ["", "kd", "rcd", "siddo"]
               for _, methods in models.groupby("teacher_id").method)
    assert models.accuracy.between(0, 1).all() and models.loss.notna().all()
    students = models[models.role == "student"]
    assert students.prediction_agreement.between(0, 1).all()
    text = models[models.dataset == "shakespeare"]
    assert (text.n_teacher_correct + text.n_teacher_incorrect > 1000).all()  # every position counts
