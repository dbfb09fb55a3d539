"""Choose an optimizer by name (fp32 torch, svlab or bitsandbytes 8-bit); weigh its state."""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch

from svlab.optim.optimizers import Adam8bit, SGD8bit

OPTIMIZERS = ("sgd", "adam", "sgd8bit", "adam8bit")
BACKENDS = ("svlab", "bitsandbytes")


def make_optimizer(
    params: Iterable,
    name: str,
    lr: float,
    *,
    momentum: float = 0.9,
    nesterov: bool = True,
    weight_decay: float = 1e-4,
    betas: tuple[float, float] = (0.9, 0.999),
    backend: str = "svlab",
) -> torch.optim.Optimizer:
    """The optimizer called ``name`` (``"sgd"``, ``"adam"``, ``"sgd8bit"``, ``"adam8bit"``).

    ``"sgd"`` and ``"adam"`` are torch's fp32 optimizers, whatever the ``backend``;
    ``"sgd8bit"`` / ``"adam8bit"`` are :class:`~svlab.optim.SGD8bit` /
    :class:`~svlab.optim.Adam8bit` (``backend="svlab"``, pure PyTorch, any device) or
    bitsandbytes' ``SGD8bit`` / ``Adam8bit`` (``backend="bitsandbytes"``, its CUDA kernels
    on a GPU). All Adam variants decay weights the decoupled (AdamW) way, as bitsandbytes'
    8-bit Adam does, so ``"adam"`` is ``torch.optim.AdamW``: fp32 and 8-bit then differ
    only in how the states are stored. bitsandbytes' SGD has no Nesterov momentum, so
    ``backend="bitsandbytes"`` with ``"sgd8bit"`` needs ``nesterov=False``.

    >>> w = torch.nn.Parameter(torch.zeros(3))
    >>> type(make_optimizer([w], "adam8bit", 1e-3)).__name__
    'Adam8bit'
    >>> make_optimizer([w], "lamb", 1e-3)
    Traceback (most recent call last):
    ...
    ValueError: unknown optimizer 'lamb'; choose one of ('sgd', 'adam', 'sgd8bit', 'adam8bit')
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown optimizer backend {backend!r}; choose one of {BACKENDS}")
    if name == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay
        )
    if name == "adam":
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)
    if backend == "svlab":
        if name == "sgd8bit":
            return SGD8bit(params, lr, momentum, nesterov, weight_decay)
        return Adam8bit(params, lr, betas, weight_decay=weight_decay)
    import bitsandbytes as bnb

    if name == "sgd8bit":
        if nesterov:
            raise ValueError(
                "bitsandbytes' SGD8bit has no Nesterov momentum (it would silently use plain "
                "momentum): pass nesterov=False, or backend='svlab'"
            )
        return bnb.optim.SGD8bit(params, lr, momentum=momentum, weight_decay=weight_decay)
    return bnb.optim.Adam8bit(params, lr, betas=betas, weight_decay=weight_decay)


def state_breakdown(optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes of optimizer state by kind: ``codes`` (uint8), ``absmax``, ``fp32`` states, ``other``.

    Counts the tensors actually held in ``optimizer.state`` - works for torch's, svlab's
    and bitsandbytes' optimizers alike - and counts a tensor shared between parameters
    (bitsandbytes keeps its quantization maps that way) once. Python numbers (step
    counters) count as 0.

    >>> w = torch.nn.Parameter(torch.zeros(5000))
    >>> w.grad = torch.ones_like(w)
    >>> from svlab.optim import Adam8bit
    >>> opt = Adam8bit([w]); opt.step(); state_breakdown(opt)
    {'codes': 10000, 'absmax': 160, 'fp32': 0, 'other': 0}
    """
    breakdown = {"codes": 0, "absmax": 0, "fp32": 0, "other": 0}
    seen = set()
    for state in optimizer.state.values():
        for key, value in state.items():
            if not torch.is_tensor(value) or value.numel() == 0:
                continue
            identity = (value.device, value.untyped_storage().data_ptr())
            if identity in seen:
                continue
            seen.add(identity)
            nbytes = value.untyped_storage().nbytes()
            if value.dtype == torch.uint8:
                breakdown["codes"] += nbytes
            elif "absmax" in key:
                breakdown["absmax"] += nbytes
            elif value.is_floating_point() and value.numel() > 1 and not key.startswith("qmap"):
                breakdown["fp32"] += nbytes
            else:
                breakdown["other"] += nbytes
    return breakdown


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Total bytes of optimizer state (the sum of :func:`state_breakdown`).

    >>> w = torch.nn.Parameter(torch.zeros(5000))
    >>> w.grad = torch.ones_like(w)
    >>> opt = torch.optim.Adam([w]); opt.step(); state_bytes(opt)
    40004
    """
    return sum(state_breakdown(optimizer).values())


def measure_state(model: torch.nn.Module, name: str, backend: str = "svlab") -> dict[str, int]:
    """:func:`state_breakdown` of optimizer ``name`` over a copy of ``model`` after one step.

    The step uses random gradients (states only exist once a step has run); ``model``
    itself is left untouched.

    >>> measure_state(torch.nn.Linear(100, 100), "adam8bit")
    {'codes': 20000, 'absmax': 320, 'fp32': 800, 'other': 0}
    """
    clone = copy.deepcopy(model)
    optimizer = make_optimizer(clone.parameters(), name, 1e-3, nesterov=False, backend=backend)
    generator = torch.Generator().manual_seed(0)
    for p in clone.parameters():
        p.grad = torch.randn(p.shape, generator=generator).to(p.device, p.dtype)
    optimizer.step()
    return state_breakdown(optimizer)
