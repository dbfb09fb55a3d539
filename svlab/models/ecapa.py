"""ECAPA-TDNN (Desplanques et al. 2020): 1-D SE-Res2Net blocks, feature aggregation, ASTP."""

from __future__ import annotations

import torch
from torch import nn

from svlab.models.pooling import ASTP


class ConvReluBn(nn.Module):
    """1-D convolution (with bias), ReLU, BatchNorm: the TDNN layer of ECAPA-TDNN.

    >>> ConvReluBn(3, 5, kernel=3, dilation=2)(torch.zeros(2, 3, 10)).shape
    torch.Size([2, 5, 10])
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 1, dilation: int = 1) -> None:
        super().__init__()
        padding = dilation * (kernel - 1) // 2
        self.conv = nn.Conv1d(in_ch, out_ch, kernel, padding=padding, dilation=dilation)
        self.bn = nn.BatchNorm1d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(torch.relu(self.conv(x)))


class Res2Conv(nn.Module):
    """Res2Net's multi-scale convolution: the channels split into ``scale`` groups; each group
    but the last is convolved after adding the previous group's output; the last passes as is.

    >>> Res2Conv(8, scale=4, kernel=3, dilation=2)(torch.zeros(2, 8, 10)).shape
    torch.Size([2, 8, 10])
    """

    def __init__(self, channels: int, scale: int, kernel: int, dilation: int) -> None:
        super().__init__()
        if channels % scale:
            raise ValueError(f"Res2Conv: {channels} channels do not split into scale {scale}")
        self.scale = scale
        width = channels // scale
        self.convs = nn.ModuleList(
            ConvReluBn(width, width, kernel, dilation) for _ in range(scale - 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = torch.chunk(x, self.scale, dim=1)
        outputs, previous = [], None
        for conv, group in zip(self.convs, groups, strict=False):
            previous = conv(group if previous is None else group + previous)
            outputs.append(previous)
        outputs.append(groups[-1])
        return torch.cat(outputs, dim=1)


class SqueezeExcite(nn.Module):
    """Channel gates from the time-averaged features: linear, ReLU, linear, sigmoid.

    >>> SqueezeExcite(6, bottleneck=2)(torch.ones(2, 6, 4)).shape
    torch.Size([2, 6, 4])
    """

    def __init__(self, channels: int, bottleneck: int = 128) -> None:
        super().__init__()
        self.gate = nn.Sequential(
            nn.Linear(channels, bottleneck),
            nn.ReLU(),
            nn.Linear(bottleneck, channels),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x.mean(dim=-1)).unsqueeze(-1)


class SERes2Block(nn.Module):
    """1x1 TDNN, Res2 dilated convolution, 1x1 TDNN, squeeze-excitation; residual add.

    >>> SERes2Block(8, scale=4, dilation=2, se_channels=4)(torch.zeros(2, 8, 10)).shape
    torch.Size([2, 8, 10])
    """

    def __init__(
        self,
        channels: int,
        scale: int = 8,
        kernel: int = 3,
        dilation: int = 2,
        se_channels: int = 128,
    ) -> None:
        super().__init__()
        self.branch = nn.Sequential(
            ConvReluBn(channels, channels),
            Res2Conv(channels, scale, kernel, dilation),
            ConvReluBn(channels, channels),
            SqueezeExcite(channels, se_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)


class ECAPATDNN(nn.Module):
    """ECAPA-TDNN as in wespeaker's ``ECAPA_TDNN_GLOB_c512/c1024`` (embedding 192).

    A kernel-5 TDNN layer with ``channels`` channels, three SE-Res2 blocks (dilations 2, 3,
    4), the three blocks' outputs concatenated and mixed by a 1x1 convolution to
    ``mfa_channels`` (1536, also for C=1024), attentive statistics pooling with global
    context, BatchNorm and a linear embedding layer. C=512 has 6.19 M parameters and C=1024
    14.65 M, as published. Like wespeaker, each block takes the previous block's output
    (the original paper feeds each block the sum of all earlier outputs), and the
    embedding is not followed by a final BatchNorm.

    >>> net = ECAPATDNN(channels=8, feat_dim=10, embed_dim=4, scale=4, se_channels=4,
    ...                 mfa_channels=12, attention_channels=4)
    >>> net(torch.zeros(2, 20, 10)).shape
    torch.Size([2, 4])
    """

    def __init__(
        self,
        channels: int = 512,
        feat_dim: int = 80,
        embed_dim: int = 192,
        scale: int = 8,
        se_channels: int = 128,
        mfa_channels: int = 1536,
        attention_channels: int = 128,
        dilations: tuple[int, ...] = (2, 3, 4),
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.stem = ConvReluBn(feat_dim, channels, kernel=5)
        self.blocks = nn.ModuleList(
            SERes2Block(channels, scale, 3, d, se_channels) for d in dilations
        )
        self.mfa = nn.Conv1d(channels * len(dilations), mfa_channels, kernel_size=1)
        self.pool = ASTP(mfa_channels, attention_channels, global_context=True)
        self.bn = nn.BatchNorm1d(self.pool.out_dim)
        self.embedding = nn.Linear(self.pool.out_dim, embed_dim)

    def frame_features(self, fbank: torch.Tensor) -> torch.Tensor:
        """The aggregated frame-level features ``[B, mfa_channels, T]`` before pooling."""
        x = self.stem(fbank.transpose(1, 2))
        outputs = []
        for block in self.blocks:
            x = block(x)
            outputs.append(x)
        return torch.relu(self.mfa(torch.cat(outputs, dim=1)))

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        if fbank.dim() != 3:
            raise ValueError(
                f"expected fbank of shape [batch, frames, bins], got {list(fbank.shape)}"
            )
        return self.embedding(self.bn(self.pool(self.frame_features(fbank))))
