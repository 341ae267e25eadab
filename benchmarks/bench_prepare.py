"""Peak memory of data preparation against the size of the prepared file.

Writes a synthetic data set in each official on-disk layout (CIFAR-10 pickles, SVHN .mat files,
the TinyImageNet JPEG tree, the Speech Commands WAV tree) at its real size times ``--fraction``
(1 = the real size), runs ``python -m kdpipe prepare-data`` on it in a child process, as the
workflow's prepare_data job does, and prints the child's peak resident memory (ru_maxrss from
os.wait4, i.e. that process alone) against the prepared .pt file's size. The reference, measured
in the same run, is the peak of a child that only imports what every prepare-data run imports
(Python, torch, numpy, kdpipe) and exits: a part of the peak that does not grow with the data
(a family's own readers, PIL, scipy, soundfile, torchaudio, add some 100-300 MiB more). The
target is a peak of at most about 2.5x the prepared file.

    python benchmarks/bench_prepare.py                       # every data set at a quarter size
    python benchmarks/bench_prepare.py --fraction 1 --only tinyimagenet
    python benchmarks/bench_prepare.py --work /big/disk      # where the synthetic files go

The synthetic files are deleted after each case. They are written by the writers of the test
fixtures (tests/fixtures.py), the same code that writes the tests' small data sets: pixels are
smooth random images (JPEGs of realistic size and decoding cost), audio is noise at 16 kHz,
16-bit, 1 s per clip.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
import fixtures  # noqa: E402  (the writers of the official layouts)

# The real sizes: (train, test) samples; Speech Commands also its validation clips (left out).
REAL = {
    "cifar10": (50_000, 10_000),
    "svhn": (73_257, 26_032),
    "tinyimagenet": (100_000, 10_000),  # 200 classes x (500 train + 50 val)
    "speechcommands": (84_843, 11_005, 9_981),  # v0.02: train, testing_list, validation_list
}
CASES = {  # case -> (family, options)
    "cifar10": ("cifar10", {}),
    "svhn": ("svhn", {}),
    "tinyimagenet": ("tinyimagenet", {}),
    "speechcommands-waveform": ("speechcommands", {"features": "waveform"}),
    "speechcommands-logmel": ("speechcommands", {"features": "logmel"}),
}
IMPORTS = "import torch, numpy, kdpipe.cli, kdpipe.data"  # what every case imports


def scaled(n: int, fraction: float) -> int:
    return max(1, round(n * fraction))


def write_cifar10(raw: Path, fraction: float, rng) -> None:
    train, test = (scaled(n, fraction) for n in REAL["cifar10"])
    fixtures.write_cifar10(raw, rng.integers(0, 256, (train + test, 32, 32, 3), dtype=np.uint8),
                           rng.integers(0, 10, train + test), test)


def write_svhn(raw: Path, fraction: float, rng) -> None:
    train, test = (scaled(n, fraction) for n in REAL["svhn"])
    fixtures.write_svhn(raw, fixtures.smooth_images(rng, train + test, 32),
                        rng.integers(0, 10, train + test), test)


def write_tinyimagenet(raw: Path, fraction: float, rng) -> None:
    wnids = [f"n{i:08d}" for i in range(200)]
    per_class = scaled(500, fraction)
    val = fixtures.smooth_images(rng, scaled(REAL["tinyimagenet"][1], fraction), 64)
    fixtures.write_tinyimagenet(
        raw, wnids, ((wnid, fixtures.smooth_images(rng, per_class, 64)) for wnid in wnids),
        ((image, wnids[k % 200]) for k, image in enumerate(val)))


def write_speechcommands(raw: Path, fraction: float, rng) -> None:
    train, test, validation = (scaled(n, fraction) for n in REAL["speechcommands"])
    clip = rng.standard_normal(16000) * 3000 / 32768

    def clips():
        for k in range(train + test + validation):
            split = "testing" if k < test else "validation" if k < test + validation else "train"
            # one noise clip, rolled: distinct files without drawing 1.6 billion samples
            yield f"word{k % 35:02d}/speaker{k:06d}_nohash_0.wav", np.roll(clip, k), split

    fixtures.write_speechcommands(raw, clips())


WRITERS = {"cifar10": write_cifar10, "svhn": write_svhn, "tinyimagenet": write_tinyimagenet,
           "speechcommands": write_speechcommands}


def peak_of(command: list, log: Path, env: dict) -> tuple[float, float]:
    """(peak RSS in bytes, wall seconds) of a child process; raises when it fails."""
    start = time.perf_counter()
    with open(log, "w") as f:
        child = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{log.read_text()[-3000:]}")
    return usage.ru_maxrss * 1024, seconds  # ru_maxrss is in KiB on Linux


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fraction", type=float, default=0.25,
                   help="share of each data set's real size (default 0.25; 1 = real size)")
    p.add_argument("--only", nargs="*", choices=sorted(CASES), help="cases to run (default all)")
    p.add_argument("--work", type=Path, default=None, help="folder for the synthetic files")
    p.add_argument("--code", type=Path, default=REPO,
                   help="the kdpipe source tree to measure (default: this repository)")
    args = p.parse_args(argv)
    env = {**os.environ, "PYTHONPATH": str(args.code.resolve())}

    work = Path(tempfile.mkdtemp(prefix="bench_prepare_", dir=args.work))
    rows = []
    try:
        baseline, _ = peak_of([sys.executable, "-c", IMPORTS], work / "imports.log", env)
        print(f"reference: a child that imports what prepare-data imports and exits peaks at "
              f"{baseline / 2**20:,.0f} MiB", flush=True)
        for case in args.only or list(CASES):
            family, options = CASES[case]
            raw, out = work / "raw", work / "prepared.pt"
            start = time.perf_counter()
            WRITERS[family](raw, args.fraction, np.random.default_rng(0))
            written = time.perf_counter() - start
            spec = json.dumps({"family": family, "options": options})
            peak, seconds = peak_of(
                [sys.executable, "-m", "kdpipe", "prepare-data", "--spec", spec, "--raw-dir",
                 str(raw), "--out", str(out), "--labels-out", str(work / "labels.npy")],
                work / f"{case}.log", env)
            size = out.stat().st_size
            samples = (work / f"{case}.log").read_text().splitlines()
            summary = next((line for line in samples if line.startswith(f"{family}:")), "")
            rows.append((case, size, peak, seconds))
            print(f"{case:24s} prepared {size / 2**20:9,.0f} MiB  peak RSS {peak / 2**20:9,.0f} "
                  f"MiB  = {peak / size:5.2f}x the file, {(peak - baseline) / size:5.2f}x above "
                  f"the imports  ({seconds:.0f} s; synthetic files written in {written:.0f} s)"
                  f"\n{'':24s} {summary}", flush=True)
            shutil.rmtree(raw)
            out.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nfraction {args.fraction:g} of the real sizes; reference (imports only) "
          f"{baseline / 2**20:,.0f} MiB")
    print("| data set | prepared file | peak RSS | peak / file | (peak - imports) / file | time |")
    print("|---|---|---|---|---|---|")
    for case, size, peak, seconds in rows:
        print(f"| {case} | {size / 2**20:,.0f} MiB | {peak / 2**20:,.0f} MiB | {peak / size:.2f}x "
              f"| {(peak - baseline) / size:.2f}x | {seconds:.0f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
