"""Files svlab writes and reads: atomic writes, and weights-only loads that name what is wrong."""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

import torch

ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive


class CheckpointError(ValueError):
    """A file that cannot be read as a checkpoint; the message names the file and why."""


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync it, rename it to ``path``.

    A crash or an error half-way leaves the old file (or none), never a truncated one, and no
    temporary file. A directory that cannot be made or written raises ``ValueError`` naming
    ``path``.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.bin"
    >>> atomic_write(p, lambda f: f.write(b"abc")).read_bytes()
    b'abc'
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise ValueError(f"cannot write {path}: {err}") from err
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; ours need not be
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise ValueError(f"cannot write {path}: {err}") from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` with ``torch.save``, atomically (:func:`atomic_write`).

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.pt"
    >>> _ = save(p, {"w": torch.ones(2)}); load(p)["w"].tolist()
    [1.0, 1.0]
    """
    return atomic_write(path, lambda f: torch.save(obj, f))


def load(path: str | os.PathLike, stand_ins: Iterable[tuple[type, str]] = ()) -> Any:
    """Read a file written by :func:`save`, allowing only tensors and plain containers.

    Every svlab file (``.pt``, ``.svq``, pretrained weights) is read here. A file that is
    missing raises ``FileNotFoundError``; one that is empty, truncated, not written by
    ``torch.save``, or holds Python objects other than tensors and plain containers raises
    :class:`CheckpointError` naming the file and what is wrong. svlab never loads such a file
    with ``weights_only=False``: unpickling arbitrary objects can run arbitrary code.

    ``stand_ins`` pairs an inert class of svlab's with the name of a class some toolkit pickles
    into its files (``(Record, "pyannote.audio.core.task.Specifications")``): objects of that
    name are read as instances of the stand-in, their fields as plain data, and none of the
    toolkit's code is imported or run.

    >>> load("/no/such/file.pt")
    Traceback (most recent call last):
    ...
    FileNotFoundError: no checkpoint at /no/such/file.pt
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "empty.pt"; _ = p.write_bytes(b"")
    >>> load(p)
    Traceback (most recent call last):
    ...
    svlab.storage.CheckpointError: .../empty.pt is empty (0 bytes): not a checkpoint
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): not a checkpoint")
    with open(path, "rb") as f:
        if f.read(len(ZIP_MAGIC)) != ZIP_MAGIC:
            raise CheckpointError(
                f"{path} is not a checkpoint: torch.save writes a zip archive, this file "
                f"({size} bytes) is something else"
            )
    try:
        with torch.serialization.safe_globals(list(stand_ins)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path} holds Python objects other than tensors and plain containers, which svlab "
            "does not load (unpickling them could run code from the file)"
        ) from err
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as err:
        raise CheckpointError(
            f"{path} is truncated or corrupt ({size} bytes; torch says: "
            f"{str(err).splitlines()[0].split('. ')[0]})"
        ) from err
