"""A researcher's own recordings, family ``audiofolder``: ``<root>/<class>/*.wav``.

Every subfolder of ``root`` (except hidden ones) is a class, in sorted order, and must hold
WAV files (any rate, bit depth and channel count that kdpipe.data.audio reads). There is no
official split: a stratified random one holds out ``test_fraction`` of the clips, every class
keeping its share (scikit-learn's train_test_split with stratify, random_state=split_seed), so
that the same seed always gives the same split (kdpipe.data.folders reads the folders and draws
the split, as for imagefolder).

Options (``DEFAULTS``), besides the audio feature options of kdpipe.data.audio:
- ``root``: None = raw_dir itself; or the folder of class folders (absolute, or relative to the
  directory the pipeline runs in).
- ``test_fraction``: 0.2, the share of every class held out for testing, in (0, 1).
- ``split_seed``: 0.
- ``seconds``: 1.0, the clip length; shorter clips are zero-padded at their end.
"""
from __future__ import annotations

from pathlib import Path

from kdpipe.data import DataError, Facts, check_options, split_sizes
from kdpipe.data.audio import FEATURE_DEFAULTS, check_features, feature_shape, prepared
from kdpipe.data.folders import class_folders, root_folder, stratified_split

FAMILY = "audiofolder"
DEFAULTS = {**FEATURE_DEFAULTS, "root": None, "test_fraction": 0.2, "split_seed": 0,
            "seconds": 1.0}
SUFFIXES = (".wav",)


def acquire(options: dict, raw_dir: Path) -> None:
    """Check that the recordings are in place (they are the researcher's: nothing to download)."""
    class_folders(root_folder(_checked(options), raw_dir), SUFFIXES)


def facts(options: dict) -> None:
    """None: the sizes and classes are the folders', which ``scan`` counts."""
    _checked(options)


def scan(options: dict, raw_dir: Path) -> Facts | None:
    """The files counted, split as ``prepare`` splits them, clips of ``feature_shape``; None
    where the folder of class folders is absent."""
    options = _checked(options)
    root = root_folder(options, raw_dir)
    if not root.is_dir():
        return None
    paths, _, classes = class_folders(root, SUFFIXES)
    train, test = split_sizes(len(paths), options["test_fraction"])
    return Facts(train, test, feature_shape(options), "float32", len(classes))


def prepare(options: dict, raw_dir: Path) -> dict:
    options = _checked(options)
    paths, labels, classes = class_folders(root_folder(options, raw_dir), SUFFIXES)
    train_paths, y_train, test_paths, y_test = stratified_split(
        paths, labels, options["test_fraction"], options["split_seed"], FAMILY)
    for label, name in enumerate(classes):
        if label not in y_train:
            raise DataError(f"{FAMILY}: class {name} has {labels.count(label)} file(s), all of "
                            f"which test_fraction {options['test_fraction']} would hold out")
    return prepared(train_paths, y_train, test_paths, y_test, classes, options, FAMILY)


def _checked(options: dict) -> dict:
    options = check_features(FAMILY, check_options(FAMILY, DEFAULTS, options))
    if not 0 < options["test_fraction"] < 1:
        raise DataError(f"dataset {FAMILY!r}: option 'test_fraction' is "
                        f"{options['test_fraction']!r}; expected a number in (0, 1)")
    return options
