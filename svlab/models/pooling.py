"""Pooling over time: frame-level features [B, C, T] to one utterance-level vector."""

from __future__ import annotations

import torch
from torch import nn

_EPS = 1e-7


def _mean_std(x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean and standard deviation over the last axis (optionally weighted), concatenated."""
    if weights is None:
        mean = x.mean(dim=-1)
        var = x.var(dim=-1, correction=0)
    else:
        mean = (weights * x).sum(dim=-1)
        var = (weights * x * x).sum(dim=-1) - mean * mean
    return torch.cat([mean, torch.sqrt(var.clamp(min=0) + _EPS)], dim=-1)


class TSTP(nn.Module):
    """Temporal statistics pooling: the mean and standard deviation of every channel over time.

    svlab uses the population variance (wespeaker uses the unbiased one), so a single frame
    pools to a finite vector.

    >>> pool = TSTP(in_dim=3)
    >>> pool(torch.ones(2, 3, 5)).shape, pool.out_dim
    (torch.Size([2, 6]), 6)
    """

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.out_dim = 2 * in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _mean_std(x)


class ASTP(nn.Module):
    """Attentive statistics pooling (Okabe et al. 2018), as used by ECAPA-TDNN.

    A small 1x1-convolution network scores every frame per channel; a softmax over time turns
    the scores into weights for a weighted mean and standard deviation. With
    ``global_context=True`` (ECAPA-TDNN's variant) the network also sees the utterance's mean
    and standard deviation next to each frame.

    >>> pool = ASTP(in_dim=4, bottleneck_dim=2)
    >>> pool(torch.randn(3, 4, 7)).shape, pool.out_dim
    (torch.Size([3, 8]), 8)
    """

    def __init__(self, in_dim: int, bottleneck_dim: int = 128, global_context: bool = True) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.out_dim = 2 * in_dim
        self.global_context = global_context
        context_dim = 3 * in_dim if global_context else in_dim
        self.attention = nn.Sequential(
            nn.Conv1d(context_dim, bottleneck_dim, kernel_size=1),
            nn.Tanh(),
            nn.Conv1d(bottleneck_dim, in_dim, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context = x
        if self.global_context:
            frames = x.shape[-1]
            stats = _mean_std(x).unsqueeze(-1).expand(-1, -1, frames)
            context = torch.cat([x, stats], dim=1)
        weights = torch.softmax(self.attention(context), dim=-1)
        return _mean_std(x, weights)


POOLING = {"TSTP": TSTP, "ASTP": ASTP}


def make_pooling(name: str, in_dim: int) -> nn.Module:
    """The pooling layer called ``name`` (``"TSTP"`` or ``"ASTP"``) for ``in_dim`` channels.

    >>> make_pooling("TSTP", 8).out_dim
    16
    >>> make_pooling("max", 8)
    Traceback (most recent call last):
    ...
    ValueError: unknown pooling 'max'; choose one of ['ASTP', 'TSTP']
    """
    if name not in POOLING:
        raise ValueError(f"unknown pooling {name!r}; choose one of {sorted(POOLING)}")
    return POOLING[name](in_dim)
