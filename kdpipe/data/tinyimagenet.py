"""TinyImageNet (the CS231n release): 200 ImageNet classes at 64x64 RGB.

Reads the official folder ``tiny-imagenet-200/``:
- ``wnids.txt``: one WordNet id per line; its order is the label order, and the ids are the
  class names (unique, unlike the glosses in ``words.txt``);
- ``train/<wnid>/images/*.JPEG``: 500 images per class, our train split (100,000);
- ``val/images/*.JPEG`` labelled by ``val/val_annotations.txt`` (tab separated: file, wnid,
  bounding box): 50 per class, our test split (10,000), in the annotation file's order.
The official ``test/`` images have no labels and are not used. Some JPEGs are greyscale; every
image is converted to RGB. No options.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from kdpipe.data import DataError, Facts, check_options
from kdpipe.data.download import extract, fetch
from kdpipe.data.folders import list_files
from kdpipe.data.imagefolder import image_dataset, read_images

DEFAULTS = {}
URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
CHECKSUM = "md5:90528d7ca1a48142e341f4ef8d21d0de"
FOLDER = "tiny-imagenet-200"
CLASSES, TRAIN_PER_CLASS, TEST_PER_CLASS = 200, 500, 50


def acquire(options: dict, raw_dir: Path) -> None:
    check_options("tinyimagenet", DEFAULTS, options)
    root = raw_dir / FOLDER
    if (root / "wnids.txt").is_file() and (root / "val" / "val_annotations.txt").is_file():
        return
    extract(fetch(URL, raw_dir / "tiny-imagenet-200.zip", CHECKSUM), raw_dir)


def facts(options: dict) -> Facts:
    """100,000 train and 10,000 test images, [3, 64, 64] uint8, 200 classes."""
    check_options("tinyimagenet", DEFAULTS, options)
    return Facts(CLASSES * TRAIN_PER_CLASS, CLASSES * TEST_PER_CLASS, (3, 64, 64), "uint8",
                 CLASSES)


def prepare(options: dict, raw_dir: Path) -> dict:
    check_options("tinyimagenet", DEFAULTS, options)
    root = raw_dir / FOLDER
    wnids = read_wnids(root / "wnids.txt")
    paths_train, y_train = [], []
    for label, wnid in enumerate(wnids):
        folder = root / "train" / wnid / "images"
        files = list_files(folder, (".jpeg",))
        if not files:
            raise DataError(f"{folder}: no .JPEG images for class {wnid} of wnids.txt")
        paths_train += files
        y_train += [label] * len(files)
    paths_test, y_test = read_val_annotations(root / "val", wnids)
    x_train = read_images(paths_train, label="tinyimagenet train")
    x_test = read_images(paths_test, label="tinyimagenet test")
    return image_dataset(x_train, np.asarray(y_train), x_test, np.asarray(y_test), wnids)


def read_wnids(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path}: missing; acquire the data set again or extract {URL} there")
    wnids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not wnids or len(set(wnids)) != len(wnids):
        raise DataError(f"{path}: expected one distinct WordNet id per line")
    return wnids


def read_val_annotations(val_dir: Path, wnids: list[str]) -> tuple[list[Path], list[int]]:
    """Paths and labels of the validation images, in ``val_annotations.txt`` order."""
    path = val_dir / "val_annotations.txt"
    if not path.is_file():
        raise DataError(f"{path}: missing; it labels the val images (our test split): acquire "
                        "the data set again")
    label = {wnid: i for i, wnid in enumerate(wnids)}
    paths, labels = [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in label:
            raise DataError(f"{path} line {number}: expected 'file<TAB>wnid<TAB>box' with a wnid "
                            f"of wnids.txt, got {line!r}")
        paths.append(val_dir / "images" / fields[0])
        labels.append(label[fields[1]])
    if not paths:
        raise DataError(f"{path}: no annotations")
    return paths, labels
