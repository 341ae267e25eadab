"""Speech Commands v2 (Warden, 2018), family ``speechcommands``: 1 s spoken words at 16 kHz.

The official archive, extracted into ``raw_dir/speech_commands_v0.02/``::

    <word>/<speaker>_nohash_<n>.wav   35 word folders; 16 kHz mono 16-bit clips of at most 1 s
    validation_list.txt               paths relative to the folder, ``<word>/<file>.wav`` a line
    testing_list.txt
    _background_noise_/*.wav          long noise recordings: not a class, never a sample

Split (the official one): test = the files in testing_list.txt; train = every other file of a
word folder except those in validation_list.txt (the validation files are not used).
Labels: the word folders in sorted order.

Options (``DEFAULTS``), besides the audio feature options of kdpipe.data.audio:
- ``words``: None = all word folders; or a list of words to keep (still labelled in sorted
  order), e.g. the ten commands ``[yes, no, up, down, left, right, on, off, stop, go]``.
- ``seconds``: 1.0, the clip length; shorter clips are zero-padded at their end.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from kdpipe.data import DataError, Facts, check_options
from kdpipe.data.audio import FEATURE_DEFAULTS, check_features, feature_shape, prepared
from kdpipe.data.folders import list_files

FAMILY = "speechcommands"
DEFAULTS = {**FEATURE_DEFAULTS, "words": None, "seconds": 1.0}

URL = "http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz"
# The archive's sha256 as published in torchaudio (datasets/speechcommands.py, _CHECKSUMS).
SHA256 = "af14739ee7dc311471de98f5f9d2c9191b18aedfe957f4a6ff791c709868ff58"
FOLDER = "speech_commands_v0.02"
LIST_FILES = ("validation_list.txt", "testing_list.txt")
# the official split of all 35 words: 84,843 train clips (those of neither list; the 9,981 of
# validation_list.txt are not used) and the 11,005 of testing_list.txt
TRAIN, TEST, WORDS = 84_843, 11_005, 35


def acquire(options: dict, raw_dir: Path) -> None:
    """Download and extract the archive into ``raw_dir/speech_commands_v0.02``, unless done."""
    from kdpipe.data.download import extract, fetch

    check_features(FAMILY, check_options(FAMILY, DEFAULTS, options))
    raw_dir = Path(raw_dir)
    root = raw_dir / FOLDER
    if all((root / name).is_file() for name in LIST_FILES):
        return
    archive = fetch(URL, raw_dir / f"{FOLDER}.tar.gz", f"sha256:{SHA256}")
    # Extract beside the final folder and rename it into place, so that a killed extraction
    # never leaves a folder that looks complete.
    partial = raw_dir / f".{FOLDER}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    extract(archive, partial)
    missing = [name for name in LIST_FILES if not (partial / name).is_file()]
    if missing:
        raise DataError(f"{archive}: the archive holds no {', '.join(missing)}; "
                        "it is not the Speech Commands v0.02 archive")
    shutil.rmtree(root, ignore_errors=True)
    partial.rename(root)
    archive.unlink()  # 2.4 GB, no longer needed: the list files mark a complete extraction


def facts(options: dict) -> Facts | None:
    """The official split's sizes and 35 classes, clips of ``feature_shape``; None with a subset
    of ``words``, whose sizes the word folders tell."""
    options = check_features(FAMILY, check_options(FAMILY, DEFAULTS, options))
    if options["words"] is not None:
        return None
    return Facts(TRAIN, TEST, feature_shape(options), "float32", WORDS)


def read_list(path: Path) -> set:
    """The relative paths (``<word>/<file>.wav``) listed in a split file."""
    if not path.is_file():
        raise DataError(f"{path}: split list is missing; acquire {FAMILY} again")
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def prepare(options: dict, raw_dir: Path) -> dict:
    options = check_features(FAMILY, check_options(FAMILY, DEFAULTS, options))
    root = Path(raw_dir) / FOLDER
    validation, testing = (read_list(root / name) for name in LIST_FILES)
    words = sorted(path.name for path in root.iterdir()
                   if path.is_dir() and not path.name.startswith("_"))
    if options["words"] is not None:
        if isinstance(options["words"], str):
            raise DataError(f"{FAMILY}: option 'words' must be a list of words, "
                            f"not the string {options['words']!r}")
        unknown = sorted(set(options["words"]) - set(words))
        if unknown:
            raise DataError(f"{FAMILY}: option 'words' names {', '.join(unknown)}, "
                            f"which are not word folders of {root}")
        words = sorted(set(options["words"]))
    for name, listed in zip(LIST_FILES, (validation, testing)):
        missing = sorted(path for path in listed
                         if path.split("/")[0] in words and not (root / path).is_file())
        if missing:
            raise DataError(f"{root / name} lists {len(missing)} missing file(s), "
                            f"e.g. {root / missing[0]}; acquire {FAMILY} again")

    train_paths, y_train, test_paths, y_test = [], [], [], []
    for label, word in enumerate(words):
        for path in list_files(root / word, (".wav",)):
            relative = f"{word}/{path.name}"
            if relative in testing:
                test_paths.append(path)
                y_test.append(label)
            elif relative not in validation:
                train_paths.append(path)
                y_train.append(label)
    return prepared(train_paths, y_train, test_paths, y_test, words, options, FAMILY)
