"""Reversible ResNet / DF-ResNet: additive couplings whose inputs are recomputed, not cached."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from svlab.models.recompute import GRAINS, ReversibleFunction, halves
from svlab.models.registry import register
from svlab.models.resnet import FbankResNet, bins_after, conv_bn
from svlab.models.units import recomputed

# ---------------------------------------------------------------- the coupling and its halves


def basic_branch(channels: int, hidden: int, dropout: float = 0.0) -> nn.Sequential:
    """A ResNet basic block's residual branch: 3x3 conv-BN-ReLU(-dropout)-3x3 conv-BN.

    It maps ``channels`` to ``channels`` through ``hidden`` channels. In a coupling of width
    W, ``channels`` is W/2; with ``hidden = W`` F and G together hold exactly the weights of
    one W-wide basic block (2 * 2 * 9 * W/2 * W = 18 W^2).

    >>> basic_branch(2, 4)(torch.zeros(1, 2, 5, 5)).shape
    torch.Size([1, 2, 5, 5])
    """
    layers = [conv_bn(channels, hidden), nn.ReLU()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers, conv_bn(hidden, channels))


def depth_first_branch(channels: int, hidden: int, dropout: float = 0.0) -> nn.Sequential:
    """DF-ResNet's inverted bottleneck branch: 1x1 expand, 3x3 depthwise, 1x1 project, BN each.

    In a coupling of width W, ``channels`` is W/2 and ``hidden = 4 W`` is the vanilla
    block's hidden width, so F and G together hold about the weights of one vanilla block.

    >>> depth_first_branch(2, 8)(torch.zeros(1, 2, 5, 5)).shape
    torch.Size([1, 2, 5, 5])
    """
    layers = [conv_bn(channels, hidden, kernel=1), nn.ReLU()]
    layers += [conv_bn(hidden, hidden, kernel=3, groups=hidden), nn.ReLU()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers, conv_bn(hidden, channels, kernel=1))


class Coupling(nn.Module):
    """RevNet's additive coupling on a channel split: y1 = x1 + F(x2), y2 = x2 + G(y1).

    Any F and G that keep their input's shape make it invertible:
    x2 = y2 - G(y1), then x1 = y1 - F(x2).

    >>> _ = torch.manual_seed(0); block = Coupling(basic_branch(2, 4), basic_branch(2, 4)).eval()
    >>> x = torch.randn(3, 4, 6, 5)
    >>> torch.allclose(block.inverse(block(x)), x, atol=1e-5)
    True
    """

    def __init__(self, f: nn.Module, g: nn.Module) -> None:
        super().__init__()
        self.f, self.g = f, g

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = halves(x)
        y1 = x1 + self.f(x2)
        y2 = x2 + self.g(y1)
        return torch.cat([y1, y2], dim=1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """The input ``x`` that this coupling maps to ``y``."""
        y1, y2 = halves(y)
        x2 = y2 - self.g(y1)
        x1 = y1 - self.f(x2)
        return torch.cat([x1, x2], dim=1)


def basic_coupling(width: int, hidden: int | None = None, dropout: float = 0.0) -> Coupling:
    """A coupling of ``width`` channels whose F and G are basic-block branches (hidden ``width``).

    >>> sum(p.numel() for p in basic_coupling(8).parameters() if p.dim() == 4) == 18 * 8 * 8
    True
    """
    if width % 2:
        raise ValueError(f"a coupling needs an even width, got {width}")
    hidden = width if hidden is None else hidden
    half = width // 2
    return Coupling(basic_branch(half, hidden, dropout), basic_branch(half, hidden, dropout))


def depth_first_coupling(width: int, expansion: int = 4, dropout: float = 0.0) -> Coupling:
    """A coupling of ``width`` channels whose F and G are inverted bottlenecks (hidden 4 W).

    >>> depth_first_coupling(4)(torch.zeros(2, 4, 3, 3)).shape
    torch.Size([2, 4, 3, 3])
    """
    if width % 2:
        raise ValueError(f"a coupling needs an even width, got {width}")
    half, hidden = width // 2, expansion * width
    return Coupling(
        depth_first_branch(half, hidden, dropout), depth_first_branch(half, hidden, dropout)
    )


class ReversibleSequence(nn.Module):
    """Couplings run one after another; in training, their inputs are not kept for backward.

    With ``memory_saving=True`` (default) a custom autograd function runs the whole sequence
    under ``no_grad`` and saves only its output. In backward it walks the couplings from the
    last to the first: from each output it recomputes G(y1) to rebuild x2 = y2 - G(y1), then
    F(x2) to rebuild x1 = y1 - F(x2), and backpropagates through these two recomputations
    only. So activation memory does not grow with the number of couplings, at the cost of
    one more forward pass of F and G. BatchNorm running statistics are restored after the
    recomputation, the RNG state (for dropout) is replayed and autocast (mixed precision) is
    re-entered as it was in forward. ``grain`` says how a branch is rebuilt in backward:
    ``"branch"`` re-runs it with autograd on as a whole, ``"unit"`` one conv-BN-ReLU unit at
    a time in batch chunks (:mod:`svlab.models.units`: the same gradients, a lower peak, one
    more forward pass of each unit). ``memory_saving=False`` runs the same couplings as
    ordinary modules (autograd caches everything), for comparison.

    >>> _ = torch.manual_seed(0); seq = ReversibleSequence([basic_coupling(4), basic_coupling(4)])
    >>> x = torch.randn(2, 4, 5, 5, requires_grad=True)
    >>> seq(x).square().sum().backward(); x.grad.shape
    torch.Size([2, 4, 5, 5])
    """

    def __init__(
        self,
        blocks: Iterable[Coupling],
        memory_saving: bool = True,
        preserve_rng_state: bool = True,
        grain: str = "branch",
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        if len(self.blocks) == 0:
            raise ValueError("a ReversibleSequence needs at least one coupling")
        for i, block in enumerate(self.blocks):
            if not isinstance(block, Coupling):
                raise ValueError(f"block {i} is a {type(block).__name__}, not a Coupling")
        self.memory_saving = memory_saving
        self.preserve_rng_state = preserve_rng_state
        self.grain = _checked_grain(grain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        params = list(self.blocks.parameters())
        needs_grad = x.requires_grad or any(p.requires_grad for p in params)
        if self.memory_saving and torch.is_grad_enabled() and needs_grad:
            return ReversibleFunction.apply(
                x, self.blocks, self.preserve_rng_state, self.grain, *params
            )
        for block in self.blocks:
            x = block(x)
        return x

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """The input that the sequence maps to ``y``.

        >>> seq = ReversibleSequence([depth_first_coupling(4)]).eval()
        >>> x = torch.randn(1, 4, 3, 3)
        >>> torch.allclose(seq.inverse(seq(x)), x, atol=1e-5)
        True
        """
        for block in reversed(self.blocks):
            y = block.inverse(y)
        return y


def _checked_grain(grain: str) -> str:
    if grain not in GRAINS:
        raise ValueError(f"recompute must be one of {GRAINS}, got {grain!r}")
    return grain


def set_recompute(model: nn.Module, grain: str) -> nn.Module:
    """Rebuild every coupling of ``model`` by ``"branch"`` or by ``"unit"`` in backward; with
    ``"unit"`` a reversible model's stem and transitions also keep only their inputs.

    >>> net = set_recompute(RevResNet([1, 1, 1, 1], base_width=2, feat_dim=16), "unit")
    >>> net.recompute, net.stages[0][0].grain
    ('unit', 'unit')
    """
    for module in model.modules():
        if isinstance(module, ReversibleSequence):
            module.grain = _checked_grain(grain)
        if isinstance(module, ReversibleNet):
            module.recompute = _checked_grain(grain)
    return model


def set_memory_saving(model: nn.Module, enabled: bool) -> nn.Module:
    """Switch every :class:`ReversibleSequence` in ``model`` to recomputation or to caching.

    >>> seq = ReversibleSequence([basic_coupling(2)])
    >>> set_memory_saving(seq, False).memory_saving
    False
    """
    for module in model.modules():
        if isinstance(module, ReversibleSequence):
            module.memory_saving = enabled
    return model


# ---------------------------------------------------------------- reversible models


def reversible_stage(
    coupling: Callable[[int], Coupling],
    in_ch: int,
    out_ch: int,
    depth: int,
    stride: int,
    transition: bool,
) -> nn.Sequential:
    """An optional 3x3 conv-BN transition (width change, stride), then ``depth`` couplings.

    The transition is an ordinary layer (its input and output are cached); the couplings
    cache only the stage's output.

    >>> reversible_stage(basic_coupling, 4, 8, 2, 2, transition=True)(torch.zeros(1, 4, 8, 8)).shape
    torch.Size([1, 8, 4, 4])
    """
    if not transition and (in_ch != out_ch or stride != 1):
        raise ValueError(
            f"a stage from {in_ch} to {out_ch} channels at stride {stride} needs a transition"
        )
    layers = [conv_bn(in_ch, out_ch, kernel=3, stride=stride)] if transition else []
    layers.append(ReversibleSequence([coupling(out_ch) for _ in range(depth)]))
    return nn.Sequential(*layers)


class ReversibleNet(FbankResNet):
    """:class:`FbankResNet` whose stages hold couplings, rebuilt in backward by ``recompute``.

    With ``recompute="unit"`` the ordinary layers around the couplings (the stem and each
    stage's transition, conv-BN(-ReLU)) go through :func:`svlab.models.units.recomputed`,
    which keeps only the input of each run of them (the fbank for the stem and the first
    transition), and each coupling's branches are rebuilt unit by unit.
    ``"branch"`` (default) is svlab's first way, kept to compare. The weights are the same.
    Example in :func:`set_recompute`.
    """

    recompute = "branch"

    def frame_features(self, fbank: torch.Tensor) -> torch.Tensor:
        if self.recompute == "branch":
            return super().frame_features(fbank)
        x, ordinary = fbank.transpose(1, 2).unsqueeze(1), [self.stem]
        for stage in self.stages:
            for layer in stage:
                if not isinstance(layer, ReversibleSequence):
                    ordinary.append(layer)
                    continue
                x = recomputed(ordinary, x)  # ordinary layers in a row: one chain, one input
                x, ordinary = layer(x), []
        return recomputed(ordinary, x) if ordinary else x


class RevResNet(ReversibleNet):
    """Reversible ResNet: :class:`svlab.models.ResNet` with couplings in place of basic blocks.

    Stem, widths, strides, pooling and embedding are ResNet's. Every basic block becomes a
    coupling whose F and G are basic-block branches on half the channels with ``hidden``
    channels inside; a stage that changes width or resolution starts with a 3x3 conv-BN
    transition of stride 2 (as DF-ResNet's stages do) instead of the vanilla stride-2 block
    and its 1x1 shortcut. ``hidden_ratio`` sets ``hidden = hidden_ratio * width``: 1.0 gives
    each coupling exactly a basic block's weights, and the registered models use the ratio
    that makes the whole network's parameter count match its vanilla twin (the transitions
    add weights the vanilla stride-2 blocks do not have).

    >>> net = RevResNet([1, 1, 1, 1], base_width=2, feat_dim=16, embed_dim=5)
    >>> net(torch.zeros(2, 30, 16)).shape
    torch.Size([2, 5])
    """

    def __init__(
        self,
        depths: Sequence[int],
        base_width: int = 32,
        feat_dim: int = 80,
        embed_dim: int = 256,
        pooling: str = "TSTP",
        strides: Sequence[int] = (1, 2, 2, 2),
        hidden_ratio: float = 1.0,
        dropout: float = 0.0,
        recompute: str = "branch",
    ) -> None:
        widths = [base_width * 2**i for i in range(len(depths))]
        stem = nn.Sequential(conv_bn(1, base_width), nn.ReLU())
        stages, in_ch = [], base_width
        for width, depth, stride in zip(widths, depths, strides, strict=True):
            hidden = max(1, round(hidden_ratio * width))

            def coupling(w: int, hidden: int = hidden) -> Coupling:
                return basic_coupling(w, hidden, dropout)

            change = in_ch != width or stride != 1
            stages.append(reversible_stage(coupling, in_ch, width, depth, stride, change))
            in_ch = width
        stats_dim = widths[-1] * bins_after(feat_dim, strides)
        super().__init__(stem, stages, stats_dim, embed_dim, pooling)
        self.depths, self.widths, self.strides = list(depths), widths, list(strides)
        set_recompute(self, recompute)


class RevDFResNet(ReversibleNet):
    """Reversible DF-ResNet: :class:`svlab.models.DFResNet` with couplings of inverted
    bottlenecks in place of its blocks.

    Stem, transition convolutions, widths, strides, pooling and embedding are DF-ResNet's.
    F and G map half the channels through the vanilla block's hidden width
    (``expansion * width``), so the 1x1 weights match the vanilla block's and only the
    depthwise 3x3 weights (and BatchNorms) are doubled.

    >>> net = RevDFResNet([1, 1, 1, 1], base_width=2, feat_dim=16, embed_dim=5)
    >>> net(torch.zeros(2, 30, 16)).shape
    torch.Size([2, 5])
    """

    def __init__(
        self,
        depths: Sequence[int],
        base_width: int = 32,
        widths: Sequence[int] | None = None,
        feat_dim: int = 80,
        embed_dim: int = 256,
        pooling: str = "TSTP",
        strides: Sequence[int] = (1, 2, 2, 2),
        expansion: int = 4,
        dropout: float = 0.0,
        recompute: str = "branch",
    ) -> None:
        if widths is None:
            widths = [base_width * m for m in (1, 1, 2, 4, 8)]
        if len(widths) != len(depths) + 1:
            raise ValueError(
                f"DF-ResNet needs one width for the stem and one per stage: "
                f"got widths {list(widths)} for depths {list(depths)}"
            )

        def coupling(width: int) -> Coupling:
            return depth_first_coupling(width, expansion, dropout)

        stem = nn.Sequential(conv_bn(1, widths[0]), nn.ReLU())
        stages = [
            reversible_stage(coupling, widths[i], widths[i + 1], depth, stride, transition=True)
            for i, (depth, stride) in enumerate(zip(depths, strides, strict=True))
        ]
        stats_dim = widths[-1] * bins_after(feat_dim, strides)
        super().__init__(stem, stages, stats_dim, embed_dim, pooling)
        self.depths, self.widths, self.strides = list(depths), list(widths), list(strides)
        set_recompute(self, recompute)


register("rev_resnet18", depths=(2, 2, 2, 2), hidden_ratio=0.75)(RevResNet)
register("rev_resnet34", depths=(3, 4, 6, 3), hidden_ratio=0.875)(RevResNet)
register("rev_dfresnet56", depths=(3, 3, 9, 3))(RevDFResNet)
register("rev_dfresnet110", depths=(3, 3, 27, 3))(RevDFResNet)
register("rev_dfresnet233", depths=(3, 8, 63, 3))(RevDFResNet)
