"""UrbanSound8K (Salamon, Jacoby and Bello, 2014), family ``urbansound8k``: 8,732 urban sound
clips of at most 4 s in 10 classes, in 10 folds.

The official archive UrbanSound8K.tar.gz, extracted into ``raw_dir``::

    UrbanSound8K/metadata/UrbanSound8K.csv        one row per clip: slice_file_name, fsID, start,
                                                  end, salience, fold, classID, class
    UrbanSound8K/audio/fold1 .. fold10/<slice_file_name>
                                                  WAVs of varying rate, bit depth (8/16/24-bit
                                                  PCM, float) and channel count

Split: test = the clips of fold ``test_fold``; train = the clips of every other fold. (The
authors evaluate by 10-fold cross-validation; one fixed test fold is our choice.)
Labels: ``classID``; ``classes[classID]`` is the metadata's class name.

Options (``DEFAULTS``), besides the audio feature options of kdpipe.data.audio:
- ``test_fold``: 10, the fold (1-10) held out for testing.
- ``seconds``: 4.0, the clip length; shorter clips are zero-padded at their end.
"""
from __future__ import annotations

import csv
from pathlib import Path

from kdpipe.data import DataError, Facts, check_options
from kdpipe.data.audio import FEATURE_DEFAULTS, check_features, feature_shape, prepared

FAMILY = "urbansound8k"
DEFAULTS = {**FEATURE_DEFAULTS, "test_fold": 10, "seconds": 4.0}

FOLDER = "UrbanSound8K"
METADATA = Path("metadata") / "UrbanSound8K.csv"
FOLDS = range(1, 11)
COLUMNS = ("slice_file_name", "fold", "classID", "class")  # the ones we use
# clips per fold in the official metadata (8,732 in all)
FOLD_SIZES = {1: 873, 2: 888, 3: 925, 4: 990, 5: 936, 6: 823, 7: 838, 8: 806, 9: 816, 10: 837}
CLASSES = 10


def acquire(options: dict, raw_dir: Path) -> None:
    """Check that the data set is in place; it has to be downloaded by hand (a request form)."""
    _checked(options)
    root = Path(raw_dir) / FOLDER
    missing = [str(path) for path in
               [root / METADATA] + [root / "audio" / f"fold{fold}" for fold in FOLDS]
               if not path.exists()]
    if missing:
        raise DataError(
            f"{FAMILY} needs a manual download: request UrbanSound8K.tar.gz at "
            "https://urbansounddataset.weebly.com/urbansound8k.html (also at "
            f"https://zenodo.org/record/1203745) and extract it in {raw_dir}, so that "
            f"{root / METADATA} and the folders {root / 'audio'}/fold1 .. fold10 exist; "
            f"missing now: {', '.join(missing)}")


def facts(options: dict) -> Facts:
    """Every fold but ``test_fold`` to train, that fold to test, 10 classes, clips of
    ``feature_shape``."""
    options = _checked(options)
    test = FOLD_SIZES[options["test_fold"]]
    return Facts(sum(FOLD_SIZES.values()) - test, test, feature_shape(options), "float32",
                 CLASSES)


def _checked(options: dict) -> dict:
    options = check_features(FAMILY, check_options(FAMILY, DEFAULTS, options))
    if options["test_fold"] not in FOLDS:
        raise DataError(f"dataset {FAMILY!r}: option 'test_fold' is {options['test_fold']!r}; "
                        "expected a fold 1-10")
    return options


def read_metadata(path: Path) -> list:
    """Metadata rows: dicts of ``slice_file_name``, ``fold`` (int), ``classID`` (int), ``class``."""
    if not path.is_file():
        raise DataError(f"{path}: metadata file is missing; see acquire of {FAMILY}")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        absent = [column for column in COLUMNS if column not in (reader.fieldnames or [])]
        if absent:
            raise DataError(f"{path}: no column(s) {', '.join(absent)}")
        rows = []
        for line, row in enumerate(reader, start=2):
            try:
                rows.append({"slice_file_name": row["slice_file_name"], "fold": int(row["fold"]),
                             "classID": int(row["classID"]), "class": row["class"]})
            except (TypeError, ValueError) as error:
                raise DataError(f"{path}, line {line}: bad fold or classID ({error})") from error
    if not rows:
        raise DataError(f"{path}: no clips listed")
    return rows


def class_names(rows: list, path: Path) -> list:
    """Class names indexed by classID; every ID from 0 up must name one class."""
    names = {}
    for row in rows:
        if names.setdefault(row["classID"], row["class"]) != row["class"]:
            raise DataError(f"{path}: classID {row['classID']} names both "
                            f"{names[row['classID']]!r} and {row['class']!r}")
    if sorted(names) != list(range(len(names))):
        raise DataError(f"{path}: classIDs {sorted(names)} are not 0..{len(names) - 1}")
    return [names[i] for i in range(len(names))]


def prepare(options: dict, raw_dir: Path) -> dict:
    options = _checked(options)
    root = Path(raw_dir) / FOLDER
    rows = read_metadata(root / METADATA)
    classes = class_names(rows, root / METADATA)

    train_paths, y_train, test_paths, y_test = [], [], [], []
    for row in rows:
        path = root / "audio" / f"fold{row['fold']}" / row["slice_file_name"]
        if row["fold"] == options["test_fold"]:
            test_paths.append(path)
            y_test.append(row["classID"])
        else:
            train_paths.append(path)
            y_train.append(row["classID"])
    return prepared(train_paths, y_train, test_paths, y_test, classes, options, FAMILY)
