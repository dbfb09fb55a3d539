"""wespeaker's ResNet and ECAPA-TDNN: svlab's layers with wespeaker's pooling statistics."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from svlab.models.ecapa import ECAPATDNN
from svlab.models.pooling import ASTP, TSTP
from svlab.models.resnet import ResNet

_EPS = 1e-7


def _unbiased_std(x: torch.Tensor) -> torch.Tensor:
    """``sqrt(var + 1e-7)`` over the last axis with the unbiased (n - 1) variance, as wespeaker."""
    return torch.sqrt(x.var(dim=-1) + _EPS)


class UnbiasedTSTP(TSTP):
    """wespeaker's TSTP: mean and ``sqrt(unbiased variance + 1e-7)`` over time.

    svlab's :class:`TSTP` divides by ``n``; wespeaker by ``n - 1``, which changes the standard
    deviation by ``sqrt(n / (n - 1))`` (2% for the 25 frames a 2-s crop leaves after ResNet34).

    >>> x = torch.tensor([[[0.0, 2.0]]])
    >>> UnbiasedTSTP(1)(x), TSTP(1)(x)
    (tensor([[1.0000, 1.4142]]), tensor([[1., 1.]]))
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1, -2)
        return torch.cat([x.mean(dim=-1), _unbiased_std(x)], dim=-1)


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
