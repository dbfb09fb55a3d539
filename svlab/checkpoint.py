"""Checkpoints: written atomically, read back with ``torch.load(..., weights_only=True)``."""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

MODEL_FORMAT = "svlab-model-v1"
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


def load(path: str | os.PathLike) -> Any:
    """Read a file written by :func:`save`, allowing only tensors and plain containers.

    Every svlab file (``.pt``, ``.svq``, pretrained weights) is read here. A file that is
    missing raises ``FileNotFoundError``; one that is empty, truncated, not written by
    ``torch.save``, or holds Python objects other than tensors and plain containers raises
    :class:`CheckpointError` naming the file and what is wrong. svlab never loads such a file
    with ``weights_only=False``: unpickling arbitrary objects can run arbitrary code.

    >>> load("/no/such/file.pt")
    Traceback (most recent call last):
    ...
    FileNotFoundError: no checkpoint at /no/such/file.pt
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "empty.pt"; _ = p.write_bytes(b"")
    >>> load(p)
    Traceback (most recent call last):
    ...
    svlab.checkpoint.CheckpointError: .../empty.pt is empty (0 bytes): not a checkpoint
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


def save_model(
    path: str | os.PathLike,
    model: nn.Module,
    name: str,
    overrides: dict | None = None,
    head: nn.Module | None = None,
    **meta: Any,
) -> Path:
    """Save a registry model with what is needed to rebuild it: its name and overrides.

    ``head``, the AAM-softmax head it was trained with, is kept beside the encoder (not part
    of the model: scoring never uses it) so that fine-tuning can start from it.

    >>> import tempfile, pathlib
    >>> from svlab.models import build
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "m.pt"
    >>> _ = save_model(p, build("resnet34", base_width=4, embed_dim=8), "resnet34",
    ...                {"base_width": 4, "embed_dim": 8}, eer=0.1)
    >>> load_model(p).embed_dim
    8
    >>> load_head(p) is None
    True
    """
    return save(
        path,
        {
            "format": MODEL_FORMAT,
            "model": name,
            "overrides": dict(overrides or {}),
            "state_dict": model.state_dict(),
            "head": None if head is None else head.weight.detach().clone(),
            "meta": meta,
        },
    )


def load_model(path: str | os.PathLike, name: str | None = None) -> nn.Module:
    """Rebuild the model recorded in a checkpoint and load its weights.

    ``name``, when given, must match the architecture in the file; a checkpoint of another
    architecture fails with a message naming both.
    """
    return _model_from(_read_model_file(path), path, name)


def load_head(path: str | os.PathLike) -> nn.Module | None:
    """The AAM-softmax head saved beside a model by :func:`save_model`, or None if none was.

    >>> import tempfile, pathlib
    >>> from svlab.losses import AAMSoftmax
    >>> from svlab.models import build
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "m.pt"
    >>> _ = save_model(p, build("resnet18", base_width=2, embed_dim=8), "resnet18",
    ...                {"base_width": 2, "embed_dim": 8}, head=AAMSoftmax(8, 5))
    >>> load_head(p).weight.shape
    torch.Size([5, 8])
    """
    return _head_from(_read_model_file(path))


def load_trained(path: str | os.PathLike) -> tuple[nn.Module, nn.Module | None, str, dict]:
    """Model, head (or None), registry name and overrides of a checkpoint, from one read:
    what fine-tuning a saved model starts from.

    >>> import tempfile, pathlib
    >>> from svlab.models import build
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "m.pt"
    >>> _ = save_model(p, build("resnet18", base_width=2, embed_dim=8), "resnet18",
    ...                {"base_width": 2, "embed_dim": 8})
    >>> model, head, name, overrides = load_trained(p)
    >>> model.embed_dim, head, name, overrides
    (8, None, 'resnet18', {'base_width': 2, 'embed_dim': 8})
    """
    ckpt = _read_model_file(path)
    return _model_from(ckpt, path, None), _head_from(ckpt), ckpt["model"], ckpt["overrides"]


def _read_model_file(path: str | os.PathLike) -> dict:
    ckpt = load(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path} is not an svlab model checkpoint")
    return ckpt


def _model_from(ckpt: dict, path: str | os.PathLike, name: str | None) -> nn.Module:
    from svlab.models import build

    if name is not None and name != ckpt["model"]:
        raise ValueError(f"{path} holds a {ckpt['model']!r} model, not {name!r}")
    model = build(ckpt["model"], **ckpt["overrides"])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        raise ValueError(
            f"{path}: weights do not fit {ckpt['model']!r} with {ckpt['overrides']}: {err}"
        ) from err
    return model


def _head_from(ckpt: dict) -> nn.Module | None:
    from svlab.losses import AAMSoftmax

    weight = ckpt.get("head")
    if weight is None:
        return None
    head = AAMSoftmax(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        head.weight.copy_(weight)
    return head
