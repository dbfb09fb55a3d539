"""SpeechBrain's ECAPA-TDNN: reflect-padded TDNN layers, its Res2Net split and attentive pooling."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from svlab.models.ecapa import SqueezeExcite

_EPS = 1e-12


class ReflectConv1d(nn.Conv1d):
    """A 1-D convolution that keeps the length by reflection padding (SpeechBrain's "same").

    >>> conv = ReflectConv1d(2, 3, kernel_size=3, dilation=2)
    >>> conv(torch.zeros(1, 2, 9)).shape
    torch.Size([1, 3, 9])
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.dilation[0] * (self.kernel_size[0] - 1) // 2
        if pad:
            x = F.pad(x, (pad, pad), mode="reflect")
        return super().forward(x)


class TDNN(nn.Module):
    """Reflect-padded 1-D convolution (with bias), ReLU, BatchNorm: SpeechBrain's TDNNBlock.

    >>> TDNN(3, 5, kernel=3, dilation=2)(torch.zeros(2, 3, 10)).shape
    torch.Size([2, 5, 10])
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.conv = ReflectConv1d(in_ch, out_ch, kernel, dilation=dilation)
        self.bn = nn.BatchNorm1d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(torch.relu(self.conv(x)))


class SBRes2Conv(nn.Module):
    """SpeechBrain's Res2Net split: the first group passes as is, the second is convolved, each
    later one is convolved after adding the previous group's output (svlab's and wespeaker's
    :class:`~svlab.models.ecapa.Res2Conv` convolve the first and pass the last).

    >>> SBRes2Conv(8, scale=4, kernel=3, dilation=2)(torch.zeros(2, 8, 10)).shape
    torch.Size([2, 8, 10])
    """

    def __init__(self, channels: int, scale: int, kernel: int, dilation: int) -> None:
        super().__init__()
        if channels % scale:
            raise ValueError(f"SBRes2Conv: {channels} channels do not split into scale {scale}")
        self.scale = scale
        width = channels // scale
        self.convs = nn.ModuleList(TDNN(width, width, kernel, dilation) for _ in range(scale - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = torch.chunk(x, self.scale, dim=1)
        outputs = [groups[0]]
        for i, conv in enumerate(self.convs):
            outputs.append(conv(groups[i + 1] if i == 0 else groups[i + 1] + outputs[-1]))
        return torch.cat(outputs, dim=1)


class SBSERes2Block(nn.Module):
    """1x1 TDNN, Res2 dilated TDNN, 1x1 TDNN, squeeze-excitation; residual add (through a 1x1
    convolution when the width changes).

    >>> SBSERes2Block(6, 8, scale=4, dilation=2, se_channels=4)(torch.zeros(2, 6, 10)).shape
    torch.Size([2, 8, 10])
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        scale: int = 8,
        kernel: int = 3,
        dilation: int = 1,
        se_channels: int = 128,
    ) -> None:
        super().__init__()
        self.tdnn1 = TDNN(in_ch, out_ch)
        self.res2 = SBRes2Conv(out_ch, scale, kernel, dilation)
        self.tdnn2 = TDNN(out_ch, out_ch)
        self.se = SqueezeExcite(out_ch, se_channels)
        self.shortcut = nn.Identity() if in_ch == out_ch else nn.Conv1d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.se(self.tdnn2(self.res2(self.tdnn1(x))))


