"""Datasets: families, a registry of them, and one prepared on-disk format.

A family is any object with ``DEFAULTS`` (every option with its default), ``acquire(options:
dict, raw_dir: Path) -> None`` and ``prepare(options: dict, raw_dir: Path) -> dict``: usually a
module of its own; a ``Family`` where several share one module. ``prepare`` returns the
prepared split as tensors::

    {"x_train": Tensor, "y_train": int64 Tensor, "x_test": Tensor, "y_test": int64 Tensor,
     "classes": list[str], "meta": dict}

``prepare`` writes that dict once, atomically, into one ``.pt`` file; training jobs ``load`` it
straight onto their device, so no job pays for decoding or a DataLoader.

What a prepared file will hold (``Facts``: split sizes, input shape and dtype, classes) is known
before it is prepared, so that a study can be planned (kdpipe.cost): every family has
``facts(options) -> Facts | None``, declared for an official data set and its options (None
where it depends on files only a look can tell, such as a researcher's own folder); the families
that read a researcher's files also have ``scan(options, raw_dir) -> Facts | None``, a cheap look
at them (listing, one header, a text's characters); ``prepared_facts`` reads a prepared file's.
"""
from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# name -> "module" or "module:attribute"; imported only when used (some pull in torchaudio).
FAMILIES = {
    "digits": "kdpipe.data.digits",
    "cifar10": "kdpipe.data.cifar:cifar10",
    "cifar100": "kdpipe.data.cifar:cifar100",
    "svhn": "kdpipe.data.svhn",
    "tinyimagenet": "kdpipe.data.tinyimagenet",
    "imagefolder": "kdpipe.data.imagefolder",
    "speechcommands": "kdpipe.data.speechcommands",
    "urbansound8k": "kdpipe.data.urbansound",
    "audiofolder": "kdpipe.data.audiofolder",
    "shakespeare": "kdpipe.data.text:shakespeare",
    "textfile": "kdpipe.data.text:textfile",
}


class DataError(ValueError):
    """A dataset is missing, corrupt or misconfigured; the message says which file or key."""


@dataclass
class Dataset:
    x_train: "torch.Tensor"
    y_train: "torch.Tensor"
    x_test: "torch.Tensor"
    y_test: "torch.Tensor"
    classes: list
    meta: dict

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple:
        return tuple(self.x_train.shape[1:])


@dataclass(frozen=True)
class Facts:
    """What a prepared data set holds: ``train`` and ``test`` samples, one input's shape and the
    dtype it is stored in (``uint8`` images, ``float32`` features, ``int64`` characters), the
    number of classes, and the targets of one sample: 1, or a language model's context (every
    position of a window is predicted, and scored as a sample)."""
    train: int
    test: int
    input_shape: tuple
    dtype: str
    classes: int
    positions: int = 1


@dataclass(frozen=True)
class Family:
    """A family that shares its module with others (CIFAR-10 and -100, the text families)."""
    name: str
    defaults: dict
    acquire: Callable[[dict, Path], None]
    prepare: Callable[[dict, Path], dict]
    facts: Callable[[dict], Facts | None]
    scan: Callable[[dict, Path], Facts | None] | None = None

    @property
    def DEFAULTS(self) -> dict:  # the name a family module uses
        return self.defaults


def family(name: str):
    """The family registered as ``name``: its module, or the module's attribute FAMILIES names."""
    if name not in FAMILIES:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(sorted(FAMILIES))}")
    module, _, attribute = FAMILIES[name].partition(":")
    found = importlib.import_module(module)
    return getattr(found, attribute) if attribute else found


def check_options(name: str, defaults: dict, options: dict) -> dict:
    """The family's defaults updated with ``options``; an unknown option is an error."""
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise DataError(f"dataset {name!r}: unknown option(s) {', '.join(unknown)}; "
                        f"known: {', '.join(sorted(defaults))}")
    return {**defaults, **options}


def acquire(name: str, options: dict, raw_dir: Path) -> None:
    """Make the official files of ``name`` present under ``raw_dir`` (may download)."""
    family(name).acquire(dict(options), Path(raw_dir))


