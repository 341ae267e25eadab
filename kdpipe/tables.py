"""The models table: one row per trained model, merged from the rows the jobs wrote."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from kdpipe.io import atomic_path

MODEL_COLUMNS = {  # name -> dtype; the order is the table's
    "setup": "string", "dataset": "string", "arch": "string", "role": "string",
    "teacher_id": "string", "method": "string",
    "alpha": "float64", "temperature": "float64", "width": "float64", "seed": "int64",
    "accuracy": "float64", "loss": "float64", "train_loss": "float64",
    "activation_distance": "float64", "js_divergence": "float64",
    "prediction_agreement": "float64", "correct_agreement": "float64",
    "incorrect_agreement": "float64", "n_teacher_correct": "int64", "n_teacher_incorrect": "int64",
    "rank_disagreement": "float64", "logits_path": "string", "labels_path": "string",
    "copied_by_class": "object",  # students: per true class, teacher errors copied (kdpipe.audit)
}


def collect_rows(row_files: list, results) -> pd.DataFrame:
    """Read every row.json into one table, sorted so that the same study gives the same bytes."""
    rows = []
    for path in row_files:
        try:
            rows.append(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"cannot read model row {path}: {error}") from None
    table = pd.DataFrame(rows, columns=list(MODEL_COLUMNS))
    table = table.astype({k: v for k, v in MODEL_COLUMNS.items() if v != "string"})
    table = table.astype({k: str for k, v in MODEL_COLUMNS.items() if v == "string"})
    # within a setup the teacher comes first: its method is ""
    order = ["setup", "method", "alpha", "temperature", "width", "seed"]
    return table.sort_values(order, na_position="first").reset_index(drop=True)


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
