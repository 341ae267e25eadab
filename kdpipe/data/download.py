"""Acquire official archives: download once, verify the published checksum, extract.

Never called by tests or training jobs: only the ``acquire`` step of a dataset, and only when
its files are not already in place. Not torchvision's download_url / extract_archive: those
write the download in place (a killed download leaves a file under the final name) and extract
tar members wherever their paths point; here the download is renamed into place when complete
and a member that would land outside the target folder is refused.
"""
from __future__ import annotations

import hashlib
import tarfile
import urllib.request
import zipfile
from pathlib import Path

from kdpipe.data import DataError
from kdpipe.io import atomic_path


def file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(path: Path, checksum: str) -> None:
    """``checksum`` is ``"md5:<hex>"`` or ``"sha256:<hex>"``; raise DataError on a mismatch."""
    algorithm, expected = checksum.split(":", 1)
    actual = file_digest(path, algorithm)
    if actual != expected:
        raise DataError(
            f"{path}: {algorithm} is {actual}, expected {expected}; "
            "the file is corrupt or not the official one: delete it and acquire again")


def fetch(url: str, dest: Path, checksum: str) -> Path:
    """Download ``url`` to ``dest`` (skipped when a verified copy is there) and verify it."""
    dest = Path(dest)
    if dest.exists():
        verify(dest, checksum)
        return dest
    from kdpipe.progress import Progress

    try:
        with atomic_path(dest) as tmp, urllib.request.urlopen(url, timeout=60) as response:
            size = int(response.headers.get("Content-Length") or 0) / 2**20
            with open(tmp, "wb") as f, Progress(f"downloading {url}", size, "MiB") as progress:
                for block in iter(lambda: response.read(1 << 20), b""):
                    f.write(block)
                    progress.advance(len(block) / 2**20)
    except OSError as error:
        raise DataError(
            f"could not download {url} ({error}); on an offline machine download it elsewhere "
            f"and put it at {dest}") from error
    verify(dest, checksum)
    return dest


def extract(archive: Path, into: Path) -> None:
    """Extract a .tar(.gz) or .zip archive into ``into``, refusing paths that escape it."""
    into = Path(into).resolve()
    into.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            names = zf.namelist()
            _check_members(archive, into, names)
            zf.extractall(into)
    else:
        with tarfile.open(archive) as tf:
            _check_members(archive, into, tf.getnames())
            tf.extractall(into, filter="data")


def _check_members(archive: Path, into: Path, names: list) -> None:
    for name in names:
        if not (into / name).resolve().is_relative_to(into):
            raise DataError(f"{archive}: member {name!r} would extract outside {into}")
