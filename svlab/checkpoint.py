"""Model checkpoints: a registry model saved with its name, overrides and head, and rebuilt.

The files themselves are written atomically and read weights-only by :mod:`svlab.storage`,
whose names this module also offers (``svlab.checkpoint.save``, ``load``, ...).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from svlab.losses import AAMSoftmax
from svlab.models.registry import MODEL_FORMAT, from_saved
from svlab.storage import CheckpointError, atomic_write, load, save

__all__ = [
    "MODEL_FORMAT",
    "CheckpointError",
    "atomic_write",
    "load",
    "load_head",
    "load_model",
    "load_trained",
    "save",
    "save_model",
]


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
    return from_saved(_read_model_file(path), path, name)


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
    return AAMSoftmax.from_weight(_read_model_file(path).get("head"))


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
    head = AAMSoftmax.from_weight(ckpt.get("head"))
    return from_saved(ckpt, path), head, ckpt["model"], ckpt["overrides"]


def _read_model_file(path: str | os.PathLike) -> dict:
    ckpt = load(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path} is not an svlab model checkpoint")
    return ckpt
