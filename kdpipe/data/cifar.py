"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009): 32x32 RGB images, official train/test split.

The two families share this reader of the official "python version" archives:
- ``cifar10``: ``cifar-10-batches-py/data_batch_1..5`` (train, 50,000), ``test_batch``
  (10,000), ``batches.meta`` (class names); no options.
- ``cifar100``: ``cifar-100-python/train`` (50,000), ``test`` (10,000), ``meta``; option
  ``label`` ("fine"): "fine" for the 100 classes, "coarse" for the 20 superclasses.
Every file is a pickle of a dict with bytes keys: b"data" uint8 [N, 3072] (the red, green and
blue 32x32 planes, each row-major) and the labels as a list of ints.
"""
from __future__ import annotations

import pickle
from functools import partial
from pathlib import Path

import numpy as np

from kdpipe.data import DataError, Facts, Family, check_options
from kdpipe.data.download import extract, fetch
from kdpipe.data.imagefolder import image_dataset

OFFICIAL = {  # per family: the archive's URL, its published md5, what it extracts
    10: {"url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
         "checksum": "md5:c58f30108f718f92721af3b95e74349a", "folder": "cifar-10-batches-py",
         "train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"],
         "meta": "batches.meta"},
    100: {"url": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
          "checksum": "md5:eb9058c3a382ffc7106e4002c42a8d85", "folder": "cifar-100-python",
          "train": ["train"], "test": ["test"], "meta": "meta"},
}
FAMILY_DEFAULTS = {10: {}, 100: {"label": "fine"}}
TRAIN, TEST = 50_000, 10_000


def acquire(classes: int, options: dict, raw_dir: Path) -> None:
    """Download and extract the official archive of CIFAR-``classes`` unless it is in place."""
    _checked(classes, options)
    official = OFFICIAL[classes]
    names = official["train"] + official["test"] + [official["meta"]]
    if all((raw_dir / official["folder"] / name).is_file() for name in names):
        return
    url = official["url"]
    archive = fetch(url, raw_dir / url.rsplit("/", 1)[1], official["checksum"])
    extract(archive, raw_dir)


def facts(classes: int, options: dict) -> Facts:
    """50,000 train and 10,000 test images, [3, 32, 32] uint8; 10 classes, or CIFAR-100's 100
    fine or 20 coarse ones."""
    label = _checked(classes, options).get("label")
    return Facts(TRAIN, TEST, (3, 32, 32), "uint8", 20 if label == "coarse" else classes)


def prepare(classes: int, options: dict, raw_dir: Path) -> dict:
    options = _checked(classes, options)
    official = OFFICIAL[classes]
    folder = raw_dir / official["folder"]
    # CIFAR-10 files hold b"labels"; CIFAR-100 files b"fine_labels" and b"coarse_labels".
    prefix = "" if classes == 10 else options["label"] + "_"
    meta_path = folder / official["meta"]
    names = [name.decode() for name in
             entry(read_batch(meta_path), f"{prefix}label_names", meta_path)]
    x_train, y_train = _read_split(folder, official["train"], prefix, len(names))
    x_test, y_test = _read_split(folder, official["test"], prefix, len(names))
    return image_dataset(x_train, y_train, x_test, y_test, names)


def _checked(classes: int, options: dict) -> dict:
    options = check_options(f"cifar{classes}", FAMILY_DEFAULTS[classes], options)
    if classes == 100 and options["label"] not in ("fine", "coarse"):
        raise DataError(f"dataset 'cifar100': label must be 'fine' or 'coarse', "
                        f"got {options['label']!r}")
    return options


def _read_split(folder: Path, names: list[str], prefix: str, num_classes: int):
    """Images uint8 [N, 3, 32, 32] and int64 labels [N] of the batch files ``names``, copied
    into one array batch by batch (never the split twice)."""
    xs, ys = [], []
    for name in names:
        path = folder / name
        batch = read_batch(path)
        data = np.asarray(entry(batch, "data", path))
        labels = np.asarray(entry(batch, f"{prefix}labels", path), dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DataError(f"{path}: data is {data.dtype} {list(data.shape)}, "
                            "expected uint8 [N, 3072]")
        if labels.shape != (len(data),):
            raise DataError(f"{path}: {labels.size} labels for {len(data)} images")
        if labels.size and not 0 <= labels.min() <= labels.max() < num_classes:
            raise DataError(f"{path}: labels outside 0..{num_classes - 1}")
        xs.append(data)
        ys.append(labels)
    x = np.empty((sum(map(len, xs)), 3, 32, 32), dtype=np.uint8)
    start = 0
    for i, data in enumerate(xs):
        x[start:start + len(data)] = data.reshape(-1, 3, 32, 32)
        start += len(data)
        xs[i] = None  # free each batch once copied
    return x, np.concatenate(ys)


def read_batch(path: Path) -> dict:
    """One official pickle file as a dict with bytes keys; DataError when missing or corrupt."""
    if not path.is_file():
        raise DataError(f"{path}: missing; acquire the data set again or put the official "
                        "archive's files there")
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")  # the files were written by Python 2
    except Exception as error:  # a damaged pickle can fail with almost any exception type
        # A pickle ends with its STOP opcode, so a file cut short never loads: it fails here.
        raise DataError(f"{path}: corrupt pickle, or cut short ({path.stat().st_size:,} bytes; "
                        f"{type(error).__name__}: {error}); delete {path.parent} and acquire the "
                        "data set again, which re-extracts the archive (or re-downloads it)"
                        ) from None
    if not isinstance(batch, dict):
        raise DataError(f"{path}: holds a {type(batch).__name__}, expected a dict")
    return batch


def entry(batch: dict, key: str, path: Path):
    if key.encode() not in batch:
        raise DataError(f"{path}: no {key!r} entry")
    return batch[key.encode()]


cifar10 = Family("cifar10", FAMILY_DEFAULTS[10], partial(acquire, 10), partial(prepare, 10),
                 partial(facts, 10))
cifar100 = Family("cifar100", FAMILY_DEFAULTS[100], partial(acquire, 100), partial(prepare, 100),
                  partial(facts, 100))
