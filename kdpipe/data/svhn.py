"""SVHN, cropped digits (Netzer et al. 2011): 32x32 RGB house-number digits, 10 classes.

Reads the official MATLAB files ``train_32x32.mat`` (73,257 images) and ``test_32x32.mat``
(26,032): X uint8 [32, 32, 3, N] (height, width, channel, image) and y [N, 1] with digits 1..9
as themselves and digit 0 as label 10; we map 10 to 0, so label d is digit d. The "extra" set is
not used. No options. A file shorter than its variables' headers say is refused by name.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from kdpipe.data import DataError, Facts, check_options
from kdpipe.data.download import fetch
from kdpipe.data.imagefolder import image_dataset

DEFAULTS = {}
TRAIN, TEST = 73_257, 26_032
URL = "http://ufldl.stanford.edu/housenumbers/"
FILES = {"train_32x32.mat": "md5:e26dedcc434d2e4c54c9b2d4a06d8373",
         "test_32x32.mat": "md5:eb5a983be6a315427106f1b164d9cef3"}


def acquire(options: dict, raw_dir: Path) -> None:
    check_options("svhn", DEFAULTS, options)
    for name, checksum in FILES.items():
        if not (raw_dir / name).is_file():
            fetch(URL + name, raw_dir / name, checksum)


def facts(options: dict) -> Facts:
    """73,257 train and 26,032 test images, [3, 32, 32] uint8, 10 classes."""
    check_options("svhn", DEFAULTS, options)
    return Facts(TRAIN, TEST, (3, 32, 32), "uint8", 10)


def prepare(options: dict, raw_dir: Path) -> dict:
    check_options("svhn", DEFAULTS, options)
    x_train, y_train = read_split(raw_dir / "train_32x32.mat")
    x_test, y_test = read_split(raw_dir / "test_32x32.mat")
    return image_dataset(x_train, y_train, x_test, y_test, [str(d) for d in range(10)])


def read_split(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, 3, 32, 32] and int64 labels [N] (digit d is label d) of one .mat file."""
    import scipy.io

    if not path.is_file():
        raise DataError(f"{path}: missing; acquire the data set again or download it from "
                        f"{URL}{path.name}")
    check_mat_size(path)
    try:
        mat = scipy.io.loadmat(path, variable_names=("X", "y"))
    except Exception as error:  # a damaged file can fail in scipy with almost any exception type
        raise DataError(f"{path}: unreadable .mat file ({type(error).__name__}: {error}); "
                        "delete it and acquire the data set again") from None
    for key in ("X", "y"):
        if key not in mat:
            raise DataError(f"{path}: no variable {key!r}")
    x, y = mat["X"], mat["y"]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise DataError(f"{path}: X is {x.dtype} {list(x.shape)}, expected uint8 [32, 32, 3, N]")
    if y.size != x.shape[3]:
        raise DataError(f"{path}: {y.size} labels for {x.shape[3]} images")
    y = y.reshape(-1).astype(np.int64)
    if y.size and not 1 <= y.min() <= y.max() <= 10:
        raise DataError(f"{path}: labels outside 1..10")
    y[y == 10] = 0
    # copied here, so that the .mat array is freed before the next split is read
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)), y


def check_mat_size(path: Path) -> None:
    """Refuse a MATLAB 5 file shorter than its variables' tags say: each top-level element
    starts with its type and byte count (uint32 each, in the byte order the header names).
    Other versions are left to scipy."""
    import struct

    present = path.stat().st_size
    with open(path, "rb") as f:
        header = f.read(128)
        order = {b"IM": "<", b"MI": ">"}.get(header[126:128])
        if len(header) < 128 or not header.startswith(b"MATLAB 5.0 MAT-file") or order is None:
            return
        offset = 128
        while offset < present:
            f.seek(offset)
            tag = f.read(8)
            length = struct.unpack(order + "I", tag[4:])[0] if len(tag) == 8 else 0
            expected = offset + 8 + length
            if expected > present:
                raise DataError(
                    f"{path}: cut short: its variables' headers say the file holds at least "
                    f"{expected:,} bytes, but it has {present:,}; the download was interrupted: "
                    f"delete it and acquire the data set again (or download {URL}{path.name})")
            offset = expected
