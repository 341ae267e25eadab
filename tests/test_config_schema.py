"""The config schema names exactly what the package's registries hold (what it refuses:
tests/test_faults.py)."""
from conftest import SCHEMA, schema_errors
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


def test_ordinary_folders_and_names_are_accepted():
    assert schema_errors(results="/scratch/me/kd-results_2.0", data_dir="../data",
                         datasets={"cifar10+aug": {"family": "cifar10"}}) == []