def _weighted_stats(x: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SpeechBrain's weighted mean and ``sqrt(max(sum w (x - mean)^2, 1e-12))`` over time."""
    mean = (weights * x).sum(dim=-1)
    var = (weights * (x - mean.unsqueeze(-1)).pow(2)).sum(dim=-1)
    return mean, torch.sqrt(var.clamp(min=_EPS))


class SBAttentivePooling(nn.Module):
    """SpeechBrain's attentive statistics pooling: TDNN (conv, ReLU, BN), tanh, 1x1 convolution,
    softmax over time; with ``global_context`` the TDNN also sees the utterance's mean and
    (population) standard deviation next to each frame.

    >>> pool = SBAttentivePooling(4, attention_channels=2)
    >>> pool(torch.randn(3, 4, 7)).shape, pool.out_dim
    (torch.Size([3, 8]), 8)
    """

    def __init__(self, in_dim: int, attention_channels: int = 128, global_context: bool = True):
        super().__init__()
        self.in_dim, self.out_dim, self.global_context = in_dim, 2 * in_dim, global_context
        self.tdnn = TDNN(3 * in_dim if global_context else in_dim, attention_channels)
        self.conv = nn.Conv1d(attention_channels, in_dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context = x
        if self.global_context:
            uniform = torch.full_like(x[:1, :1], 1.0 / x.shape[-1])
            mean, std = _weighted_stats(x, uniform)
            frames = x.shape[-1]
            stats = [s.unsqueeze(-1).expand(-1, -1, frames) for s in (mean, std)]
            context = torch.cat([x, *stats], dim=1)
        weights = torch.softmax(self.conv(torch.tanh(self.tdnn(context))), dim=-1)
        return torch.cat(_weighted_stats(x, weights), dim=-1)


class SpeechBrainECAPA(nn.Module):
    """SpeechBrain's ``ECAPA_TDNN`` (as in ``spkrec-ecapa-voxceleb``), in svlab's layers.

    ``channels`` is the width of the stem and of each SE-Res2 block (an int: the stem and three
    blocks of that width; or one width per layer), ``mfa_channels`` the aggregation's width:
    SpeechBrain's ``channels=[1024, 1024, 1024, 1024, 3072]`` (the published VoxCeleb model,
    the default here) is ``channels=1024, mfa_channels=3072``. Every block feeds the next;
    the blocks' outputs are concatenated and mixed by a TDNN layer (conv, ReLU, BN), pooled by
    :class:`SBAttentivePooling`, batch-normalised and projected to ``embed_dim``. Every
    convolution pads by reflection. ``kernel_sizes`` and ``dilations`` (one per layer, the
    aggregation included) default to SpeechBrain's ``[5, 3, 3, 3, 1]`` and ``[1, 2, 3, 4, 1]``.
    Its front end is SpeechBrain's Fbank (:func:`svlab.features.speechbrain_fbank`).

    >>> net = SpeechBrainECAPA(channels=8, feat_dim=10, embed_dim=4, scale=4, se_channels=4,
    ...                        mfa_channels=16, attention_channels=4)
    >>> net(torch.zeros(2, 20, 10)).shape, net.front_end
    (torch.Size([2, 4]), 'speechbrain')
    """

    front_end = "speechbrain"

    def __init__(
        self,
        channels: int | Sequence[int] = 1024,
        feat_dim: int = 80,
        embed_dim: int = 192,
        scale: int = 8,
        se_channels: int = 128,
        mfa_channels: int = 3072,
        attention_channels: int = 128,
        kernel_sizes: Sequence[int] | None = None,
        dilations: Sequence[int] | None = None,
        global_context: bool = True,
    ) -> None:
        super().__init__()
        widths = [channels] * 4 if isinstance(channels, int) else list(channels)
        n = len(widths) + 1
        if n < 3:
            raise ValueError(f"SpeechBrainECAPA needs a stem and a block, got channels={channels}")
        kernel_sizes = list(kernel_sizes or [5] + [3] * (n - 2) + [1])
        dilations = list(dilations or [1, *range(2, n), 1])
        if not len(kernel_sizes) == len(dilations) == n:
            raise ValueError(
                f"SpeechBrainECAPA: {n} layers but {len(kernel_sizes)} kernel sizes "
                f"and {len(dilations)} dilations"
            )
        self.embed_dim = embed_dim
        self.stem = TDNN(feat_dim, widths[0], kernel_sizes[0], dilations[0])
        self.blocks = nn.ModuleList(
            SBSERes2Block(
                widths[i - 1], widths[i], scale, kernel_sizes[i], dilations[i], se_channels
            )
            for i in range(1, n - 1)
        )
        self.mfa = TDNN(sum(widths[1:]), mfa_channels, kernel_sizes[-1], dilations[-1])
        self.pool = SBAttentivePooling(mfa_channels, attention_channels, global_context)
        self.bn = nn.BatchNorm1d(self.pool.out_dim)
        self.embedding = nn.Linear(self.pool.out_dim, embed_dim)

    def frame_features(self, fbank: torch.Tensor) -> torch.Tensor:
        """The aggregated frame-level features ``[B, channels[-1], T]`` before pooling."""
        x = self.stem(fbank.transpose(1, 2))
        outputs = []
        for block in self.blocks:
            x = block(x)
            outputs.append(x)
        return self.mfa(torch.cat(outputs, dim=1))

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        if fbank.dim() != 3:
            raise ValueError(
                f"expected fbank of shape [batch, frames, bins], got {list(fbank.shape)}"
            )
        return self.embedding(self.bn(self.pool(self.frame_features(fbank))))
