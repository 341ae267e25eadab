"""A study's configuration: read, checked against workflow/schemas/config.schema.yaml and filled
with the defaults written there, so that a command outside Snakemake reads a config exactly as the
workflow does. The schema is the one place of every key's default and range (a dataset's options
are its family's, kdpipe.data).

Only the standard library, yaml and jsonschema are imported: the Snakefile imports this module
while it is parsed.
"""
from __future__ import annotations

import copy
import functools
from pathlib import Path

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"
GIVEN = ("weights", "init")  # a teacher's keys that give it by file


class ConfigError(ValueError):
    """A config that the schema or a rule across keys refuses; ``key`` is where (``setups.x.arch``,
    ``alphas[1]``, ``(top level)``), the message says what and names the value."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"config error at {key}: {problem}")
        self.key, self.problem = key, problem


@functools.cache
def schema(path: Path = SCHEMA_PATH) -> dict:
    """The config schema: the file's, with the config sections of the built-in methods, which
    the method registry defines with the methods (kdpipe.methods.SECTIONS)."""
    from kdpipe.methods import SECTIONS

    loaded = yaml.safe_load(Path(path).read_text())
    loaded["properties"].update(copy.deepcopy(SECTIONS))
    return loaded


# The defaults are filled by this validator rather than by snakemake.utils.validate, which sets
# each default by reference: one mutable default, such as a setup's `teachers: {teacher: {}}`, is
# then the same object in every setup (and in the schema), so that filling one setup's teacher
# fills them all. Its error also carries the schema and the whole config, defaults included.
@functools.cache
def _filling_validator(path: Path = SCHEMA_PATH):
    base = jsonschema.validators.validator_for(schema(path))

    def fill_defaults(validator, properties, instance, subschema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub:
                    instance.setdefault(key, copy.deepcopy(sub["default"]))
        yield from base.VALIDATORS["properties"](validator, properties, instance, subschema)

    return jsonschema.validators.extend(base, {"properties": fill_defaults})


def _check(instance, subschema: dict, at: tuple = (), path: Path = SCHEMA_PATH) -> None:
    """Fill ``instance``'s defaults in place from ``subschema`` (found at the keys ``at`` of a
    config); raise the most relevant error as a ConfigError. jsonschema's message names the value
    where it matters; it is never followed by the instance, which for a top-level error would be
    the whole config with every default."""
    error = jsonschema.exceptions.best_match(
        _filling_validator(path)(subschema).iter_errors(instance))
    if error is not None:
        parts = (*at, *error.absolute_path)
        key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".")
        raise ConfigError(key or "(top level)", error.message)


def validate(config: dict, path: Path = SCHEMA_PATH) -> dict:
    """A copy of ``config`` with the schema's defaults filled in; raises ConfigError, naming the
    key, on the first problem: the schema's, or a rule across keys (a setup's dataset must be
    defined, each teacher's merged recipe must be a recipe, a teacher given by file has neither
    seed nor recipe and its files exist, kd_masked classes mode needs a weight, a user's method
    must not take a built-in method's name and its loss file must define its function:
    kdpipe.methods.Registry.check)."""
    from kdpipe.methods import MethodError, Registry

    config = copy.deepcopy(config)
    _check(config, schema(path), path=path)
    try:
        Registry(config["methods"]).check()
    except MethodError as error:
        raise ConfigError(error.key, error.problem) from None
    masked = config["kd_masked"]
    if masked["enabled"] and masked["mode"] == "classes" and masked["incorrect_weight"] == 0:
        raise ConfigError("kd_masked.incorrect_weight",
                          "0 with mode classes makes the KD target one-hot on the label, so "
                          "kd-masked and rcd-masked would be plain cross-entropy like siddo; use a "
                          "weight > 0 or mode samples")
    for name, setup in config["setups"].items():
        if setup["dataset"] not in config["datasets"]:
            raise ConfigError(f"setups.{name}.dataset",
                              f"unknown dataset {setup['dataset']!r}; defined in datasets: "
                              f"{', '.join(config['datasets'])}")
        for teacher, overrides in setup["teachers"].items():
            if "weights" in overrides:
                check_given(overrides, f"setups.{name}.teachers.{teacher}")
            recipe = {**setup["recipe"], **overrides.get("recipe", {})}
            _check(recipe, schema(path)["definitions"]["recipe"],
                   at=("setups", name, "teachers", teacher, "recipe"), path=path)
    return config


def check_given(teacher: dict, key: str) -> None:
    """A teacher given by file (``weights``, optionally ``init``): it is not trained, so a seed
    or recipe of its own would do nothing; its files must exist, relative to the working
    directory (the folder snakemake runs in), when the config is read."""
    for unused in ("seed", "recipe"):
        if unused in teacher:
            raise ConfigError(f"{key}.{unused}",
                              f"a teacher given by file (weights) is not trained, so it has no "
                              f"{unused} of its own; the setup's recipe trains its students")
    for part in GIVEN:
        if part in teacher and not Path(teacher[part]).is_file():
            raise ConfigError(f"{key}.{part}",
                              f"no file {teacher[part]!r} (relative to the folder snakemake runs "
                              f"in, {Path.cwd()})")


def load(config_file, path: Path = SCHEMA_PATH) -> dict:
    """The YAML config file ``config_file``, validated and filled (``validate``)."""
    return validate(yaml.safe_load(Path(config_file).read_text()) or {}, path)


def recipe(**keys) -> dict:
    """A training recipe: ``keys`` (at least epochs and batch_size) with the schema's defaults
    for the rest, as a setup's recipe is filled; raises ConfigError on a bad key or value."""
    filled = copy.deepcopy(keys)
    _check(filled, schema()["definitions"]["recipe"], at=("recipe",))
    return filled
