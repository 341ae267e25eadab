"""The config schema names exactly what the package's registries hold."""
import pytest

from conftest import SCHEMA, TINY, schema_errors
from kdpipe.augment import AUGMENTATIONS
from kdpipe.data import FAMILIES
from kdpipe.models import ARCHS


def test_schema_enums_match_the_registries():
    dataset = SCHEMA["properties"]["datasets"]["additionalProperties"]["properties"]
    setup = SCHEMA["properties"]["setups"]["additionalProperties"]["properties"]
    recipe = SCHEMA["definitions"]["recipe"]["properties"]
    assert sorted(dataset["family"]["enum"]) == sorted(FAMILIES)
    assert sorted(setup["arch"]["enum"]) == sorted(ARCHS)
    assert sorted(recipe["augment"]["enum"]) == sorted(AUGMENTATIONS)


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12", "mps"])
def test_every_torch_device_form_is_accepted(device):
    assert schema_errors(device=device) == []


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:x", "CUDA", "cpu ", ""])
def test_other_devices_are_refused(device):
    assert schema_errors(device=device) == [
        f"{device!r} does not match '^(auto|cpu|mps|cuda(:[0-9]+)?)$'"]


@pytest.mark.parametrize("changes", [
    {"results": "my results"}, {"results": "out$dir"}, {"data_dir": "raw data"},
    {"datasets": {"my digits": {"family": "digits"}}},
    {"setups": {"digits mlp": TINY["setups"]["digits-mlp"]}},
])
def test_names_that_a_path_cannot_carry_are_refused(changes):
    assert len(schema_errors(**changes)) == 1 and "does not match" in schema_errors(**changes)[0]


def test_ordinary_folders_and_names_are_accepted():
    assert schema_errors(results="/scratch/me/kd-results_2.0", data_dir="../data",
                         datasets={"cifar10+aug": {"family": "cifar10"}}) == []
