"""Helpers of the tests that check svlab's models against other toolkits' code: the fixtures'
hashed weights (tests/fixtures/README.md) and the relative error they are judged by."""

from __future__ import annotations

import torch


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``|out - ref| / |ref|`` over the whole tensor.

    >>> rel_err(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.0]))
    1.0
    """
    return ((out - ref).norm() / ref.norm()).item()


def hash_uniform(n: int, k: int) -> torch.Tensor:
    """The fixture's weight generator (tests/fixtures/README.md): integer hash -> [-0.5, 0.5).

    >>> hash_uniform(3, 0).shape, bool((hash_uniform(100, 1).abs() <= 0.5).all())
    (torch.Size([3]), True)
    """
    h = (torch.arange(n, dtype=torch.int64) + k * 1_000_003) & 0xFFFFFFFF
    for _ in range(2):
        h = (((h >> 16) ^ h) * 0x45D9F3B) & 0xFFFFFFFF
    h = (h >> 16) ^ h
    return (h & 0xFFFF).float() / 65536 - 0.5


def hashed_state(shapes: dict) -> dict:
    """A state dict of the given ``{key: shape}`` filled as the fixtures were made: weights
    scaled by fan-in, BatchNorm scales and running variances near 1, the rest small.

    >>> sorted(hashed_state({"bn.weight": (2,), "conv.weight": (2, 3)}).items())[0][1].shape
    torch.Size([2])
    """
    state = {}
    for k, (key, shape) in enumerate(shapes.items()):
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(0)
            continue
        u = hash_uniform(torch.Size(shape).numel(), k).reshape(shape)
        if len(shape) >= 2:
            state[key] = u * (2.0 / torch.Size(shape[1:]).numel() ** 0.5)
        elif key.endswith("running_var") or (key.endswith("weight") and "bn" in key):
            state[key] = 1.0 + u
        else:
            state[key] = 0.4 * u
    return state
