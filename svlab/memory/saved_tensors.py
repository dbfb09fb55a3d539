"""What autograd saves in a forward pass for backward, storage by storage and by module."""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd
import torch
from torch import nn

from svlab.memory.step import storage_key


class SavedTensorRecorder:
    """Records the tensors autograd saves for backward while active (``with recorder:``).

    Parameters and buffers given in ``exclude`` are not activations and are skipped; every
    storage is counted once, however many ops save it or views of it, and is filed under the
    ``label`` the recorder had when it was first saved (see :func:`saved_by_module`).

    >>> lin = nn.Linear(4, 4)
    >>> with SavedTensorRecorder(exclude=lin.parameters()) as rec:
    ...     y = torch.relu(lin(torch.ones(8, 4)))
    >>> rec.bytes  # the input (8 x 4) for the weight gradient, the ReLU output (8 x 4)
    256
    """

    def __init__(self, exclude: Iterable[torch.Tensor] = ()) -> None:
        self.excluded = {storage_key(t) for t in exclude}
        self.sizes: dict[int, int] = {}
        self.labels: dict[int, str] = {}
        self.label = ""
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        key = storage_key(t)
        if key not in self.excluded:
            self.sizes[key] = t.untyped_storage().nbytes()
            self.labels.setdefault(key, self.label)
        return t

    @property
    def bytes(self) -> int:
        """Total bytes of the distinct storages saved so far."""
        return sum(self.sizes.values())

    def bytes_by_label(self) -> dict[str, int]:
        """Bytes saved under each label, in the order the labels first saved something."""
        totals: dict[str, int] = {}
        for key, size in self.sizes.items():
            totals[self.labels[key]] = totals.get(self.labels[key], 0) + size
        return totals

    def __enter__(self) -> SavedTensorRecorder:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)


def saved_by_module(model: nn.Module, *inputs: torch.Tensor, depth: int = 2) -> pd.Series:
    """Bytes autograd saves in ``model(*inputs)``, by submodule up to ``depth`` name levels.

    Each saved storage is filed under the innermost such submodule running when it was first
    saved (``"stages.1.0"`` at depth 3); what the model's own code saves outside them is
    filed under ``"(model)"``. Works on the meta device too.

    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> saved_by_module(net, torch.ones(16, 4)).to_dict()  # input; ReLU output (shared with 2)
    {'0': 256, '1': 512}
    """
    recorder = SavedTensorRecorder(exclude=[*model.parameters(), *model.buffers()])
    stack = ["(model)"]
    handles = []
    for name, module in model.named_modules():
        if name and name.count(".") < depth:

            def enter(module, args, name=name):
                stack.append(name)
                recorder.label = name

            def leave(module, args, output):
                stack.pop()
                recorder.label = stack[-1]

            handles.append(module.register_forward_pre_hook(enter))
            handles.append(module.register_forward_hook(leave))
    recorder.label = stack[-1]
    try:
        with recorder:
            model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return pd.Series(recorder.bytes_by_label(), dtype="int64", name="bytes")
