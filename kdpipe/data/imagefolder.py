"""A researcher's own images: one folder per class, ``<root>/<class>/*.png|jpg|jpeg``.

Class names are the folder names, sorted; label i is the i-th name. Files with other suffixes and
folders whose names start with a dot are ignored (kdpipe.data.folders). Options:
- ``root`` (null): the folder of class folders; null means the raw folder of the data set itself;
- ``test_root`` (null): a second folder laid out like ``root`` that is the test split; its class
  folders must be among those of ``root``;
- ``test_fraction`` (0.2): without ``test_root``, the share of the images held out as test
  images (a stratified split: every class keeps its share, within one image);
- ``split_seed`` (0): the seed of that split;
- ``size`` (null): resize every image to ``size`` x ``size`` pixels, or to [height, width]
  (bilinear, antialiased); null keeps the files' size, which must then be the same for all;
- ``grey`` (false): false converts every image to RGB (3 channels), true to grey (1 channel).

This module also holds what the other image families share: decoding files (``read_images``),
the per-channel statistics (``channel_stats``) and the prepared dict (``image_dataset``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from kdpipe.data import DataError, Facts, check_options, split_sizes
from kdpipe.data.folders import class_folders, root_folder, stratified_split

DEFAULTS = {"root": None, "test_root": None, "test_fraction": 0.2, "split_seed": 0, "size": None,
            "grey": False}
SUFFIXES = (".png", ".jpg", ".jpeg")


def acquire(options: dict, raw_dir: Path) -> None:
    """Nothing to download: check that the folders are there and hold images."""
    options = _checked(options)
    class_folders(root_folder(options, raw_dir), SUFFIXES)
    if options["test_root"] is not None:
        class_folders(Path(options["test_root"]), SUFFIXES)


def facts(options: dict) -> None:
    """None: the sizes, classes and (without ``size``) the image size are the folders', which
    ``scan`` reads."""
    _checked(options)


def scan(options: dict, raw_dir: Path) -> Facts | None:
    """The files counted and split as ``prepare`` splits them; the image size from ``size``, else
    from the first file's header; None where a folder is absent."""
    from PIL import Image

    options = _checked(options)
    root = root_folder(options, raw_dir)
    test_root = options["test_root"]
    if not root.is_dir() or (test_root is not None and not Path(test_root).is_dir()):
        return None
    paths, _, classes = class_folders(root, SUFFIXES)
    if test_root is None:
        train, test = split_sizes(len(paths), options["test_fraction"])
    else:
        train, test = len(paths), len(class_folders(Path(test_root), SUFFIXES)[0])
    size = options["size"]
    if size is None:
        with Image.open(paths[0]) as image:  # reads the header only
            size = [image.height, image.width]
    return Facts(train, test, (1 if options["grey"] else 3, *size), "uint8", len(classes))


def prepare(options: dict, raw_dir: Path) -> dict:
    options = _checked(options)
    root = root_folder(options, raw_dir)
    paths, y, classes = class_folders(root, SUFFIXES)
    if options["test_root"] is None:
        paths_train, y_train, paths_test, y_test = stratified_split(
            paths, y, options["test_fraction"], options["split_seed"], "imagefolder")
    else:
        test_root = Path(options["test_root"])
        paths_train, y_train = paths, y
        paths_test, test_labels, test_classes = class_folders(test_root, SUFFIXES)
        unknown = sorted(set(test_classes) - set(classes))
        if unknown:
            raise DataError(f"{test_root}: class folder(s) {', '.join(unknown)} are not in "
                            f"root {root}")
        y_test = np.asarray([classes.index(test_classes[i]) for i in test_labels], np.int64)
    x_train = read_images(paths_train, options["size"], options["grey"], "imagefolder train")
    x_test = read_images(paths_test, options["size"], options["grey"], "imagefolder test")
    if x_test.shape[1:] != x_train.shape[1:]:
        raise DataError(f"{paths_test[0]}: {x_test.shape[2]}x{x_test.shape[3]} pixels, but "
                        f"{paths_train[0]} is {x_train.shape[2]}x{x_train.shape[3]}: set option "
                        "size to bring train and test images to one size")
    return image_dataset(x_train, y_train, x_test, y_test, classes)


