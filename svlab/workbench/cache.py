"""Embeddings of a fixed set of utterances, recomputed only from the first block that changed.

When one layer's weights change, every block that runs before it still computes exactly what it
computed last time. :class:`PrefixCache` keeps each block's output per batch; the next forward
serves the blocks that start before the first changed one from that cache and recomputes the
rest. Quantizing the last layers of a ResNet then costs a fraction of a full forward.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn


def default_cache_points(model: nn.Module) -> list[str]:
    """The blocks whose outputs are cached: the ones the model declares, else its children with
    lists opened one level.

    A model with a ``cache_points()`` method names its blocks itself (CAM++: each dense layer,
    whose blocks are nested two levels down). Otherwise a ``ModuleList`` child (the stages of a
    ResNet, the blocks of an ECAPA-TDNN) is replaced by its items, and an item that is an
    ``nn.Sequential`` (a ResNet stage) by its blocks.

    >>> from svlab.models import ResNet
    >>> default_cache_points(ResNet([2, 1], 2, feat_dim=8, embed_dim=4, strides=(1, 2)))
    ['stem', 'stages.0.0', 'stages.0.1', 'stages.1.0', 'pool', 'embedding']
    >>> from svlab.models.campplus import CAMPPlus
    >>> net = CAMPPlus(feat_dim=16, embed_dim=8, head_width=4, init_channels=16, growth_rate=4,
    ...                dense_layers=(2, 1, 1))
    >>> default_cache_points(net)[:3]
    ['head', 'xvector.tdnn', 'xvector.block1.tdnnd1']
    """
    declared = getattr(model, "cache_points", None)
    if callable(declared):
        return list(declared())
    points = []
    for name, child in model.named_children():
        if not isinstance(child, nn.ModuleList):
            points.append(name)
            continue
        for index, item in enumerate(child):
            if isinstance(item, nn.Sequential):
                points += [f"{name}.{index}.{block}" for block, _ in item.named_children()]
            else:
                points.append(f"{name}.{index}")
    return points


class PrefixCache:
    """Embed fixed batches with ``model``, reusing the cached outputs of unchanged blocks.

    ``batches`` are fbank batches ``[B, T, F]`` (as :class:`svlab.evaluate.EvalSet` holds them);
    ``cache_points`` names the
    non-nested blocks to cache (default :func:`default_cache_points`). Call
    :meth:`embed` with the names of the parameters changed since the last call (``None``:
    anything may have changed). The model must be feed-forward and deterministic in eval mode:
    a block that starts before every changed block then sees the inputs it saw last time.

    >>> from svlab.models import ResNet
    >>> _ = torch.manual_seed(0)
    >>> net = ResNet([1, 1], 2, feat_dim=8, embed_dim=4, strides=(1, 2)).eval()
    >>> cache = PrefixCache(net, [torch.randn(3, 6, 8), torch.randn(2, 5, 8)])
    >>> full = cache.embed()
    >>> with torch.no_grad():
    ...     _ = net.embedding.weight.mul_(2)
    >>> cache.embed(changed=["embedding.weight"]).allclose(2 * full - net.embedding.bias)
    True
    >>> cache.last_recomputed
    ['embedding']
    """

    def __init__(
        self,
        model: nn.Module,
        batches: Sequence[torch.Tensor],
        cache_points: Sequence[str] | None = None,
    ) -> None:
        if not batches:
            raise ValueError("PrefixCache needs at least one batch of utterances")
        self.model = model
        if cache_points is None:
            cache_points = default_cache_points(model)
        self.points = list(cache_points)
        modules = dict(model.named_modules())
        unknown = [p for p in self.points if p not in modules]
        if unknown:
            raise ValueError(f"cache points {unknown} are not submodules of {type(model).__name__}")
        nested = [(a, b) for a in self.points for b in self.points if b.startswith(a + ".")]
        if nested:
            inner, outer = nested[0][1], nested[0][0]
            raise ValueError(f"cache points must not nest, but {inner} is inside {outer}")
        self.modules = {p: modules[p] for p in self.points}
        self.batches = list(batches)
        self.order: list[str] = []  # cache points in the order they start, from the first pass
        self.outputs: dict[tuple[str, int, int], torch.Tensor] = {}
        self.last_recomputed: list[str] = []

    def _owner(self, parameter: str) -> str | None:
        for point in self.points:
            if parameter.startswith(point + "."):
                return point
        return None

    def _first_dirty(self, changed: Iterable[str] | None) -> int:
        """Position in :attr:`order` of the first block to recompute (0: all of them)."""
        if changed is None or not self.order:
            return 0
        positions = []
        for name in changed:
            owner = self._owner(name)
            if owner is None or owner not in self.order:
                return 0  # a parameter outside every cached block: recompute everything
            positions.append(self.order.index(owner))
        return min(positions, default=len(self.order))

    @torch.no_grad()
    def embed(self, changed: Iterable[str] | None = None) -> torch.Tensor:
        """Embeddings ``[N, D]`` of every utterance of every batch, batch after batch."""
        first_dirty = self._first_dirty(changed)
        reuse = set(self.order[:first_dirty])
        recording = not self.order
        state = {"batch": 0, "calls": {}}
        handles = []

        def serve(point: str):
            def forward(*args, **kwargs):
                key = _call_key(state, point)
                return self.outputs[key].clone()

            return forward

        def record(point: str):
            def pre_hook(module, args):
                if recording and point not in self.order:
                    self.order.append(point)

            def hook(module, args, output):
                self.outputs[_call_key(state, point)] = output.detach().clone()

            return pre_hook, hook

        try:
            for point, module in self.modules.items():
                if point in reuse:
                    module.forward = serve(point)
                else:
                    pre_hook, hook = record(point)
                    handles.append(module.register_forward_pre_hook(pre_hook))
                    handles.append(module.register_forward_hook(hook))
            was_training = self.model.training
            self.model.eval()
            device = next(self.model.parameters()).device
            embeddings = []
            for batch_index, fbank in enumerate(self.batches):
                state["batch"], state["calls"] = batch_index, {}
                embeddings.append(self.model(fbank.to(device)).float().cpu())
            self.model.train(was_training)
        finally:
            for handle in handles:
                handle.remove()
            for point in reuse:
                del self.modules[point].forward
        self.last_recomputed = [p for p in (self.order or self.points) if p not in reuse]
        return torch.cat(embeddings)

    def cached_bytes(self) -> int:
        """Memory held by the cached block outputs, in bytes.

        >>> from svlab.models import ResNet
        >>> net = ResNet([1], 2, feat_dim=8, embed_dim=4, strides=(1,))
        >>> cache = PrefixCache(net, [torch.randn(1, 6, 8)]); _ = cache.embed()
        >>> cache.cached_bytes()   # stem and block [1, 2, 8, 6], pooled [1, 32], embedding [1, 4]
        912
        """
        return sum(t.numel() * t.element_size() for t in self.outputs.values())


def _call_key(state: dict, point: str) -> tuple[str, int, int]:
    """(block, batch, how many times the block already ran in this batch): a block may repeat."""
    calls = state["calls"]
    count = calls.get(point, 0)
    calls[point] = count + 1
    return point, state["batch"], count
