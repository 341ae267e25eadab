"""The config schema names exactly what the package's registries hold (what it refuses:
tests/test_faults.py); kdpipe.config reads a config as the workflow does: filled with the
schema's defaults, each error naming its key."""
import json

import pytest
import yaml

from conftest import SCHEMA, TINY, schema_errors
from kdpipe import config
from kdpipe.augment import AUGMENTATIONS
from kdpipe.data import FAMILIES
from kdpipe.models import ARCHS
from kdpipe.train import Recipe


def test_schema_enums_match_the_registries():
    dataset = SCHEMA["properties"]["datasets"]["additionalProperties"]["properties"]
    setup = SCHEMA["properties"]["setups"]["additionalProperties"]["properties"]
    recipe = SCHEMA["definitions"]["recipe"]["properties"]
    assert sorted(dataset["family"]["enum"]) == sorted(FAMILIES)
    assert sorted(SCHEMA["definitions"]["arch"]["enum"]) == sorted(ARCHS)
    # a setup's teacher and students take an architecture of that one list
    assert setup["arch"]["$ref"] == setup["student_arch"]["$ref"] == "#/definitions/arch"
    assert sorted(recipe["augment"]["enum"]) == sorted(AUGMENTATIONS)


def test_the_figure_options_are_the_schemas_plots_keys_with_its_defaults():
    """make_figures refuses an option it does not know, and fills the ones a caller leaves out:
    the workflow passes it the config's plots section, filled from the schema."""
    from kdpipe.plots import DEFAULT_OPTIONS

    schema = SCHEMA["properties"]["plots"]["properties"]
    assert {key: entry["default"] for key, entry in schema.items()} == DEFAULT_OPTIONS


def test_ordinary_folders_and_names_are_accepted():
    assert schema_errors(results="/scratch/me/kd-results_2.0", data_dir="../data",
                         datasets={"cifar10+aug": {"family": "cifar10"}}) == []


def test_recipe_fields_are_the_schemas_recipe_keys():
    """The schema holds every recipe default; Recipe takes every field."""
    recipe = SCHEMA["definitions"]["recipe"]
    assert set(recipe["properties"]) == set(Recipe.__dataclass_fields__)
    assert set(recipe["required"]) | {k for k, v in recipe["properties"].items()
                                      if "default" in v} == set(Recipe.__dataclass_fields__)
    filled = config.recipe(epochs=3, batch_size=8, lr=0.1)
    assert Recipe(**filled) == Recipe(epochs=3, batch_size=8, optimizer="adam", lr=0.1,
                                      momentum=0.9, weight_decay=0, schedule="constant",
                                      eval_batch_size=1024, augment="none", augment_options={},
                                      stop_at_train_loss=None, precision="fp32")


def test_validate_fills_a_copy_and_no_two_setups_share_a_default():
    """Each default is copied where it is filled: with one shared object, filling one setup's
    teachers would fill the other's."""
    given = {**TINY, "setups": {name: {"dataset": "digits", "arch": "mlp",
                                       "recipe": {"epochs": 1, "batch_size": 8}}
                                for name in ("a", "b")}}
    before = json.dumps(given, sort_keys=True)
    filled = config.validate(given)
    assert json.dumps(given, sort_keys=True) == before  # the caller's config is left alone
    a, b = filled["setups"]["a"], filled["setups"]["b"]
    assert a["teachers"] == b["teachers"] == {"teacher": {}}
    assert a["teachers"] is not b["teachers"] and a["resources"] is not b["resources"]
    assert filled["block"] == {"seeds": 10, "split_runs": False}
    assert a["recipe"]["precision"] == "fp32" and a["recipe"]["stop_at_train_loss"] is None
    assert SCHEMA == config.schema()  # filling a config changes no default of the schema


@pytest.mark.parametrize("change, key, problem", [
    ({"colour": "red"}, "(top level)", "Additional properties are not allowed ('colour' was "
                                       "unexpected)"),
    ({"alphas": [0.5, 1.5]}, "alphas[1]", "1.5 is greater than the maximum of 1"),
    ({"setups": {"x": {"dataset": "digits", "arch": "mlp", "recipe": {"epochs": 1},
                       "teachers": {"t": {}}}}},
     "setups.x.recipe", "'batch_size' is a required property"),
    ({"setups": {"x": {"dataset": "digits", "arch": "mlp", "recipe": {"epochs": 1, "batch_size": 8},
                       "teachers": {"t": {"recipe": {"lr": -1}}}}}},
     "setups.x.teachers.t.recipe.lr", "-1 is less than or equal to the minimum of 0"),
    ({"setups": {"x": {"dataset": "mnist", "arch": "mlp",
                       "recipe": {"epochs": 1, "batch_size": 8}}}},
     "setups.x.dataset", "unknown dataset 'mnist'; defined in datasets: digits"),
])
def test_a_config_error_names_the_key_and_the_problem_only(change, key, problem):
    with pytest.raises(config.ConfigError) as error:
        config.validate({**TINY, **change})
    assert (error.value.key, error.value.problem) == (key, problem)
    assert str(error.value) == f"config error at {key}: {problem}"


def test_load_reads_and_fills_a_config_file(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(TINY))
    assert config.load(path) == config.validate(TINY)
    path.write_text("seeds: [0]\n")
    with pytest.raises(config.ConfigError, match=r"config error at \(top level\): 'datasets' is a "
                                                 "required property"):
        config.load(path)


def test_a_teacher_given_by_file_has_files_that_exist_and_no_seed_or_recipe(tmp_path,
                                                                            monkeypatch):
    """Paths are relative to the working directory (the folder snakemake runs in); a missing
    file, an init without weights, or a seed or recipe that would do nothing is refused, naming
    the key."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.pt").write_bytes(b"weights")

    def given(**teacher):
        return {**TINY, "setups": {"x": {"dataset": "digits", "arch": "mlp",
                                         "recipe": {"epochs": 1, "batch_size": 8},
                                         "teachers": {"t": teacher}}}}

    assert config.validate(given(weights="model.pt"))["setups"]["x"]["teachers"] == {
        "t": {"weights": "model.pt"}}
    for teacher, key, problem in [
        ({"weights": "model.pt", "init": "init.pt"}, "setups.x.teachers.t.init",
         f"no file 'init.pt' (relative to the folder snakemake runs in, {tmp_path})"),
        ({"weights": "absent.pt"}, "setups.x.teachers.t.weights", "no file 'absent.pt'"),
        ({"weights": "model.pt", "seed": 1}, "setups.x.teachers.t.seed",
         "a teacher given by file (weights) is not trained, so it has no seed of its own"),
        ({"weights": "model.pt", "recipe": {"epochs": 2}}, "setups.x.teachers.t.recipe",
         "a teacher given by file (weights) is not trained, so it has no recipe of its own"),
        ({"init": "model.pt"}, "setups.x.teachers.t", "'weights' is a dependency of 'init'"),
    ]:
        with pytest.raises(config.ConfigError) as error:
            config.validate(given(**teacher))
        assert error.value.key == key and problem in error.value.problem, teacher


def test_a_setups_student_architecture_and_widths_are_checked():
    setup = {"dataset": "digits", "arch": "cnn", "recipe": {"epochs": 1, "batch_size": 8}}
    for change, key in [({"student_arch": "lenet"}, "setups.x.student_arch"),
                        ({"widths": []}, "setups.x.widths"),
                        ({"widths": [0.5, 0]}, "setups.x.widths[1]")]:
        with pytest.raises(config.ConfigError) as error:
            config.validate({**TINY, "setups": {"x": {**setup, **change}}})
        assert error.value.key == key, change
