"""Character-level next-character prediction: families ``shakespeare`` and ``textfile``.

- ``shakespeare``: Tiny Shakespeare (Karpathy's char-rnn ``input.txt``, 1,115,394 characters,
  65 symbols), read from ``raw_dir/input.txt``, where its ``acquire`` downloads it.
- ``textfile``: any UTF-8 text file, named by its required option ``path`` (absolute, or
  relative to the directory the pipeline runs in).

Split: the text is cut once, contiguously: the first ``1 - test_fraction`` of its characters
are the train text, the rest the test text (default: the last 10 %). The vocabulary
(``classes``) is the sorted set of characters of the train text; a test character outside it
is a DataError (a model has no output for it).

Samples: windows of ``context + 1`` consecutive characters; x = the first ``context`` of them,
y = the last ``context`` (x shifted by one), both int64 [N, context] of vocabulary indices, so
every position of a window is a prediction. Train windows start every ``stride`` characters;
test windows never overlap (stride = context), so that every test character is predicted, and
counted in the metrics, exactly once (except a last partial window, which is dropped).

Options of both families (``WINDOW_DEFAULTS``):
- ``context``: 256 characters per window.
- ``stride``: None = ``context`` (non-overlapping train windows); smaller values overlap them.
- ``test_fraction``: 0.1, the share of the text, taken from its end, for testing; in (0, 1).
"""
from __future__ import annotations

from pathlib import Path

from kdpipe.data import DataError, Facts, Family, check_options

WINDOW_DEFAULTS = {"context": 256, "stride": None, "test_fraction": 0.1}
TEXTFILE_DEFAULTS = {"path": None, **WINDOW_DEFAULTS}  # path: required

SHAKESPEARE_URL = ("https://raw.githubusercontent.com/karpathy/char-rnn/master/data/"
                   "tinyshakespeare/input.txt")
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
# the official file's characters, and its 65 symbols, every one of which its first 70 % holds
SHAKESPEARE_CHARACTERS, SHAKESPEARE_SYMBOLS, SHAKESPEARE_ALL_SYMBOLS_UP_TO = 1_115_394, 65, 0.3


def acquire_shakespeare(options: dict, raw_dir: Path) -> None:
    """Download Tiny Shakespeare to ``raw_dir/input.txt`` unless a verified copy is there."""
    from kdpipe.data.download import fetch

    check_windows("shakespeare", check_options("shakespeare", WINDOW_DEFAULTS, options))
    fetch(SHAKESPEARE_URL, Path(raw_dir) / "input.txt", f"sha256:{SHAKESPEARE_SHA256}")


def prepare_shakespeare(options: dict, raw_dir: Path) -> dict:
    options = check_windows("shakespeare", check_options("shakespeare", WINDOW_DEFAULTS, options))
    return char_windows(Path(raw_dir) / "input.txt", options)


def facts_shakespeare(options: dict) -> Facts | None:
    """The windows of the official file's 1,115,394 characters, 65 classes; None with a
    ``test_fraction`` above 0.3, whose train text may lack a rare symbol."""
    options = check_windows("shakespeare", check_options("shakespeare", WINDOW_DEFAULTS, options))
    if options["test_fraction"] > SHAKESPEARE_ALL_SYMBOLS_UP_TO:
        return None
    return window_facts(SHAKESPEARE_CHARACTERS, SHAKESPEARE_SYMBOLS, options, "input.txt")


def acquire_textfile(options: dict, raw_dir: Path) -> None:
    """Nothing to download: check that the text file named by option ``path`` is there."""
    options = check_windows("textfile", check_options("textfile", TEXTFILE_DEFAULTS, options))
    path = text_path(options)
    if not path.is_file():
        raise DataError(f"{path}: text file named by option 'path' is missing")


def prepare_textfile(options: dict, raw_dir: Path) -> dict:
    options = check_windows("textfile", check_options("textfile", TEXTFILE_DEFAULTS, options))
    return char_windows(text_path(options), options)


def facts_textfile(options: dict) -> None:
    """None: the windows and classes are the file's, which ``scan_textfile`` reads."""
    check_windows("textfile", check_options("textfile", TEXTFILE_DEFAULTS, options))


