"""The config schema names exactly what the package's registries hold."""
from pathlib import Path

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
