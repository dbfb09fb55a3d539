"""ERes2Net and ERes2NetV2 (Chen et al., Interspeech 2023 / 2024), in 3D-Speaker's layout:
Res2Net-style ResNets whose blocks and stages are fused by attentional feature fusion (AFF).

The module names follow 3D-Speaker's own (``layer3.2.fuse_models.0.local_att.1``,
``fuse_mode123``, ``layer3_ds`` ...), so its checkpoints load key for key
(:func:`svlab.models.load_pretrained`); the front end is 3D-Speaker's kaldi fbank
(:func:`svlab.features.speakerlab_fbank`).

The shape of the network, as svlab reads 3D-Speaker's ``ERes2Net`` and ``ERes2NetV2``:

1. a 3x3 stem convolution on the spectrogram ``[B, 1, F, T]`` (BatchNorm, ReLU);
2. four stages of Res2Net blocks at ``m``, ``2m``, ``4m`` and ``8m`` planes (the last three
   halve frequency and time): a 1x1 convolution widens to ``scale`` groups of
   ``floor(planes * base_width / 64)`` channels, each group is added to the previous group's
   output (stages 1-2) or fused with it by AFF (stages 3-4, local feature fusion) before its
   3x3 convolution, and a 1x1 convolution returns to ``expansion * planes`` channels; the
   block's activations are ReLUs clipped at 20;
3. global feature fusion: ERes2Net fuses every stage's output with the downsampled fusion of
   the stages before it (``layer1_downsample``, ``fuse_mode12`` ... ``fuse_mode1234``);
   ERes2NetV2 fuses only stage 4 with downsampled stage 3 (``layer3_ds``, ``fuse34``);
4. mean and ``sqrt(unbiased variance + 1e-8)`` over time per channel and frequency bin, and a
   linear layer to ``embed_dim`` (``seg_1``; with ``two_emb_layer`` a second one after ReLU and
   a BatchNorm without scale or shift, ``seg_bn_1`` and ``seg_2``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from svlab.models.wespeaker import UnbiasedTSTP

DEPTHS = (3, 4, 6, 3)  # blocks in each stage of the published models
CLIP = 20.0  # the blocks' ReLU is clipped at this value (a Hardtanh from 0)
VARIANCE_EPS = 1e-8  # 3D-Speaker's TSTP adds this to the variance


class AFF(nn.Module):
    """Attentional feature fusion of ``x`` and ``y`` (same shape): a 1x1 bottleneck network on
    both (``local_att``) gives ``a`` in (0, 2); the result is ``x * a + y * (2 - a)``.

    >>> fuse = AFF(8)
    >>> fuse(torch.zeros(2, 8, 3, 5), torch.zeros(2, 8, 3, 5)).shape
    torch.Size([2, 8, 3, 5])
    """

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        inner = channels // reduction
        self.local_att = nn.Sequential(
            nn.Conv2d(2 * channels, inner, 1),
            nn.BatchNorm2d(inner),
            nn.SiLU(),
            nn.Conv2d(inner, channels, 1),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        weight = 1.0 + torch.tanh(self.local_att(torch.cat([x, y], dim=1)))
        return x * weight + y * (2.0 - weight)


def clipped_relu(x: torch.Tensor) -> torch.Tensor:
    """ReLU clipped at :data:`CLIP` (20), the activation inside 3D-Speaker's ERes2Net blocks.

    >>> clipped_relu(torch.tensor([-1.0, 5.0, 30.0]))
    tensor([ 0.,  5., 20.])
    """
    return F.hardtanh(x, 0.0, CLIP)


class Res2Block(nn.Module):
    """An ERes2Net block: 1x1 conv to ``scale`` groups, hierarchical 3x3 convolutions (each
    group plus, or with ``fuse`` AFF-fused with, the previous group's output), 1x1 conv to
    ``expansion * planes``, a residual shortcut.

    >>> block = Res2Block(4, 8, stride=2, base_width=32, scale=2, fuse=True)
    >>> block(torch.zeros(1, 4, 6, 6)).shape, block.width
    (torch.Size([1, 16, 3, 3]), 4)
    """

    def __init__(
        self, in_planes: int, planes: int, stride: int = 1, base_width: int = 32, scale: int = 2,
        expansion: int = 2, fuse: bool = False,
    ) -> None:  # fmt: skip
        super().__init__()
        self.width = planes * base_width // 64
        if self.width < 1:
            raise ValueError(f"{planes} planes at base width {base_width} leave no channel")
        self.conv1 = nn.Conv2d(in_planes, self.width * scale, 1, stride, bias=False)
        self.bn1 = nn.BatchNorm2d(self.width * scale)
        self.convs = nn.ModuleList(
            nn.Conv2d(self.width, self.width, 3, padding=1, bias=False) for _ in range(scale)
        )
        self.bns = nn.ModuleList(nn.BatchNorm2d(self.width) for _ in range(scale))
        self.fuse = fuse
        if fuse:
            self.fuse_models = nn.ModuleList(AFF(self.width) for _ in range(scale - 1))
        self.conv3 = nn.Conv2d(self.width * scale, planes * expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * expansion)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes * expansion:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes * expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * expansion),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = clipped_relu(self.bn1(self.conv1(x))).split(self.width, dim=1)
        outs: list[torch.Tensor] = []
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns, strict=True)):
            group = groups[i]
            if i > 0:
                group = self.fuse_models[i - 1](outs[-1], group) if self.fuse else outs[-1] + group
            outs.append(clipped_relu(bn(conv(group))))
        return clipped_relu(self.bn3(self.conv3(torch.cat(outs, dim=1))) + self.shortcut(x))


def _stage(
    in_planes: int, planes: int, blocks: int, stride: int, base_width: int, scale: int,
    expansion: int, fuse: bool,
) -> nn.Sequential:  # fmt: skip
    return nn.Sequential(*(
        Res2Block(in_planes if i == 0 else planes * expansion, planes, stride if i == 0 else 1,
                  base_width, scale, expansion, fuse)
        for i in range(blocks)
    ))  # fmt: skip


class _ERes2NetBase(nn.Module):
    """The stem, the four stages, the pooling and the embedding layers both versions share."""

    front_end = "speakerlab"

    def __init__(
        self, feat_dim: int, embed_dim: int, m_channels: int, depths: Sequence[int],
        base_width: int, scale: int, expansion: int, two_emb_layer: bool,
    ) -> None:  # fmt: skip
        super().__init__()
        if feat_dim % 8:
            raise ValueError(f"ERes2Net halves the frequency axis 3 times: {feat_dim} bins")
        self.embed_dim = embed_dim
        self.conv1 = nn.Conv2d(1, m_channels, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(m_channels)
        in_planes = m_channels
        for s, blocks in enumerate(depths):
            planes = m_channels * 2**s
            stage = _stage(in_planes, planes, blocks, 1 if s == 0 else 2, base_width, scale,
                           expansion, fuse=s >= 2)  # fmt: skip
            self.add_module(f"layer{s + 1}", stage)
            in_planes = planes * expansion
        stats = in_planes * feat_dim // 8
        self.pool = UnbiasedTSTP(stats, eps=VARIANCE_EPS)
        self.seg_1 = nn.Linear(2 * stats, embed_dim)
        self.two_emb_layer = two_emb_layer
        if two_emb_layer:
            self.seg_bn_1 = nn.BatchNorm1d(embed_dim, affine=False)
            self.seg_2 = nn.Linear(embed_dim, embed_dim)

    def stages(self, feats: torch.Tensor) -> list[torch.Tensor]:
        """The four stages' outputs for features ``[B, T, F]``."""
        out = F.relu(self.bn1(self.conv1(feats.transpose(1, 2).unsqueeze(1))))
        outs = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            out = layer(out)
            outs.append(out)
        return outs

    def embed(self, fused: torch.Tensor) -> torch.Tensor:
        """The embedding of the fused last stage ``[B, C, F', T']``."""
        embedding = self.seg_1(self.pool(fused))
        if self.two_emb_layer:
            embedding = self.seg_2(self.seg_bn_1(F.relu(embedding)))
        return embedding


class ERes2Net(_ERes2NetBase):
    """3D-Speaker's ERes2Net: ``[B, T, feat_dim]`` features to ``[B, embed_dim]`` embeddings,
    the stages fused bottom-up (1 into 2, that into 3, that into 4).

    The published models use ``m_channels=32`` (ERes2Net-base, 6.61 M parameters at 192
    dimensions) or 64 (ERes2Net-large), ``base_width=32, scale=2`` (expansion 2).

    >>> net = ERes2Net(feat_dim=16, embed_dim=8, m_channels=4, depths=(1, 1, 1, 1))
    >>> net(torch.zeros(2, 20, 16)).shape, net.front_end
    (torch.Size([2, 8]), 'speakerlab')
    """

    def __init__(
        self,
        feat_dim: int = 80,
        embed_dim: int = 192,
        m_channels: int = 32,
        depths: Sequence[int] = DEPTHS,
        base_width: int = 32,
        scale: int = 2,
        two_emb_layer: bool = False,
    ) -> None:
        super().__init__(feat_dim, embed_dim, m_channels, depths, base_width, scale, 2,
                         two_emb_layer)  # fmt: skip
        m = m_channels
        self.layer1_downsample = nn.Conv2d(2 * m, 4 * m, 3, 2, 1, bias=False)
        self.layer2_downsample = nn.Conv2d(4 * m, 8 * m, 3, 2, 1, bias=False)
        self.layer3_downsample = nn.Conv2d(8 * m, 16 * m, 3, 2, 1, bias=False)
        self.fuse_mode12 = AFF(4 * m)
        self.fuse_mode123 = AFF(8 * m)
        self.fuse_mode1234 = AFF(16 * m)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        out1, out2, out3, out4 = self.stages(feats)
        fused = self.fuse_mode12(out2, self.layer1_downsample(out1))
        fused = self.fuse_mode123(out3, self.layer2_downsample(fused))
        return self.embed(self.fuse_mode1234(out4, self.layer3_downsample(fused)))


class ERes2NetV2(_ERes2NetBase):
    """3D-Speaker's ERes2NetV2: ERes2Net with wider, configurable blocks (``base_width``,
    ``scale``, ``expansion``) and only stage 3 fused into stage 4.

    The published models use ``m_channels=64, base_width=26, scale=2, expansion=2``: 17.86 M
    parameters at 192 dimensions.

    >>> net = ERes2NetV2(feat_dim=16, embed_dim=8, m_channels=8, depths=(1, 1, 1, 1))
    >>> net(torch.zeros(2, 20, 16)).shape, net.front_end
    (torch.Size([2, 8]), 'speakerlab')
    """

    def __init__(
        self,
        feat_dim: int = 80,
        embed_dim: int = 192,
        m_channels: int = 64,
        depths: Sequence[int] = DEPTHS,
        base_width: int = 26,
        scale: int = 2,
        expansion: int = 2,
        two_emb_layer: bool = False,
    ) -> None:
        super().__init__(feat_dim, embed_dim, m_channels, depths, base_width, scale, expansion,
                         two_emb_layer)  # fmt: skip
        channels = 4 * m_channels * expansion
        self.layer3_ds = nn.Conv2d(channels, 2 * channels, 3, 2, 1, bias=False)
        self.fuse34 = AFF(2 * channels)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        _, _, out3, out4 = self.stages(feats)
        return self.embed(self.fuse34(out4, self.layer3_ds(out3)))
