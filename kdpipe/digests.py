"""Digests of training settings, and how the store of finished students survives new settings.

A student's row.json carries a digest of everything its weights depend on (kdpipe.jobs); a rerun
finds the student finished while that digest is unchanged. A setting added to the code would
enter every digest and retrain the whole store, so each setting added after the first stored
results declares its neutral value here: the value that reproduces the training from before the
setting existed. At its neutral value a setting is left out of the digest, and out of the specs
the workflow gives its training jobs (their text is Snakemake's rerun trigger, and a teacher's
spec is its checkpoint's key): adding a setting at its neutral value retrains nothing. Any other
value is digested, so a default moved away from its neutral value retrains what it changes, as
does a setting without an entry here, which is always digested.

Only the standard library is imported: the Snakefile imports this module while it is parsed.
"""
from __future__ import annotations

import hashlib
import json

# The setting (nested as in a student's training settings) -> its neutral value.
NEUTRAL = {
    "device": "cpu",  # the kind of device drawing the random streams: CPU students came first
    "recipe": {
        "precision": "fp32",  # IEEE float32 arithmetic throughout
        "stop_at_train_loss": None,  # every epoch of the recipe is trained
    },
}


def digest(obj) -> str:
    """A digest of a JSON-serialisable object (keys sorted): 32 hex digits."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:32]


def without_neutral(settings: dict, neutral: dict = NEUTRAL) -> dict:
    """``settings`` without the entries that are at their neutral value, at any depth."""
    kept = {}
    for key, value in settings.items():
        if key in neutral and isinstance(neutral[key], dict) and isinstance(value, dict):
            kept[key] = without_neutral(value, neutral[key])
        elif key not in neutral or value != neutral[key]:
            kept[key] = value
    return kept


def recipe_with_neutral(recipe: dict) -> dict:
    """A recipe from a spec with the settings left out at their neutral values put back."""
    return {**NEUTRAL["recipe"], **recipe}
