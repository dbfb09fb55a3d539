"""2-D ResNets over the fbank "image": the shared skeleton (stem, stages, pooling, embedding)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from svlab.models.pooling import make_pooling

BlockFactory = Callable[[int, int, int], nn.Module]


def conv_bn(
    in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, groups: int = 1
) -> nn.Sequential:
    """A bias-free 2-D convolution (padding keeps the size at stride 1) followed by BatchNorm.

    >>> conv_bn(1, 4, stride=2)(torch.zeros(1, 1, 80, 20)).shape
    torch.Size([1, 4, 40, 10])
    """
    conv = nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(out_ch))


def bins_after(feat_dim: int, strides: Sequence[int]) -> int:
    """How many frequency bins are left after 3x3 convolutions (padding 1) with these strides.

    >>> bins_after(80, [1, 2, 2, 2])
    10
    """
    for stride in strides:
        feat_dim = (feat_dim - 1) // stride + 1
    return feat_dim


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and a residual connection (1x1 projection on change).

    >>> BasicBlock(4, 8, stride=2)(torch.zeros(2, 4, 10, 6)).shape
    torch.Size([2, 8, 5, 3])
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.branch = nn.Sequential(
            conv_bn(in_ch, out_ch, 3, stride), nn.ReLU(), conv_bn(out_ch, out_ch, 3)
        )
        self.shortcut = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = conv_bn(in_ch, out_ch, kernel=1, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.branch(x) + self.shortcut(x))


class FbankResNet(nn.Module):
    """The skeleton of every 2-D model in svlab: stem, stages, statistics pooling, embedding.

    The fbank ``[B, T, F]`` is read as a one-channel image ``[B, 1, F, T]``; ``stem`` and
    ``stages`` map it to ``[B, C, F', T']``; channels and remaining frequency bins are
    flattened to ``C * F'`` features per frame, pooled over time and projected linearly to
    the ``embed_dim``-dimensional speaker embedding. ResNet, DF-ResNet and their reversible
    versions differ only in the stages they pass in.

    >>> net = FbankResNet(conv_bn(1, 2), [nn.Identity()], stats_dim=2 * 6, embed_dim=3)
    >>> net(torch.zeros(4, 9, 6)).shape
    torch.Size([4, 3])
    """

    def __init__(
        self,
        stem: nn.Module,
        stages: Sequence[nn.Module],
        stats_dim: int,
        embed_dim: int,
        pooling: str = "TSTP",
    ) -> None:
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.pool = make_pooling(pooling, stats_dim)
        self.embedding = nn.Linear(self.pool.out_dim, embed_dim)
        self.embed_dim = embed_dim

    def frame_features(self, fbank: torch.Tensor) -> torch.Tensor:
        """The last stage's output ``[B, C, F', T']`` for an fbank batch ``[B, T, F]``."""
        x = self.stem(fbank.transpose(1, 2).unsqueeze(1))
        for stage in self.stages:
            x = stage(x)
        return x

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        if fbank.dim() != 3:
            raise ValueError(
                f"expected fbank of shape [batch, frames, bins], got {list(fbank.shape)}"
            )
        return self.embedding(self.pool(self.frame_features(fbank).flatten(1, 2)))


def resnet_stage(
    block: BlockFactory, in_ch: int, out_ch: int, depth: int, stride: int
) -> nn.Sequential:
    """``depth`` blocks; the first changes the width and applies the stride.

    >>> resnet_stage(BasicBlock, 4, 8, depth=2, stride=2)(torch.zeros(1, 4, 8, 8)).shape
    torch.Size([1, 8, 4, 4])
    """
    blocks = [block(in_ch, out_ch, stride)]
    blocks += [block(out_ch, out_ch, 1) for _ in range(depth - 1)]
    return nn.Sequential(*blocks)


class ResNet(FbankResNet):
    """ResNet for speaker embeddings, as in wespeaker's VoxCeleb recipe.

    A 3x3 stem with ``base_width`` channels, four stages of ``block`` with widths
    ``base_width * (1, 2, 4, 8)`` and strides (1, 2, 2, 2), statistics pooling over time of
    the ``8 * base_width * feat_dim / 8`` frame features and one linear embedding layer
    (wespeaker's ``two_emb_layer=False``). ResNet34 (depths 3, 4, 6, 3, base width 32,
    embedding 256) has 6.63 M parameters.

    >>> ResNet([1, 1, 1, 1], base_width=2, feat_dim=16, embed_dim=5)(torch.zeros(2, 30, 16)).shape
    torch.Size([2, 5])
    """

    def __init__(
        self,
        depths: Sequence[int],
        base_width: int = 32,
        block: BlockFactory = BasicBlock,
        feat_dim: int = 80,
        embed_dim: int = 256,
        pooling: str = "TSTP",
        strides: Sequence[int] = (1, 2, 2, 2),
    ) -> None:
        widths = [base_width * 2**i for i in range(len(depths))]
        stem = nn.Sequential(conv_bn(1, base_width), nn.ReLU())
        stages, in_ch = [], base_width
        for width, depth, stride in zip(widths, depths, strides, strict=True):
            stages.append(resnet_stage(block, in_ch, width, depth, stride))
            in_ch = width
        stats_dim = widths[-1] * bins_after(feat_dim, strides)
        super().__init__(stem, stages, stats_dim, embed_dim, pooling)
        self.depths, self.widths, self.strides = list(depths), widths, list(strides)
