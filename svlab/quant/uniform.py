"""Uniform (linear) quantization levels: the baseline that k-means is measured against."""

from __future__ import annotations

import torch


def uniform_grid(rows: torch.Tensor, k: int) -> torch.Tensor:
    """``[R, 2]``: each row's ``low`` (its minimum) and ``step = (max - min) / (k - 1)``, float32.

    >>> uniform_grid(torch.tensor([[-1.0, 0.2, 1.0]]), 5).tolist()
    [[-1.0, 0.5]]
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"the number of levels must be a positive integer, got {k!r}")
    rows = rows.detach().float()
    low = rows.min(dim=1).values
    step = (rows.max(dim=1).values - low) / max(k - 1, 1)
    return torch.stack([low, step], dim=1)


def uniform_levels(rows: torch.Tensor, k: int) -> torch.Tensor:
    """``k`` evenly spaced levels from each row's minimum to its maximum: ``[R, k]``, float32.

    Level ``i`` of a row is ``low + i * step`` (see :func:`uniform_grid`), computed in float32
    exactly so, which lets a packed file store just ``low`` and ``step`` per row.
    A constant row gets ``k`` copies of its value.

    >>> uniform_levels(torch.tensor([[-1.0, 0.2, 1.0]]), 5).tolist()
    [[-1.0, -0.5, 0.0, 0.5, 1.0]]
    """
    grid = uniform_grid(rows, k)
    return levels_from(grid[:, 0], grid[:, 1], k)


def levels_from(low: torch.Tensor, step: torch.Tensor, k: int) -> torch.Tensor:
    """The levels ``low + i * step`` for ``i`` in ``0..k-1``, one row per entry of ``low``.

    >>> levels_from(torch.tensor([0.0]), torch.tensor([0.25]), 3).tolist()
    [[0.0, 0.25, 0.5]]
    """
    index = torch.arange(k, dtype=torch.float32, device=low.device)
    return low.float()[:, None] + index[None, :] * step.float()[:, None]
