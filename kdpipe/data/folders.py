"""Files laid out in folders, read one way by every family.

- ``list_files``: the files of one folder with given suffixes, sorted; the order of samples.
- ``class_folders``: a researcher's own data, ``<root>/<class>/*<suffix>`` (imagefolder,
  audiofolder): class names are the folder names, sorted, and label i is the i-th name; folders
  whose names start with a dot are ignored.
- ``stratified_split``: the test split of such data, which has no official one: scikit-learn's
  ``train_test_split`` with ``stratify`` (every class keeps its share, within one sample) and
  ``random_state=seed``, so that a seed always gives the same split.
"""
from __future__ import annotations

from pathlib import Path

from kdpipe.data import DataError


def root_folder(options: dict, raw_dir: Path) -> Path:
    """The folder of class folders: option ``root``, or the raw folder itself when it is None."""
    return Path(raw_dir if options["root"] is None else options["root"])


def list_files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """The files of ``folder`` whose suffix is one of ``suffixes`` (lower case; the files' may be
    any case), sorted; none when there is no such folder."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)


def class_folders(root: Path, suffixes: tuple[str, ...]) -> tuple[list[Path], list[int], list[str]]:
    """(file paths, labels, class names) of ``root/<class>/*``, sorted by class then file."""
    layout = f"{root}/<class>/*{'|'.join(suffixes)}"
    if not root.is_dir():
        raise DataError(f"{root}: folder is missing; put the files there as {layout}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class folders; put the files there as {layout}")
    files = [list_files(root / name, suffixes) for name in classes]
    empty = [name for name, paths in zip(classes, files) if not paths]
    if empty:
        raise DataError(f"{root}: class folder(s) {', '.join(empty)} hold no "
                        f"{', '.join(suffixes)} files")
    paths = [path for paths in files for path in paths]
    labels = [label for label, paths in enumerate(files) for _ in paths]
    return paths, labels, classes


def stratified_split(paths: list, labels, test_fraction: float, seed: int, family: str):
    """(train paths, train labels, test paths, test labels), labels as int64 arrays, each split
    in file order: a stratified random split holding out ``test_fraction`` of the samples."""
    import numpy as np
    from sklearn.model_selection import train_test_split

    y = np.asarray(labels, dtype=np.int64)
    try:
        train, test = train_test_split(np.arange(len(y)), test_size=test_fraction, stratify=y,
                                       random_state=seed)
    except ValueError as error:  # too few samples of a class, or for the fraction
        raise DataError(f"dataset {family!r}: cannot hold out test_fraction {test_fraction} "
                        f"of every class of {len(y)} files: {error}") from None
    train, test = np.sort(train), np.sort(test)
    return [paths[i] for i in train], y[train], [paths[i] for i in test], y[test]
