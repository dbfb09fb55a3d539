"""CAM++ (Wang et al., Interspeech 2023), in 3D-Speaker's layout: a 2-D convolutional front
module, then densely connected TDNN layers, each gated by context-aware masking.

The module names follow 3D-Speaker's own (``head.layer1.0.conv1``, ``xvector.block2.tdnnd7
.cam_layer.linear_local`` ...), so its checkpoints load key for key
(:func:`svlab.models.load_pretrained`); the front end is 3D-Speaker's kaldi fbank
(:func:`svlab.features.speakerlab_fbank`).

The shape of the network, as svlab reads 3D-Speaker's ``CAMPPlus``:

1. ``head``: a small ResNet on the spectrogram (one 3x3 conv, two stages of two basic blocks
   that halve the frequency axis, a last conv that halves it once more), flattened to
   ``width * feat_dim / 8`` channels per frame;
2. ``xvector.tdnn``: a 5-tap convolution with stride 2 in time, to ``init_channels``;
3. three dense blocks of 12, 24 and 16 layers (dilations 1, 2, 2); each layer normalises its
   input, narrows it to ``bn_size * growth_rate`` channels (1x1), and adds ``growth_rate``
   channels: a 3-tap convolution scaled by a sigmoid mask computed from the utterance's mean and
   100-frame segment means (the CAM layer); a transit layer (BN-ReLU-1x1) halves the width after
   each block;
4. BN-ReLU, mean and (unbiased) standard deviation over time, a 1x1 layer to ``embed_dim`` and a
   BatchNorm without scale or shift.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

DENSE_LAYERS = (12, 24, 16)  # layers in each dense block
DILATIONS = (1, 2, 2)  # of each block's 3-tap convolutions
SEGMENT_FRAMES = 100  # the CAM layer's segment pooling length


def bn_relu(channels: int) -> nn.Sequential:
    """BatchNorm then ReLU, named ``batchnorm`` and ``relu`` as 3D-Speaker names them.

    >>> [name for name, _ in bn_relu(4).named_children()]
    ['batchnorm', 'relu']
    """
    return nn.Sequential(OrderedDict(batchnorm=nn.BatchNorm1d(channels), relu=nn.ReLU()))


class ResBlock2d(nn.Module):
    """A basic residual block that strides along frequency only (the head's block).

    >>> ResBlock2d(1, 4, stride=2)(torch.zeros(2, 1, 8, 5)).shape
    torch.Size([2, 4, 4, 5])
    """

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, (stride, 1), 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, (stride, 1), bias=False),
                nn.BatchNorm2d(channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ConvHead(nn.Module):
    """CAM++'s front module (3D-Speaker's FCM): ``[B, F, T]`` to ``[B, width * F / 8, T]``.

    >>> ConvHead(width=4, feat_dim=16)(torch.zeros(2, 16, 7)).shape
    torch.Size([2, 8, 7])
    """

    def __init__(self, width: int = 32, feat_dim: int = 80, blocks: Sequence[int] = (2, 2)) -> None:
        super().__init__()
        if feat_dim % 8:
            raise ValueError(f"CAM++'s head halves the frequency axis 3 times: {feat_dim} bins")
        self.conv1 = nn.Conv2d(1, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = nn.Sequential(*(ResBlock2d(width, width, 2 if i == 0 else 1)
                                      for i in range(blocks[0])))  # fmt: skip
        self.layer2 = nn.Sequential(*(ResBlock2d(width, width, 2 if i == 0 else 1)
                                      for i in range(blocks[1])))  # fmt: skip
        self.conv2 = nn.Conv2d(width, width, 3, (2, 1), 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.out_channels = width * (feat_dim // 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x.unsqueeze(1))))
        out = F.relu(self.bn2(self.conv2(self.layer2(self.layer1(out)))))
        return out.flatten(1, 2)


class TDNN(nn.Module):
    """A convolution over time, then BatchNorm and ReLU (``linear``, ``nonlinear``).

    >>> TDNN(4, 6, kernel_size=5, stride=2)(torch.zeros(1, 4, 20)).shape
    torch.Size([1, 6, 10])
    """

    def __init__(self, in_channels: int, channels: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__()
        padding = (kernel_size - 1) // 2
        self.linear = nn.Conv1d(in_channels, channels, kernel_size, stride, padding, bias=False)
        self.nonlinear = bn_relu(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlinear(self.linear(x))


def segment_means(x: torch.Tensor, frames: int = SEGMENT_FRAMES) -> torch.Tensor:
    """Each frame replaced by the mean of its ``frames``-long segment (the last may be shorter).

    >>> segment_means(torch.tensor([[[1.0, 3.0, 5.0]]]), frames=2)
    tensor([[[2., 2., 5.]]])
    """
    means = F.avg_pool1d(x, frames, frames, ceil_mode=True)
    return means.repeat_interleave(frames, dim=-1)[..., : x.shape[-1]]


class CAMLayer(nn.Module):
    """A convolution (``linear_local``) scaled channel by channel by a mask in (0, 1) computed
    from the utterance mean plus each frame's segment mean (``linear1``, ReLU, ``linear2``).

    >>> CAMLayer(8, 4, kernel_size=3, dilation=2)(torch.zeros(2, 8, 9)).shape
    torch.Size([2, 4, 9])
    """

    def __init__(self, in_channels: int, channels: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        padding = (kernel_size - 1) // 2 * dilation
        self.linear_local = nn.Conv1d(
            in_channels, channels, kernel_size, padding=padding, dilation=dilation, bias=False
        )
        self.linear1 = nn.Conv1d(in_channels, in_channels // 2, 1)
        self.linear2 = nn.Conv1d(in_channels // 2, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context = x.mean(dim=-1, keepdim=True) + segment_means(x)
        mask = torch.sigmoid(self.linear2(F.relu(self.linear1(context))))
        return self.linear_local(x) * mask


class DenseTDNNLayer(nn.Module):
    """BN-ReLU, a 1x1 bottleneck, BN-ReLU, a CAM layer: ``growth`` new channels.

    >>> DenseTDNNLayer(6, 4, bottleneck=8, kernel_size=3, dilation=1)(torch.zeros(1, 6, 5)).shape
    torch.Size([1, 4, 5])
    """

    def __init__(
        self, in_channels: int, growth: int, bottleneck: int, kernel_size: int, dilation: int
    ) -> None:
        super().__init__()
        self.nonlinear1 = bn_relu(in_channels)
        self.linear1 = nn.Conv1d(in_channels, bottleneck, 1, bias=False)
        self.nonlinear2 = bn_relu(bottleneck)
        self.cam_layer = CAMLayer(bottleneck, growth, kernel_size, dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cam_layer(self.nonlinear2(self.linear1(self.nonlinear1(x))))


class DenseBlock(nn.ModuleDict):
    """Layers ``tdnnd1``, ``tdnnd2``, ...; each one's output is appended to its input.

    >>> DenseBlock(2, 6, growth=4, bottleneck=8, kernel_size=3, dilation=1)(
    ...     torch.zeros(1, 6, 5)).shape
    torch.Size([1, 14, 5])
    """

    def __init__(
        self, layers: int, in_channels: int, growth: int, bottleneck: int, kernel_size: int,
        dilation: int,
    ) -> None:  # fmt: skip
        super().__init__({
            f"tdnnd{i + 1}": DenseTDNNLayer(
                in_channels + i * growth, growth, bottleneck, kernel_size, dilation
            )
            for i in range(layers)
        })  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.values():
            x = torch.cat([x, layer(x)], dim=1)
        return x


class Transit(nn.Module):
    """BN-ReLU then a 1x1 convolution (``nonlinear``, ``linear``): a dense block's exit.

    >>> Transit(8, 4)(torch.zeros(1, 8, 3)).shape
    torch.Size([1, 4, 3])
    """

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.nonlinear = bn_relu(in_channels)
        self.linear = nn.Conv1d(in_channels, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.nonlinear(x))


class MeanStdPool(nn.Module):
    """Mean and unbiased standard deviation over time, concatenated: ``[B, C, T] -> [B, 2C]``.

    >>> MeanStdPool()(torch.tensor([[[0.0, 2.0]]]))
    tensor([[1.0000, 1.4142]])
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(dim=-1), x.std(dim=-1)], dim=1)


