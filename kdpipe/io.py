"""Atomic file writes: a killed job never leaves a half-written file under a final name."""
from __future__ import annotations

import errno
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


class ResultError(Exception):
    """A result file that is missing, damaged or cannot be written; the message names the file
    and what to do."""


def no_space_left(folder) -> bool:
    """Whether the file system holding ``folder`` has no block left for this user."""
    try:
        return os.statvfs(folder).f_bavail == 0
    except OSError:
        return False


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.
    A full disk raises ResultError naming the folder; the temporary file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results are for sharing
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except Exception as error:
        # torch.save reports a full disk as a bare RuntimeError: ask the file system too
        if not (getattr(error, "errno", None) == errno.ENOSPC or no_space_left(path.parent)):
            raise
        raise ResultError(f"no space left on {path.parent} while writing {path.name}: nothing "
                          "was written; free space there and run again") from error
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")


def write_npy(path, array) -> None:
    import numpy as np

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)
