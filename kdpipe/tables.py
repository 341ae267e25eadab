"""The models table: one row per trained model, merged from the rows the jobs wrote; and the
history table: one row per (model, epoch) of their training, from the histories they wrote."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from kdpipe.audit import at_chance, chance_accuracy
from kdpipe.io import ResultError, atomic_path
from kdpipe.metrics import ECE_BINS, expected_calibration_error
from kdpipe.rows import check_logits, check_metrics, read_labels, read_row

MODEL_COLUMNS = {  # name -> dtype; the order is the table's
    "setup": "string", "dataset": "string", "arch": "string", "role": "string",
    "teacher_id": "string",
    # the teacher's (of a student: its teacher's) architecture, and "trained" or "file" (given)
    "teacher_arch": "string", "teacher_source": "string",
    "method": "string",
    "alpha": "float64", "temperature": "float64", "width": "float64", "seed": "int64",
    "device": "string",  # the kind of device that trained it: cpu, cuda or mps
    "from_theta0": "boolean",  # students: started from the teacher's theta0; teachers: empty
    "accuracy": "float64", "loss": "float64", "train_loss": "float64",
    "activation_distance": "float64", "js_divergence": "float64",
    "prediction_agreement": "float64", "correct_agreement": "float64",
    "incorrect_agreement": "float64", "n_teacher_correct": "int64", "n_teacher_incorrect": "int64",
    "rank_disagreement": "float64",
    "ece": "float64", "ece_gap": "float64",  # computed by collect from the logits (collect_rows)
    # teachers, also computed by collect: the accuracy of always predicting the most frequent
    # test class, and whether the teacher is not significantly above it (kdpipe.audit)
    "chance_accuracy": "float64", "at_chance": "boolean",
    "logits_path": "string", "labels_path": "string",
    "copied_by_class": "object",  # students: per true class, teacher errors copied (kdpipe.audit)
}


def collect_rows(row_files: list, results, manifests: dict | None = None,
                 ece_bins: int = ECE_BINS) -> pd.DataFrame:
    """Read every row.json into one table, sorted so that the same study gives the same bytes.

    Each row and the files it lists are checked first: a missing or damaged row, labels or logits
    file (not float32 [N, C] for the N test labels and the teacher's C classes, or not finite) or
    a metric that is NaN where it must be a number raises ResultError naming the file and the
    remedy. ``manifests`` maps a student's row file to the manifest of the block that wrote it.

    The logits are read here anyway, so the calibration columns are computed here, for every
    model and without retraining: ``ece`` (kdpipe.metrics.expected_calibration_error with
    ``ece_bins`` bins) and, for a student, ``ece_gap`` = its ece minus its teacher's (NaN for
    teachers); so are a teacher's ``chance_accuracy`` and ``at_chance`` (kdpipe.audit's test;
    NA for students), which the figures read. A student whose teacher has no row among
    ``row_files`` raises ResultError.
    A student's ``teacher_arch`` and ``teacher_source`` are its teacher's, read from the
    teacher's row. Rows stored before those columns existed get the values every model then
    had: a trained teacher of the students' architecture, whose width-1 students started from
    its theta0.
    """
    results = Path(results)
    manifests = manifests or {}
    rows = {path: read_row(path, manifests.get(path)) for path in row_files}
    # labels_path -> labels; teacher_id -> C, ece, (architecture, source)
    labels, classes, teacher_ece, teachers = {}, {}, {}, {}
    # teachers first: their logits give the number of classes their students must have
    for path, row in sorted(rows.items(), key=lambda item: item[1]["role"] != "teacher"):
        check_metrics(row, path, manifests.get(path))
        if row["labels_path"] not in labels:
            labels[row["labels_path"]] = read_labels(results / row["labels_path"])
        y = labels[row["labels_path"]]
        logits = check_logits(results / row["logits_path"], len(y),
                              classes.get(row["teacher_id"]), path, manifests.get(path))
        row["ece"] = expected_calibration_error(logits, y, ece_bins)
        if row["role"] == "teacher":
            classes[row["teacher_id"]] = logits.shape[1]
            teacher_ece[row["teacher_id"]] = row["ece"]
            teachers[row["teacher_id"]] = (row["arch"], row.get("teacher_source", "trained"))
            row["chance_accuracy"] = chance_accuracy(y)
            row["at_chance"] = at_chance(int((np.argmax(logits, axis=1) == y).sum()), len(y),
                                         row["chance_accuracy"])
        elif row["teacher_id"] not in teacher_ece:
            raise ResultError(f"model row {path}: its teacher {row['teacher_id']} has no row "
                              "among the rows collected, so its ece_gap is undefined")
        else:
            row["ece_gap"] = row["ece"] - teacher_ece[row["teacher_id"]]
            row.setdefault("from_theta0", row["width"] == 1.0)
        row["teacher_arch"], row["teacher_source"] = teachers[row["teacher_id"]]
    # rows stored before devices were recorded have none
    table = pd.DataFrame([{"device": "", **row} for row in rows.values()],
                         columns=list(MODEL_COLUMNS))
    table = table.astype({k: v for k, v in MODEL_COLUMNS.items() if v != "string"})
    table = table.astype({k: str for k, v in MODEL_COLUMNS.items() if v == "string"})
    # within a setup the teacher comes first: its method is ""
    order = ["setup", "method", "alpha", "temperature", "width", "seed"]
    return table.sort_values(order, na_position="first").reset_index(drop=True)


HISTORY_NAME = "history.json"  # kdpipe.jobs.HISTORY, beside each model's logits
HISTORY_COLUMNS = {  # name -> dtype; the model's identity, then kdpipe.jobs.write_history's
    "setup": "string", "teacher_id": "string", "role": "string", "method": "string",
    "alpha": "float64", "temperature": "float64", "width": "float64", "seed": "int64",
    "epoch": "int64", "loss": "float64", "accuracy": "float64", "lr": "float64",
    "seconds": "float64",
}


def history_table(models: pd.DataFrame, results) -> pd.DataFrame:
    """One row per epoch of every model of the models table whose folder (that of its logits)
    holds a history.json: the model's identity columns, then the epoch's mean training loss,
    accuracy, learning rate and wall time. A model trained before histories were written has
    none and no rows; a siddo student shared by several teachers has rows under each. A damaged
    history raises ResultError naming the file."""
    results = Path(results)
    identity = [c for c in HISTORY_COLUMNS if c in MODEL_COLUMNS]
    rows, read = [], {}
    for model in models[identity + ["logits_path"]].to_dict("records"):
        path = results / Path(model.pop("logits_path")).parent / HISTORY_NAME
        if path not in read:
            try:
                read[path] = json.loads(path.read_text())["epochs"] if path.exists() else []
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError,
                    TypeError) as error:
                raise ResultError(f"training history {path} is damaged ({error}); remove it "
                                  "(the model's curves are then left out) and run the workflow "
                                  "again") from None
        rows += [{**model, **epoch} for epoch in read[path]]
    table = pd.DataFrame(rows, columns=list(HISTORY_COLUMNS))
    table = table.astype({k: v for k, v in HISTORY_COLUMNS.items() if v != "string"})
    return table.astype({k: str for k, v in HISTORY_COLUMNS.items() if v == "string"})


def write_table(table: pd.DataFrame, path: Path) -> None:
    """Write ``path`` (.parquet) and a .csv copy beside it, each atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        table.to_parquet(tmp, index=False)
    with atomic_path(path.with_suffix(".csv")) as tmp:
        table.to_csv(tmp, index=False)


def primary_teachers(models: pd.DataFrame) -> dict:
    """setup -> the teacher whose students a setup's own figures show: the one named "teacher"
    (the default), else the first by name. Figure 5 and the tables keep every teacher."""
    ids = models.loc[models["role"] == "teacher", ["setup", "teacher_id"]].drop_duplicates()
    primary = {}
    for setup, group in ids.groupby("setup"):
        names = sorted(group["teacher_id"])
        primary[setup] = f"{setup}/teacher" if f"{setup}/teacher" in names else names[0]
    return primary


def of_teachers(table: pd.DataFrame, teacher_ids) -> pd.DataFrame:
    """The rows of ``table`` (any table with a teacher_id column) that belong to ``teacher_ids``."""
    return table[table["teacher_id"].isin(list(teacher_ids))]