class Embedding(nn.Module):
    """A 1x1 layer to the embedding, then BatchNorm without scale or shift.

    >>> Embedding(6, 3)(torch.randn(4, 6)).shape
    torch.Size([4, 3])
    """

    def __init__(self, in_features: int, embed_dim: int) -> None:
        super().__init__()
        self.linear = nn.Conv1d(in_features, embed_dim, 1, bias=False)
        self.nonlinear = nn.Sequential(
            OrderedDict(batchnorm=nn.BatchNorm1d(embed_dim, affine=False))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlinear(self.linear(x.unsqueeze(-1)).squeeze(-1))


class CAMPPlus(nn.Module):
    """CAM++: ``[B, T, feat_dim]`` features to ``[B, embed_dim]`` embeddings.

    3D-Speaker's published models use ``head_width=32, init_channels=128, growth_rate=32,
    bn_size=4``, 80 bins and 192 (or 512) dimensions: 6.85 M parameters at 192.

    >>> net = CAMPPlus(feat_dim=16, embed_dim=8, head_width=4, init_channels=16, growth_rate=4,
    ...                dense_layers=(2, 2, 2))
    >>> net(torch.zeros(2, 30, 16)).shape, net.front_end
    (torch.Size([2, 8]), 'speakerlab')
    """

    front_end = "speakerlab"

    def __init__(
        self,
        feat_dim: int = 80,
        embed_dim: int = 192,
        head_width: int = 32,
        head_blocks: Sequence[int] = (2, 2),
        init_channels: int = 128,
        growth_rate: int = 32,
        bn_size: int = 4,
        dense_layers: Sequence[int] = DENSE_LAYERS,
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.head = ConvHead(head_width, feat_dim, head_blocks)
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            tdnn=TDNN(self.head.out_channels, init_channels, 5, stride=2)
        )
        channels = init_channels
        for i, (n, dilation) in enumerate(zip(dense_layers, DILATIONS, strict=True), start=1):
            layers[f"block{i}"] = DenseBlock(
                n, channels, growth_rate, bn_size * growth_rate, kernel_size, dilation
            )
            channels += n * growth_rate
            layers[f"transit{i}"] = Transit(channels, channels // 2)
            channels //= 2
        layers["out_nonlinear"] = bn_relu(channels)
        layers["stats"] = MeanStdPool()
        layers["dense"] = Embedding(2 * channels, embed_dim)
        self.xvector = nn.Sequential(layers)

    def cache_points(self) -> list[str]:
        """The blocks whose outputs a prefix cache keeps (:mod:`svlab.workbench.cache`): the
        head whole, then each TDNN, dense layer and transit, the pooling and the embedding, so
        that a change to a late layer re-runs only the layers after it.

        >>> net = CAMPPlus(feat_dim=16, embed_dim=8, head_width=4, init_channels=16, growth_rate=4,
        ...                dense_layers=(2, 1, 1))
        >>> net.cache_points()[:5], net.cache_points()[-3:]
        (['head', 'xvector.tdnn', 'xvector.block1.tdnnd1', 'xvector.block1.tdnnd2', \
'xvector.transit1'], ['xvector.out_nonlinear', 'xvector.stats', 'xvector.dense'])
        """
        points = ["head"]
        for name, module in self.xvector.named_children():
            if isinstance(module, DenseBlock):
                points += [f"xvector.{name}.{layer}" for layer in module]
            else:
                points.append(f"xvector.{name}")
        return points

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.xvector(self.head(feats.transpose(1, 2)))