def scan_textfile(options: dict, raw_dir: Path) -> Facts | None:
    """The windows and vocabulary of the file (read, not prepared); None where it is absent."""
    options = check_windows("textfile", check_options("textfile", TEXTFILE_DEFAULTS, options))
    path = text_path(options)
    if not path.is_file():
        return None
    text = read_text(path)
    vocabulary = len(set(text[:train_characters(len(text), options, path)]))
    return window_facts(len(text), vocabulary, options, path)


def train_characters(length: int, options: dict, source) -> int:
    """The characters of the train text (the rest are the test text's); DataError where either
    holds no window of context + 1 characters."""
    split = length - round(length * options["test_fraction"])
    for name, size in (("train", split), ("test", length - split)):
        if size < options["context"] + 1:
            raise DataError(f"{source}: the {name} text has {size} characters, fewer than "
                            f"context + 1 = {options['context'] + 1}")
    return split


def window_count(characters: int, context: int, stride: int) -> int:
    """The windows of context + 1 characters that start every ``stride`` characters."""
    return (characters - context - 1) // stride + 1


def window_facts(length: int, vocabulary: int, options: dict, source) -> Facts:
    """The ``Facts`` of a text of ``length`` characters and a train vocabulary of that size."""
    split, context = train_characters(length, options, source), options["context"]
    return Facts(window_count(split, context, options["stride"]),
                 window_count(length - split, context, context), (context,), "int64", vocabulary,
                 positions=context)


def check_windows(family: str, options: dict) -> dict:
    """``options`` (completed by kdpipe.data.check_options) with ``stride`` resolved and the
    window options checked; a bad value -> DataError."""
    if options["stride"] is None:
        options["stride"] = options["context"]
    for key in ("context", "stride"):
        if not (isinstance(options[key], int) and options[key] >= 1):
            raise DataError(f"dataset {family!r}: option {key!r} is {options[key]!r}; "
                            "expected an integer >= 1")
    if not 0 < options["test_fraction"] < 1:
        raise DataError(f"dataset {family!r}: option 'test_fraction' is "
                        f"{options['test_fraction']!r}; expected a number in (0, 1)")
    return options


def text_path(options: dict) -> Path:
    """The file named by textfile's required option ``path``."""
    if options["path"] is None:
        raise DataError("dataset 'textfile': option 'path' is required: the UTF-8 text file "
                        "to read")
    return Path(options["path"])


def read_text(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"{path}: text file is missing")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text (byte {error.start}: {error.reason})") from error


def windows(ids, context: int, stride: int):
    """(x, y) int64 [N, context]: windows of ``ids`` every ``stride``; y = x shifted by one."""
    import torch

    spans = torch.from_numpy(ids).unfold(0, context + 1, stride)
    return spans[:, :-1].contiguous(), spans[:, 1:].contiguous()


def char_windows(path: Path, options: dict) -> dict:
    """The prepared dict of the text file ``path`` (see the module docstring)."""
    import numpy as np

    text = read_text(path)
    context, stride = options["context"], options["stride"]
    split = train_characters(len(text), options, path)
    codes = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")  # one code point a character
    vocabulary = np.unique(codes[:split])
    ids = np.searchsorted(vocabulary, codes).clip(max=len(vocabulary) - 1).astype(np.int64)
    unseen = sorted(set(codes[split:][vocabulary[ids[split:]] != codes[split:]].tolist()))
    if unseen:
        raise DataError(f"{path}: the test text has characters the train text lacks: "
                        f"{''.join(map(chr, unseen))!r}; change 'test_fraction'")
    x_train, y_train = windows(ids[:split], context, stride)
    x_test, y_test = windows(ids[split:], context, context)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test,
            "classes": [chr(code) for code in vocabulary.tolist()],
            "meta": {"kind": "sequence", "context": context, "stride": stride}}


shakespeare = Family("shakespeare", WINDOW_DEFAULTS, acquire_shakespeare, prepare_shakespeare,
                     facts_shakespeare)
textfile = Family("textfile", TEXTFILE_DEFAULTS, acquire_textfile, prepare_textfile,
                  facts_textfile, scan_textfile)
