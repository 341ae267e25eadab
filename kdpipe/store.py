"""The files a study keeps, by name, and the check that those Snakemake does not track are there.

A teacher's folder holds its initial weights (where it has them), trained weights, train and test
logits and row; a student's folder below it, its test logits and row. A block job's declared
output is its manifest, listing the rows and the test logits of its students (kdpipe.jobs):
Snakemake does not track those files, nor a teacher's initial weights (a teacher given by file
may have none), so one lost after its job finished would go unnoticed (the job's outputs exist,
so nothing reruns). ``lost_student_files`` and ``lost_teacher_inits`` stat them, and the
Snakefile refuses to run while one is missing (``lost_message``): removing the manifest that
lists a lost student file reruns that block, which trains only the students it lacks; removing
the row of a teacher whose initial weights are lost retrains the teacher, to the same weights.

Only the standard library is imported: the Snakefile imports this module while it is parsed.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

TEACHER_INIT, TEACHER_WEIGHTS = "init.pt", "model.pt"
TEST_LOGITS, TRAIN_LOGITS, ROW, TIMING = "logits.npy", "train_logits.npy", "row.json", "timing.json"
HISTORY = "history.json"
STUDENT_WEIGHTS = TEACHER_WEIGHTS  # a student's kept weights (keep_student_weights), as a teacher's
# a teacher job's declared outputs: name in the rules -> file in the teacher's folder
TEACHER_FILES = {"weights": TEACHER_WEIGHTS, "train_logits": TRAIN_LOGITS, "logits": TEST_LOGITS,
                 "row": ROW}
SHOWN = 10  # lost files named in the message; the files to remove are all named


def write_manifest(path, rows: list[str], logits: list[str]) -> None:
    """A block's manifest: its students' rows and test logits, paths relative to the results
    folder (a shared siddo student's logits are in its owner's folder, not beside its row)."""
    from kdpipe.io import write_json

    write_json(path, {"students": rows, "logits": logits})


def manifest_files(path) -> dict:
    """The files a manifest lists: {"students": [rows], "logits": [test logits]}; a manifest
    written before it listed the logits has none."""
    listed = json.loads(Path(path).read_text())
    return {"students": listed["students"], "logits": listed.get("logits", [])}


def lost_student_files(manifests, results, logits: bool = True) -> dict[str, list[str]]:
    """manifest -> the files it lists that are missing, for every manifest in ``manifests`` that
    exists (paths as given; the listed files are below ``results``): its students' rows, and
    with ``logits`` their test logits (a study copied without them still draws its figures and
    audit). Only stats files: about 10 ms per thousand students on a local disk whose cache holds
    them, 0.1 s from a cold one."""
    lost = {}
    for manifest in manifests:
        try:
            listed = manifest_files(manifest)
        except FileNotFoundError:
            continue  # the block has not run, or is to rerun
        except (OSError, ValueError, KeyError, TypeError):
            lost[manifest] = [f"{manifest} itself (unreadable)"]
            continue
        checked = listed["students"] + (listed["logits"] if logits else [])
        missing = [os.path.join(results, path) for path in checked
                   if not os.path.exists(os.path.join(results, path))]
        if missing:
            lost[manifest] = missing
    return lost


def lost_teacher_inits(inits) -> list[str]:
    """Of ``inits``, the initial weights (init.pt) of the teachers that have them, those missing
    from a teacher whose job finished (its row is there)."""
    return [path for path in inits if not os.path.exists(path)
            and os.path.exists(os.path.join(os.path.dirname(path), ROW))]


def lost_message(students: dict[str, list[str]], inits: list[str]) -> str | None:
    """What to do about ``lost_student_files`` and ``lost_teacher_inits``, or None where nothing
    is lost: the files (the first SHOWN), and the manifests and teacher rows to remove, as one
    command."""
    files = [f"  {path} (listed by {manifest})" for manifest, paths in students.items()
             for path in paths] + [f"  {path} (a teacher's initial weights)" for path in inits]
    if not files:
        return None
    remove = []
    if students:
        remove.append("the block manifest(s) that list them (each of those blocks reruns and "
                      "trains only the students it lacks)")
    if inits:
        remove.append("the row of each teacher named (it retrains to the same weights and keeps "
                      "its students)")
    rows = [os.path.join(os.path.dirname(path), ROW) for path in inits]
    more = [f"  ... and {len(files) - SHOWN} more"] if len(files) > SHOWN else []
    return "\n".join([
        f"{len(files)} file(s) of finished jobs are missing:", *files[:SHOWN], *more,
        f"Remove {' and '.join(remove)}, then run again. Do this first: every snakemake command "
        "(--unlock too) stops on this check until then.",
        f"  rm {' '.join([*students, *rows])}"])