def _checked(options: dict) -> dict:
    options = check_options("imagefolder", DEFAULTS, options)
    if options["test_root"] is None and not 0 < options["test_fraction"] < 1:
        raise DataError(f"dataset 'imagefolder': test_fraction must lie in (0, 1), "
                        f"got {options['test_fraction']!r}")
    size = options["size"]
    if size is not None:
        size = [size, size] if isinstance(size, int) else list(size)
        if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
            raise DataError(f"dataset 'imagefolder': size must be null, a positive int or "
                            f"[height, width], got {options['size']!r}")
        options["size"] = size
    if not isinstance(options["grey"], bool):
        raise DataError(f"dataset 'imagefolder': grey must be true or false, "
                        f"got {options['grey']!r}")
    return options


def read_image(path: Path, size=None, grey: bool = False) -> np.ndarray:
    """One image file as uint8 [C, H, W]: RGB (C = 3) or grey (C = 1), resized to ``size``
    ([height, width] in pixels) when given."""
    from PIL import Image

    try:
        # Decodes the whole file. A file cut short fails here ("image file is truncated"): PIL
        # fills the missing part with grey only when PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set,
        # which kdpipe never does (a PNG that lacks no more than its last checksum and end chunk
        # loads whole, its pixels complete).
        with Image.open(path) as image:
            image = image.convert("L" if grey else "RGB")
            if size is not None and image.size != (size[1], size[0]):
                image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            pixels = np.asarray(image, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"{path}: missing image file") from None
    except (OSError, ValueError, SyntaxError) as error:  # PIL's errors for unreadable files
        raise DataError(f"{path}: unreadable image, damaged or cut short "
                        f"({path.stat().st_size:,} bytes; {error}); re-download or re-extract "
                        "the data set, or copy the file again") from None
    return pixels[None] if grey else pixels.transpose(2, 0, 1)


def read_images(paths: list[Path], size=None, grey: bool = False,
                label: str = "decoding images") -> np.ndarray:
    """Image files as one uint8 array [N, C, H, W], decoded into place (never a second copy);
    without ``size`` all must share a size. Progress goes to stderr under ``label``."""
    from kdpipe.progress import Progress

    if not paths:
        raise DataError("no image files to read")
    first = read_image(paths[0], size, grey)
    x = np.empty((len(paths),) + first.shape, dtype=np.uint8)
    x[0] = first
    with Progress(label, len(paths), "files") as progress:
        progress.advance()
        for i, path in enumerate(paths[1:], start=1):
            image = read_image(path, size, grey)
            if image.shape != first.shape:
                raise DataError(
                    f"{path}: {image.shape[1]}x{image.shape[2]} pixels, but {paths[0]} is "
                    f"{first.shape[1]}x{first.shape[2]}: the images of a data set must share "
                    "one size (the imagefolder family resizes them with option size)")
            x[i] = image
            progress.advance()
    return x


def channel_stats(x: np.ndarray, chunk: int = 4096) -> dict:
    """Per-channel mean and (population) std of uint8 images [N, C, H, W], in [0, 1] units.

    Counted from a 256-bin histogram per channel: exact, and no float copy of the whole set;
    ``chunk`` images at a time, as np.bincount casts its input to 64-bit integers."""
    levels = np.arange(256) / 255
    counts = np.zeros((x.shape[1], 256), dtype=np.int64)
    for start in range(0, len(x), chunk):
        for c in range(x.shape[1]):
            counts[c] += np.bincount(x[start:start + chunk, c].ravel(), minlength=256)
    mean, std = [], []
    for row in counts:
        m = row @ levels / row.sum()
        mean.append(float(m))
        std.append(float(np.sqrt(row @ (levels - m) ** 2 / row.sum())))
    return {"mean": mean, "std": std}


def image_dataset(x_train, y_train, x_test, y_test, classes) -> dict:
    """The prepared dict of an image family from uint8 [N, C, H, W] arrays and labels."""
    import torch

    return {
        "x_train": torch.from_numpy(np.ascontiguousarray(x_train)),
        "y_train": torch.from_numpy(np.asarray(y_train, dtype=np.int64)),
        "x_test": torch.from_numpy(np.ascontiguousarray(x_test)),
        "y_test": torch.from_numpy(np.asarray(y_test, dtype=np.int64)),
        "classes": list(classes),
        "meta": {"kind": "image", "normalize": channel_stats(x_train)},
    }
