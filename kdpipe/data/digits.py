"""scikit-learn's handwritten digits (1,797 8x8 images, 10 classes): embedded, no download.

Options (ours; the paper does not use this set):
- ``test_fraction`` (0.7): a large test split so that the teacher leaves enough errors for
  incorrect agreement to be measured (about 60 on 1,258 test images);
- ``split_seed`` (0): the seed of the fixed stratified split.
Pixels are scaled from 0..16 to [0, 1]; images are [1, 8, 8].
"""
from pathlib import Path

DEFAULTS = {"test_fraction": 0.7, "split_seed": 0}
SAMPLES = 1797


def acquire(options: dict, raw_dir: Path) -> None:
    """Nothing to fetch: scikit-learn ships the data."""


def facts(options: dict):
    """The split's sizes (scikit-learn's), [1, 8, 8] float32 images, 10 classes."""
    from kdpipe.data import Facts, split_sizes

    train, test = split_sizes(SAMPLES, _checked(options)["test_fraction"])
    return Facts(train, test, (1, 8, 8), "float32", 10)


def prepare(options: dict, raw_dir: Path) -> dict:
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    options = _checked(options)
    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[:, None]
    y = digits.target.astype("int64")
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=options["test_fraction"], stratify=y, random_state=options["split_seed"])
    return {
        "x_train": torch.from_numpy(x_train), "y_train": torch.from_numpy(y_train),
        "x_test": torch.from_numpy(x_test), "y_test": torch.from_numpy(y_test),
        "classes": [str(c) for c in digits.target_names],
        "meta": {"kind": "image"},
    }


def _checked(options: dict) -> dict:
    from kdpipe.data import DataError, check_options

    options = check_options("digits", DEFAULTS, options)
    fraction = options["test_fraction"]
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise DataError(f"dataset 'digits': option 'test_fraction' is {fraction!r}; expected a "
                        "number in (0, 1)")
    if isinstance(options["split_seed"], bool) or not isinstance(options["split_seed"], int) \
            or options["split_seed"] < 0:
        raise DataError(f"dataset 'digits': option 'split_seed' is {options['split_seed']!r}; "
                        "expected an integer >= 0")
    return options
