"""Time and peak memory of the teacher-error audit on a study of the paper's shape.

Writes a synthetic results folder shaped like config/paper.yaml: its 12 setups and 14 teachers,
each teacher's test logits at the real test-set size (CIFAR 10,000 x 10 ... Tiny Shakespeare
111,360 x 65 per model) and ``--students`` students per teacher (kd, rcd and siddo over widths
and seeds, copying a random share of the teacher's errors), with the models table a collect step
would write, each student row holding its ``copied_by_class``. Then runs ``python -m kdpipe
audit`` in a child process and prints its wall time and peak RSS (ru_maxrss from os.wait4).

With ``--student-logits`` every student's logits are written too (as a training job does), and
the audit is also run with ``--code`` pointing at another kdpipe tree (e.g. the version before
copied_by_class, which reads every student's logits): the reference, in the same run.

    python benchmarks/bench_audit.py                            # 300 students per teacher, no student logits
    python benchmarks/bench_audit.py --students 30 --student-logits --reference /tmp/old-kdpipe
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]

# setup -> (dataset, test samples N, classes C, teachers): config/paper.yaml's setups
SETUPS = {
    "digits-mlp": ("digits", 1_258, 10, 1),
    "cifar10-resnet18": ("cifar10", 10_000, 10, 3),
    "cifar10-vgg19": ("cifar10", 10_000, 10, 1),
    "cifar10-vit": ("cifar10", 10_000, 10, 1),
    "cifar100-resnet18": ("cifar100", 10_000, 100, 1),
    "svhn-resnet18": ("svhn", 26_032, 10, 1),
    "tinyimagenet-resnet18": ("tinyimagenet", 10_000, 200, 1),
    "speechcommands-m5": ("speechcommands-wave", 11_005, 35, 1),
    "speechcommands-logmel_cnn": ("speechcommands-logmel", 11_005, 35, 1),
    "urbansound8k-logmel_cnn": ("urbansound8k-logmel", 837, 10, 1),
    "shakespeare-char_lstm": ("shakespeare", 111_360, 65, 1),
    "shakespeare-char_gpt": ("shakespeare", 111_360, 65, 1),
}
TEACHER_NAMES = ["teacher", "epochs30", "loss0.5"]


def students_of(count: int):
    """(method, alpha, temperature, width, seed) of ``count`` students of one teacher."""
    grid = [(m, a, 1.0, w, s) for s in range(10) for w in (0.25, 0.5, 1.0, 2.0)
            for a in (0.1, 0.5, 0.9) for m in ("kd", "rcd")]
    grid += [("siddo", 0.0, np.nan, w, s) for s in range(10) for w in (0.25, 0.5, 1.0, 2.0)]
    return (grid * (count // len(grid) + 1))[:count]


def write_study(results: Path, students: int, student_logits: bool, rng) -> int:
    """The synthetic results folder; returns the bytes of logits written."""
    rows, written, test_labels = [], 0, {}
    for setup, (dataset, n, c, teachers) in SETUPS.items():
        labels_path = results / "data" / f"{dataset}.labels.npy"
        if dataset not in test_labels:  # one labels file per dataset, as prepare_data writes
            test_labels[dataset] = rng.integers(0, c, n)
            labels_path.parent.mkdir(parents=True, exist_ok=True)
            np.save(labels_path, test_labels[dataset])
        labels = test_labels[dataset]
        for name in TEACHER_NAMES[:teachers]:
            teacher_id = f"{setup}/{name}"
            # a teacher right on ~80 % of the samples, its errors on random classes
            predicted = np.where(rng.random(n) < 0.8, labels, rng.integers(0, c, n))
            logits = rng.random((n, c), dtype=np.float32)
            logits[np.arange(n), predicted] += 4  # the argmax, exactly
            folder = results / setup / name
            folder.mkdir(parents=True)
            np.save(folder / "logits.npy", logits)
            written += logits.nbytes
            common = {"setup": setup, "dataset": dataset, "arch": setup.split("-")[1],
                      "teacher_id": teacher_id, "labels_path": os.path.relpath(labels_path, results)}
            rows.append({**common, "role": "teacher", "method": "", "alpha": np.nan,
                         "temperature": np.nan, "width": 1.0, "seed": 0,
                         "logits_path": f"{setup}/{name}/logits.npy", "copied_by_class": None})
            wrong = predicted != labels
            for k, (method, alpha, temperature, width, seed) in enumerate(students_of(students)):
                copies = wrong & (rng.random(n) < rng.uniform(0.2, 0.6))
                copied = np.bincount(labels[copies], minlength=c).tolist()
                path = f"{setup}/{name}/{method}/s{k}/logits.npy"
                if student_logits:
                    student = rng.random((n, c), dtype=np.float32)
                    student[np.arange(n), np.where(copies, predicted, labels)] += 4
                    (results / path).parent.mkdir(parents=True)
                    np.save(results / path, student)
                    written += student.nbytes
                rows.append({**common, "role": "student", "method": method, "alpha": alpha,
                             "temperature": temperature, "width": width, "seed": seed,
                             "logits_path": path, "copied_by_class": copied})
    (results / "tables").mkdir()
    pd.DataFrame(rows).to_parquet(results / "tables" / "models.parquet", index=False)
    return written


def run_audit(results: Path, code: Path, out: str) -> tuple[float, float]:
    """(wall seconds, peak RSS bytes) of ``python -m kdpipe audit`` with kdpipe from ``code``."""
    env = {**os.environ, "PYTHONPATH": str(code.resolve())}
    spec = json.dumps({"formats": ["png", "pdf"], "dpi": 150})
    command = [sys.executable, "-m", "kdpipe", "audit", "--spec", spec, "--tables",
               str(results / "tables"), "--results", str(results), "--out", str(results / out)]
    start = time.perf_counter()
    with open(results / f"{out}.log", "w") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"audit failed:\n{(results / f'{out}.log').read_text()[-3000:]}")
    return seconds, usage.ru_maxrss * 1024


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--students", type=int, default=300, help="students per teacher (default 300)")
    p.add_argument("--student-logits", action="store_true", help="write every student's logits too")
    p.add_argument("--reference", type=Path, help="another kdpipe tree to time on the same study")
    p.add_argument("--work", type=Path, default=None, help="folder for the synthetic study")
    args = p.parse_args(argv)
    results = Path(tempfile.mkdtemp(prefix="bench_audit_", dir=args.work))
    try:
        start = time.perf_counter()
        written = write_study(results, args.students, args.student_logits, np.random.default_rng(0))
        models = len(pd.read_parquet(results / "tables" / "models.parquet"))
        print(f"{models:,} models in {len(SETUPS)} setups, {written / 2**30:.2f} GiB of logits "
              f"written in {time.perf_counter() - start:.0f} s", flush=True)
        seconds, peak = run_audit(results, REPO, "figures")
        copied = pd.read_parquet(results / "tables" / "copied_errors.parquet")
        print(f"audit (this tree):      {seconds:6.1f} s, peak RSS {peak / 2**20:,.0f} MiB; "
              f"copied_errors {len(copied):,} rows", flush=True)
        if args.reference:
            ref_seconds, ref_peak = run_audit(results, args.reference, "figures_reference")
            reference = pd.read_parquet(results / "tables" / "copied_errors.parquet")
            pd.testing.assert_frame_equal(copied, reference)
            print(f"audit (reference tree): {ref_seconds:6.1f} s, peak RSS {ref_peak / 2**20:,.0f} MiB"
                  f"; the same copied_errors table\nratio: {ref_seconds / seconds:.1f}x faster")
    finally:
        shutil.rmtree(results, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