def prepare(name: str, options: dict, raw_dir: Path, out_path: Path) -> Dataset:
    """Prepare dataset ``name`` from ``raw_dir`` into the tensor file ``out_path``; return the
    prepared split as written (images not normalised), so that no caller loads it again."""
    import torch

    from kdpipe.io import atomic_path

    prepared = family(name).prepare(dict(options), Path(raw_dir))
    for key in ("x_train", "y_train", "x_test", "y_test", "classes", "meta"):
        if key not in prepared:
            raise DataError(f"dataset {name!r}: prepare() returned no {key!r}")
    present = torch.unique(prepared["y_train"]).numel()
    if len(prepared["classes"]) < 2 or present < 2:
        raise DataError(f"dataset {name!r}: {len(prepared['classes'])} class(es), {present} of "
                        "them in the train split; a classifier needs at least two")
    with atomic_path(out_path) as tmp:
        torch.save(prepared, tmp)
    return Dataset(**prepared)


def facts(name: str, options: dict) -> Facts | None:
    """The declared ``Facts`` of family ``name`` with ``options`` (checked as its prepare step
    checks them: a bad option is a DataError), or None where they depend on files that only a
    look can tell."""
    return family(name).facts(dict(options))


def scan(name: str, options: dict, raw_dir: Path) -> Facts | None:
    """``Facts`` from a look at the raw files of a family that reads a researcher's own files;
    None for the other families and where the files are absent."""
    look = getattr(family(name), "scan", None)
    return None if look is None else look(dict(options), Path(raw_dir))


def split_sizes(samples: int, test_fraction: float) -> tuple[int, int]:
    """(train, test) sizes of scikit-learn's ``train_test_split`` of ``samples`` with
    ``test_size=test_fraction``, stratified or not: ceil(test_fraction * samples) test samples,
    the rest train."""
    test = math.ceil(test_fraction * samples)
    return samples - test, test


def _read(path: Path, device: str, mmap: bool = False) -> dict:
    """The fields of the prepared file ``path``; DataError where it is missing or damaged."""
    import pickle
    import zipfile

    import torch

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: prepared data file is missing; run the workflow again: its data "
                        "step prepares it")
    try:
        prepared = torch.load(path, map_location=device, weights_only=True, mmap=mmap)
        return {key: prepared[key] for key in ("x_train", "y_train", "x_test", "y_test",
                                               "classes", "meta")}
    except (RuntimeError, OSError, EOFError, KeyError, TypeError, ValueError,
            pickle.UnpicklingError, zipfile.BadZipFile) as error:
        raise DataError(f"{path}: damaged prepared data file ({type(error).__name__}: "
                        f"{str(error).splitlines()[0] if str(error) else ''}); delete it and "
                        "run the workflow again: its data step prepares it anew") from None


def prepared_facts(path: Path) -> Facts:
    """The ``Facts`` of a prepared file, from its tensors' shapes and dtypes: the file is
    memory-mapped, and no tensor's data is read."""
    fields = _read(path, "cpu", mmap=True)
    x, y = fields["x_train"], fields["y_train"]
    return Facts(train=len(x), test=len(fields["x_test"]), input_shape=tuple(x.shape[1:]),
                 dtype=str(x.dtype).removeprefix("torch."), classes=len(fields["classes"]),
                 positions=math.prod(y.shape[1:]))


def load(path: Path, device: str = "cpu") -> Dataset:
    """The prepared file ``path`` on ``device``; uint8 images become normalised float32."""
    import torch

    fields = _read(path, device)
    normalize = fields["meta"].get("normalize")
    if normalize:  # uint8 images, normalised here so the file stays 4x smaller
        for key in ("x_train", "x_test"):
            # in place: one float copy of the images, not three (a data set can be gigabytes)
            x = fields[key].float().div_(255)
            shape = (1, -1) + (1,) * (x.dim() - 2)
            x.sub_(torch.tensor(normalize["mean"], device=x.device).view(shape))
            x.div_(torch.tensor(normalize["std"], device=x.device).view(shape))
            fields[key] = x
    return Dataset(**fields)
