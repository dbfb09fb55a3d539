"""wespeaker's ResNet, ECAPA-TDNN and CAM++, and pyannote's copy of the ResNet: svlab's layers
with their pooling statistics."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from svlab.models.campplus import DENSE_LAYERS, CAMPPlus
from svlab.models.ecapa import ECAPATDNN
from svlab.models.pooling import ASTP, TSTP
from svlab.models.resnet import ResNet

_EPS = 1e-7


def _unbiased_std(x: torch.Tensor) -> torch.Tensor:
    """``sqrt(var + 1e-7)`` over the last axis with the unbiased (n - 1) variance, as wespeaker."""
    return torch.sqrt(x.var(dim=-1) + _EPS)


class UnbiasedTSTP(TSTP):
    """wespeaker's TSTP: mean and ``sqrt(unbiased variance + eps)`` over time (``eps`` 1e-7).

    svlab's :class:`TSTP` divides by ``n``; wespeaker by ``n - 1``, which changes the standard
    deviation by ``sqrt(n / (n - 1))`` (2% for the 25 frames a 2-s crop leaves after ResNet34).

    >>> x = torch.tensor([[[0.0, 2.0]]])
    >>> UnbiasedTSTP(1)(x), TSTP(1)(x)
    (tensor([[1.0000, 1.4142]]), tensor([[1., 1.]]))
    """

    def __init__(self, in_dim: int, eps: float = _EPS) -> None:
        super().__init__(in_dim)
        self.eps = eps  # 1e-7 in wespeaker, 1e-8 in 3D-Speaker, 0 in pyannote

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1, -2)
        return torch.cat([x.mean(dim=-1), torch.sqrt(x.var(dim=-1) + self.eps)], dim=-1)


class WespeakerASTP(ASTP):
    """wespeaker's attentive statistics pooling: the global context uses the unbiased standard
    deviation plus 1e-7, the weighted one ``sqrt(max(var, 1e-7))``.

    >>> pool = WespeakerASTP(in_dim=4, bottleneck_dim=2)
    >>> pool(torch.randn(3, 4, 7)).shape
    torch.Size([3, 8])
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context = x
        if self.global_context:
            mean = x.mean(dim=-1, keepdim=True).expand_as(x)
            std = _unbiased_std(x).unsqueeze(-1).expand_as(x)
            context = torch.cat([x, mean, std], dim=1)
        weights = torch.softmax(self.attention(context), dim=-1)
        mean = (weights * x).sum(dim=-1)
        var = (weights * x * x).sum(dim=-1) - mean * mean
        return torch.cat([mean, torch.sqrt(var.clamp(min=_EPS))], dim=-1)


class WespeakerResNet(ResNet):
    """wespeaker's ``ResNet`` with BasicBlocks (ResNet18/34): svlab's :class:`ResNet` with
    wespeaker's TSTP (:class:`UnbiasedTSTP`) and its front end, kaldi fbank.

    >>> net = WespeakerResNet([1, 1, 1, 1], base_width=2, feat_dim=16, embed_dim=5)
    >>> net(torch.zeros(2, 30, 16)).shape, net.front_end
    (torch.Size([2, 5]), 'kaldi')
    """

    front_end = "kaldi"

    def __init__(
        self,
        depths: Sequence[int] = (3, 4, 6, 3),
        base_width: int = 32,
        feat_dim: int = 80,
        embed_dim: int = 256,
    ) -> None:
        super().__init__(depths, base_width, feat_dim=feat_dim, embed_dim=embed_dim)
        self.pool = UnbiasedTSTP(self.pool.in_dim)


class WespeakerECAPA(ECAPATDNN):
    """wespeaker's ``ECAPA_TDNN_GLOB_c512/c1024``: svlab's :class:`ECAPATDNN` with wespeaker's
    ASTP statistics (:class:`WespeakerASTP`) and its front end, kaldi fbank
    (``global_context=False``: ``ECAPA_TDNN_c512/c1024``).

    >>> net = WespeakerECAPA(channels=8, feat_dim=10, embed_dim=4, scale=4, se_channels=4,
    ...                      mfa_channels=12, attention_channels=4)
    >>> net(torch.zeros(2, 20, 10)).shape
    torch.Size([2, 4])
    """

    front_end = "kaldi"

    def __init__(
        self,
        channels: int = 512,
        feat_dim: int = 80,
        embed_dim: int = 192,
        scale: int = 8,
        se_channels: int = 128,
        mfa_channels: int = 1536,
        attention_channels: int = 128,
        global_context: bool = True,
    ) -> None:
        super().__init__(
            channels, feat_dim, embed_dim, scale, se_channels, mfa_channels, attention_channels
        )
        self.pool = WespeakerASTP(mfa_channels, attention_channels, global_context)


class PyannoteResNet(WespeakerResNet):
    """pyannote.audio's ``WeSpeakerResNet34`` (``pyannote/wespeaker-voxceleb-resnet34-LM``):
    wespeaker's ResNet whose statistics pooling is pyannote's ``StatsPool``, the unbiased
    standard deviation with nothing added to the variance. Its front end is wespeaker's kaldi
    fbank (pyannote's defaults: x 2**15, Hamming window, mean over the whole input removed).

    >>> net = PyannoteResNet([1, 1, 1, 1], base_width=2, feat_dim=16, embed_dim=5)
    >>> net(torch.zeros(2, 30, 16)).shape, net.pool.eps, net.front_end
    (torch.Size([2, 5]), 0.0, 'kaldi')
    """

    def __init__(
        self,
        depths: Sequence[int] = (3, 4, 6, 3),
        base_width: int = 32,
        feat_dim: int = 80,
        embed_dim: int = 256,
    ) -> None:
        super().__init__(depths, base_width, feat_dim=feat_dim, embed_dim=embed_dim)
        self.pool = UnbiasedTSTP(self.pool.in_dim, eps=0.0)


class WespeakerCAMPPlus(CAMPPlus):
    """wespeaker's ``CAMPPlus``: 3D-Speaker's CAM++ (:class:`CAMPPlus`, the same module names)
    with wespeaker's TSTP (standard deviation ``sqrt(unbiased variance + 1e-7)``, 3D-Speaker's
    has no 1e-7) and wespeaker's front end, kaldi fbank on 16-bit samples with a Hamming window.
    wespeaker's recipes use 512 dimensions.

    >>> net = WespeakerCAMPPlus(feat_dim=16, embed_dim=8, head_width=4, init_channels=16,
    ...                         growth_rate=4, dense_layers=(2, 2, 2))
    >>> net(torch.zeros(2, 30, 16)).shape, net.front_end
    (torch.Size([2, 8]), 'kaldi')
    """

    front_end = "kaldi"

    def __init__(
        self,
        feat_dim: int = 80,
        embed_dim: int = 512,
        head_width: int = 32,
        head_blocks: Sequence[int] = (2, 2),
        init_channels: int = 128,
        growth_rate: int = 32,
        bn_size: int = 4,
        dense_layers: Sequence[int] = DENSE_LAYERS,
        kernel_size: int = 3,
    ) -> None:
        super().__init__(feat_dim, embed_dim, head_width, head_blocks, init_channels,
                         growth_rate, bn_size, dense_layers, kernel_size)  # fmt: skip
        self.xvector.stats = UnbiasedTSTP(self.xvector.dense.linear.in_channels // 2)
