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

The synthetic files are deleted after each case. Pixels are smooth random images (JPEGs of
realistic size and decoding cost), audio is noise at 16 kHz, 16-bit, 1 s per clip.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

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


def smooth_images(rng, n: int, size: int) -> np.ndarray:
    """uint8 [n, size, size, 3]: 8x8 random colours upsampled, then a little noise."""
    coarse = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    images = coarse.repeat(size // 8, axis=1).repeat(size // 8, axis=2)
    return images + rng.integers(0, 8, images.shape, dtype=np.uint8)


def write_cifar10(raw: Path, fraction: float, rng) -> None:
    folder = raw / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train, test = (scaled(n, fraction) for n in REAL["cifar10"])
    splits = [(f"data_batch_{i + 1}", len(rows)) for i, rows in
              enumerate(np.array_split(np.arange(train), 5))] + [("test_batch", test)]
    for name, n in splits:
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         b"labels": rng.integers(0, 10, n).tolist()}, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"class{i}".encode() for i in range(10)]}, f, protocol=2)


def write_svhn(raw: Path, fraction: float, rng) -> None:
    from scipy.io import savemat

    raw.mkdir(parents=True)
    for name, n in zip(("train_32x32.mat", "test_32x32.mat"), REAL["svhn"]):
        n = scaled(n, fraction)
        x = np.ascontiguousarray(smooth_images(rng, n, 32).transpose(1, 2, 3, 0))
        savemat(raw / name, {"X": x, "y": rng.integers(1, 11, (n, 1)).astype(np.uint8)})


def write_tinyimagenet(raw: Path, fraction: float, rng) -> None:
    from PIL import Image

    root = raw / "tiny-imagenet-200"
    wnids = [f"n{i:08d}" for i in range(200)]
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    per_class = scaled(500, fraction)
    for wnid in wnids:
        folder = root / "train" / wnid / "images"
        folder.mkdir(parents=True)
        for k, image in enumerate(smooth_images(rng, per_class, 64)):
            Image.fromarray(image).save(folder / f"{wnid}_{k}.JPEG", quality=90)
    lines = []
    for k, image in enumerate(smooth_images(rng, scaled(REAL["tinyimagenet"][1], fraction), 64)):
        Image.fromarray(image).save(root / "val" / "images" / f"val_{k}.JPEG", quality=90)
        lines.append(f"val_{k}.JPEG\t{wnids[k % 200]}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")


def write_speechcommands(raw: Path, fraction: float, rng) -> None:
    import soundfile

    root = raw / "speech_commands_v0.02"
    words = [f"word{i:02d}" for i in range(35)]
    train, test, validation = (scaled(n, fraction) for n in REAL["speechcommands"])
    lists = {"testing_list.txt": [], "validation_list.txt": []}
    clip = (rng.standard_normal(16000) * 3000).astype(np.int16)
    for k in range(train + test + validation):
        word = words[k % 35]
        relative = f"{word}/speaker{k:06d}_nohash_0.wav"
        (root / word).mkdir(parents=True, exist_ok=True)
        # one noise clip, rolled: distinct files without drawing 1.6 billion samples
        soundfile.write(root / relative, np.roll(clip, k), 16000, "PCM_16")
        if k < test:
            lists["testing_list.txt"].append(relative)
        elif k < test + validation:
            lists["validation_list.txt"].append(relative)
    for name, lines in lists.items():
        (root / name).write_text("\n".join(lines) + "\n")
    (root / "_background_noise_").mkdir()


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
