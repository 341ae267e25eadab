"""A model's stored files, checked as they are read: its row (row.json), its test labels and
logits; each fault named with its file and the cheapest remedy that works. numpy only: a training
job checks its teacher's files with these, and need not import pandas."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from kdpipe.io import ResultError
from kdpipe.store import ROW

# Metrics that are a number for every model of that role; the two agreement splits are a number
# wherever their subset (n_teacher_correct, n_teacher_incorrect) is not empty.
ALWAYS_FINITE = {
    "teacher": ("accuracy", "loss", "train_loss"),
    "student": ("accuracy", "loss", "train_loss", "activation_distance", "js_divergence",
                "prediction_agreement", "rank_disagreement"),
}
IDENTITY = ("setup", "teacher_id", "logits_path", "labels_path")
SPLITS = {"correct_agreement": "n_teacher_correct", "incorrect_agreement": "n_teacher_incorrect"}


def remedy(row_path, manifest=None) -> str:
    """What to do about a model's lost or damaged files. A teacher: its job is forced to rerun
    (removing its folder would remove its students too); it trains to the same weights, which
    its students' digests hold, so its blocks rerun and keep every student. A student's folder
    is not an output of its block job (its manifest is), so the manifest goes too: the block
    reruns and trains only the students it does not find."""
    folder = Path(row_path).parent
    if manifest is None:
        return (f"retrain the teacher: snakemake --cores all --forcerun {folder / ROW} "
                "(with your other options, such as --configfile); on the same code and device "
                "it trains to the same weights, so its students are kept")
    return (f"remove the folder {folder} and its block's manifest {manifest}, and run the "
            "workflow again: the block reruns and trains only the models it lacks")


def read_row(path, manifest=None) -> dict:
    path = Path(path)
    if not path.exists():
        raise ResultError(f"model row {path} is missing; {remedy(path, manifest)}")
    try:
        row = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ResultError(f"model row {path} is damaged ({error}); "
                          f"{remedy(path, manifest)}") from None
    if not isinstance(row, dict) or row.get("role") not in ALWAYS_FINITE \
            or not all(isinstance(row.get(key), str) for key in IDENTITY):
        raise ResultError(f"model row {path} is damaged (it lacks the role or one of "
                          f"{', '.join(IDENTITY)}); {remedy(path, manifest)}")
    return row


def check_metrics(row: dict, path, manifest=None) -> None:
    """Refuse a metric that is NaN or infinite where it must be a number."""
    must = list(ALWAYS_FINITE[row["role"]])
    must += [metric for metric, subset in SPLITS.items()
             if row["role"] == "student" and row.get(subset)]
    bad = [f"{key}={row.get(key)}" for key in must
           if not isinstance(row.get(key), (int, float)) or not math.isfinite(row[key])]
    if bad:
        raise ResultError(f"model row {path} has metrics that must be numbers: {', '.join(bad)}; "
                          f"{remedy(path, manifest)}")


def read_labels(path: Path) -> np.ndarray:
    try:
        labels = np.load(path)
    except (OSError, ValueError, EOFError) as error:
        problem = f"missing or damaged ({error})"
    else:
        problem = None if labels.ndim == 1 and labels.dtype == np.int64 else \
            f"{labels.dtype} {list(labels.shape)}, not int64 [N]"
    if problem is not None:
        raise ResultError(f"test labels {path} are {problem}; remove them and run the workflow "
                          "again: the data step rewrites them (and everything after it reruns)")
    return labels


def check_logits(path: Path, n_labels: int, n_classes, row_path, manifest=None) -> np.ndarray:
    """Check a model's test logits: float32 [N, C] (N test labels, C classes), all finite.
    Returns them, memory-mapped."""
    problem = None
    try:
        logits = np.load(path, mmap_mode="r")
    except FileNotFoundError:
        problem = "missing"
    except (OSError, ValueError, EOFError) as error:
        problem = f"unreadable ({error})"
    else:
        if logits.dtype != np.float32 or logits.ndim != 2 or logits.shape[0] != n_labels \
                or logits.shape[1] != (n_classes or logits.shape[1]):
            problem = (f"{logits.dtype} {list(logits.shape)}, not float32 "
                       f"[{n_labels}, {n_classes or 'C'}]")
        elif not all(np.isfinite(logits[i:i + 65536]).all() for i in range(0, n_labels, 65536)):
            problem = "not finite everywhere (NaN or infinity)"
    if problem is not None:
        raise ResultError(f"test logits {path} of {row_path} are {problem}; "
                          f"{remedy(row_path, manifest)}")
    return logits
