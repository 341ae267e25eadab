"""The config schema names exactly what the package's registries hold."""
from pathlib import Path

import jsonschema
import pytest
import yaml

from kdpipe.augment import AUGMENTATIONS
from kdpipe.data import FAMILIES
from kdpipe.models import ARCHS

SCHEMA = yaml.safe_load((Path(__file__).resolve().parents[1]
                         / "workflow/schemas/config.schema.yaml").read_text())


def test_schema_enums_match_the_registries():
    dataset = SCHEMA["properties"]["datasets"]["additionalProperties"]["properties"]
    setup = SCHEMA["properties"]["setups"]["additionalProperties"]["properties"]
    recipe = SCHEMA["definitions"]["recipe"]["properties"]
    assert sorted(dataset["family"]["enum"]) == sorted(FAMILIES)
    assert sorted(setup["arch"]["enum"]) == sorted(ARCHS)
    assert sorted(recipe["augment"]["enum"]) == sorted(AUGMENTATIONS)


MINIMAL = {"datasets": {"digits": {"family": "digits"}},
           "setups": {"digits-mlp": {"dataset": "digits", "arch": "mlp",
                                     "recipe": {"epochs": 1, "batch_size": 8}}},
           "widths": [1], "seeds": [0]}


def errors(**changes):
    validator = jsonschema.validators.validator_for(SCHEMA)(SCHEMA)
    return [error.message for error in validator.iter_errors({**MINIMAL, **changes})]


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12", "mps"])
def test_every_torch_device_form_is_accepted(device):
    assert errors(device=device) == []


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:x", "CUDA", "cpu ", ""])
def test_other_devices_are_refused(device):
    assert errors(device=device) == [f"{device!r} does not match '^(auto|cpu|mps|cuda(:[0-9]+)?)$'"]


@pytest.mark.parametrize("changes", [
    {"results": "my results"}, {"results": "out$dir"}, {"data_dir": "raw data"},
    {"datasets": {"my digits": {"family": "digits"}}},
    {"setups": {"digits mlp": MINIMAL["setups"]["digits-mlp"]}},
])
def test_names_that_a_path_cannot_carry_are_refused(changes):
    assert len(errors(**changes)) == 1 and "does not match" in errors(**changes)[0]


def test_ordinary_folders_and_names_are_accepted():
    assert errors(results="/scratch/me/kd-results_2.0", data_dir="../data",
                  datasets={"cifar10+aug": {"family": "cifar10"}}) == []
