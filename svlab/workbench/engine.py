"""The workbench's state: bits per layer, the quantized weights, and the EER they give, kept live.

:class:`LiveQuantizer` holds a working copy of a trained model and an evaluation set. Setting one
layer's bits swaps in that layer's quantized weight (from a cache keyed by layer, bits, quantizer
and granularity, so each k-means problem is solved once), re-embeds the evaluation utterances from
the first block that changed (:class:`svlab.workbench.cache.PrefixCache`) and re-scores the
trials. Everything the workbench panels show is read from here, so it is tested without a browser.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from svlab.comparison import trial_speakers
from svlab.evaluate import EvalSet
from svlab.features import front_end_of
from svlab.metrics import det_curve, eer_difference_interval, eer_interval
from svlab.quant import clone_model, fit_quantizer, quantizable_names
from svlab.quant.allocate import DEFAULT_CHOICES, allocate_bits
from svlab.quant.binarize import Binarizer
from svlab.quant.hessian import (
    embedding_distortion_loss,
    gauss_newton_trace,
    hessian_sensitivity,
    hutchinson_trace,
)
from svlab.quant.packed import model_size, packed_layer_bytes
from svlab.workbench.cache import PrefixCache
from svlab.workbench.trials import workbench_trials as workbench_trials  # where it was

Bits = int | None  # None: the layer stays fp32
CODEBOOK_METHODS = ("kmeans", "uniform")
BINARY_SCHEMES = ("sign", "static", "adaptive")
QUANTIZERS = CODEBOOK_METHODS + BINARY_SCHEMES
GRANULARITIES = ("tensor", "channel")


INTERVAL_RESAMPLES = 200  # speaker-bootstrap resamples for the panel: ~0.05 s on 7k trials
SEEN_STATES = 32  # bit maps whose scores and intervals are kept: going back to one is instant
Progress = Callable[[int, int], None]  # (steps done, steps in all), called after each step
# Utterances of the first batch that the Hessian traces of the mixed-precision preset see. On
# the tutorial ResNet, 8 of them ranked the 14 layers' traces as 32 did against a 32-utterance,
# 32-sample reference (Spearman 0.93 and 0.90, 8 Rademacher samples each), in a quarter of the
# time (2.9 s against 11.3 s on one loaded core).
HESSIAN_UTTERANCES = 8


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` intra-op threads (``None``: leave the setting), then
    restore the previous count.

    >>> before = torch.get_num_threads()
    >>> with torch_threads(1):
    ...     torch.get_num_threads()
    1
    >>> torch.get_num_threads() == before
    True
    """
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass(frozen=True)
class Scores:
    """What the panels show about one state of the model: EER, minDCF, the DET curve, and
    the trial scores they come from."""

    eer: float
    min_dcf: float
    far: np.ndarray
    frr: np.ndarray
    scores: np.ndarray


class LiveQuantizer:
    """A trained model whose layers are quantized one at a time, re-scored after each change.

    ``layers`` are the weights that get a bits setting (default: every Conv/Linear/RNN weight,
    :func:`svlab.quant.quantizable_names`); all start at fp32. ``quantizer`` is ``"kmeans"`` or
    ``"uniform"`` (a codebook of ``2**bits`` levels, :func:`svlab.quant.fit_quantizer`), or a
    1-bit scheme of :class:`svlab.quant.binarize.Binarizer` (``"sign"``, ``"static"``,
    ``"adaptive"``), which acts on the layers at 1 bit while the others use k-means.
    ``granularity`` is ``"tensor"`` (one codebook or scale per layer) or ``"channel"``.
    ``threads``: intra-op threads while embedding (``None``: torch's setting). One by default:
    the forward passes are small, and on cores shared with other busy processes a second
    thread that waits for its core made a slider move 3.6x slower (median 1.77 s against 0.49 s
    on 2 cores at load average 5-6, ``benchmarks/results/widgets.json``).

    >>> from svlab.models import ResNet
    >>> _ = torch.manual_seed(0)
    >>> net = ResNet([1, 1], 2, feat_dim=8, embed_dim=4, strides=(1, 2))
    >>> evalset = EvalSet(["a", "b", "c"], [torch.randn(3, 6, 8)], torch.zeros(3, 8),
    ...                   [("a", "b"), ("a", "c"), ("b", "c")], np.array([1, 0, 0]))
    >>> live = LiveQuantizer(net, evalset)
    >>> live.set_bits("embedding.weight", 2).eer >= 0
    True
    >>> live.bits["embedding.weight"], live.cache.last_recomputed
    (2, ['embedding'])
    """

    def __init__(
        self,
        model: nn.Module,
        evalset: EvalSet,
        layers: Sequence[str] | None = None,
        quantizer: str = "kmeans",
        granularity: str = "tensor",
        threads: int | None = 1,
    ) -> None:
        self.model = clone_model(model).eval()
        self.threads = threads
        self.evalset = evalset
        self.layers = list(layers) if layers is not None else quantizable_names(self.model)
        params = dict(self.model.named_parameters())
        unknown = [name for name in self.layers if name not in params]
        if unknown:
            raise ValueError(f"{type(model).__name__} has no parameter(s) {unknown}")
        self.original = {name: params[name].detach().clone() for name in self.layers}
        self._params = {name: params[name] for name in self.layers}
        self.bits: dict[str, Bits] = dict.fromkeys(self.layers)
        self.quantizer = _check_choice(quantizer, QUANTIZERS, "quantizer")
        self.granularity = _check_choice(granularity, GRANULARITIES, "granularity")
        self._quantized: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._traces: dict[int, dict[str, float]] = {}
        self._deltas: dict[tuple, dict[str, float]] = {}
        self.batches = evalset.batches_for(front_end_of(self.model))  # the model's own features
        self.cache = PrefixCache(self.model, self.batches)
        self._trial_speakers = trial_speakers(evalset.pairs)  # for the EER intervals
        self._seen: dict[tuple, Scores] = {}  # scores of recent states, by state()
        self._intervals: dict[tuple, tuple] = {}  # and their panel intervals
        self.fp32 = self._rescore(changed=None)
        self._embedded = self._weights()  # what the prefix cache's last pass computed with
        self.current = _remember(self._seen, self.state(), self.fp32)

    # ---- quantized weights, cached ----
    def scheme(self, bits: Bits) -> str | None:
        """Which quantizer a layer at ``bits`` uses (``None`` at fp32).

        >>> live = LiveQuantizer.__new__(LiveQuantizer); live.quantizer = "static"
        >>> live.scheme(1), live.scheme(4), live.scheme(None)
        ('static', 'kmeans', None)
        """
        if bits is None:
            return None
        if self.quantizer in BINARY_SCHEMES:
            return self.quantizer if bits == 1 else "kmeans"
        return self.quantizer

    def quantized(self, layer: str, bits: Bits) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``layer``'s weight at ``bits`` (current quantizer and granularity) and its levels.

        Levels are the sorted values each group of weights can take, ``[groups, n_levels]``
        (``None`` at fp32). Cached per (layer, bits, scheme, granularity).
        """
        if layer not in self.original:
            raise ValueError(f"unknown layer {layer!r}; the layers are {self.layers}")
        _check_bits(bits, layer)
        scheme = self.scheme(bits)
        if scheme is None:
            return self.original[layer], None
        key = (layer, bits, scheme, self.granularity)
        if key not in self._quantized:
            weight = self.original[layer]
            with torch.no_grad():
                if scheme in BINARY_SCHEMES:
                    binarizer = Binarizer(weight, scheme, self.granularity)
                    quantized = binarizer(weight)
                    rows = quantized.reshape(binarizer.groups, -1)
                    levels = torch.stack([rows.min(dim=1).values, rows.max(dim=1).values], 1)
                else:
                    fitted = fit_quantizer(
                        weight, bits, granularity=self.granularity, method=scheme, name=layer
                    )
                    quantized, levels = fitted(weight), fitted.levels()
            self._quantized[key] = (quantized.detach(), levels.detach())
        return self._quantized[key]

    # ---- changing the state ----
    def set_bits(self, layer: str, bits: Bits) -> Scores:
        """Quantize one layer to ``bits`` (``None``: fp32) and re-score."""
        return self.set_bit_map({layer: bits})

    def set_bit_map(self, bit_map: Mapping[str, Bits]) -> Scores:
        """Set several layers' bits at once (one re-embedding) and re-score."""
        for layer, bits in bit_map.items():
            if layer not in self.bits:
                raise ValueError(f"unknown layer {layer!r}; the layers are {self.layers}")
            _check_bits(bits, layer)
        changed = [layer for layer, bits in bit_map.items() if bits != self.bits[layer]]
        for layer in changed:
            self._load(layer, bit_map[layer])
        if changed:
            self._update()
        return self.current

    def set_all(self, bits: Bits) -> Scores:
        """Every layer at ``bits``."""
        return self.set_bit_map(dict.fromkeys(self.layers, bits))

    def set_quantizer(self, quantizer: str, granularity: str | None = None) -> Scores:
        """Switch the quantizer (and granularity); the quantized layers are re-quantized."""
        self.quantizer = _check_choice(quantizer, QUANTIZERS, "quantizer")
        if granularity is not None:
            self.granularity = _check_choice(granularity, GRANULARITIES, "granularity")
        quantized = [layer for layer, bits in self.bits.items() if bits is not None]
        for layer in quantized:
            self._load(layer, self.bits[layer])
        if quantized:
            self._update()
        return self.current

    def state(self) -> tuple:
        """What the model computes now: quantizer, granularity and every layer's bits.

        >>> live = LiveQuantizer.__new__(LiveQuantizer); live.layers = ["a", "b"]
        >>> live.quantizer, live.granularity, live.bits = "kmeans", "tensor", {"a": 2, "b": None}
        >>> live.state()
        ('kmeans', 'tensor', 2, None)
        """
        return (self.quantizer, self.granularity, *(self.bits[layer] for layer in self.layers))

    def _weights(self) -> dict[str, tuple]:
        """What each layer's weight is now: (bits, scheme, granularity), fp32 as one."""
        return {layer: (bits, self.scheme(bits), bits and self.granularity)
                for layer, bits in self.bits.items()}

    def _update(self) -> None:
        """The scores of the state now: remembered if seen lately, else re-embedded from the
        first block whose weights differ from the prefix cache's last pass, and re-scored."""
        key = self.state()
        if key not in self._seen:
            weights = self._weights()
            changed = [layer for layer in self.layers if weights[layer] != self._embedded[layer]]
            _remember(self._seen, key, self._rescore(changed))
            self._embedded = weights
        self.current = self._seen[key]

    def _load(self, layer: str, bits: Bits) -> None:
        weight, _ = self.quantized(layer, bits)
        with torch.no_grad():
            self._params[layer].copy_(weight)
        self.bits[layer] = bits

    def _rescore(self, changed: Sequence[str] | None) -> Scores:
        with torch_threads(self.threads):
            embeddings = self.cache.embed(changed)
        result = self.evalset.score_embeddings(
            dict(zip(self.evalset.keys, embeddings, strict=True))
        )
        far, frr = det_curve(result["scores"], result["labels"])
        scores = np.asarray(result["scores"])
        return Scores(float(result["eer"]), float(result["min_dcf"]), far, frr, scores)

    # ---- size ----
    def layer_bytes(self, layer: str, bits: Bits) -> int:
        """Packed bytes of one layer: fp32, indices plus codebooks, or bits plus scales."""
        weight = self.original[layer]
        scheme = self.scheme(bits)
        if scheme is None:
            return weight.numel() * weight.element_size()
        groups = weight.shape[0] if self.granularity == "channel" and weight.dim() > 1 else 1
        if scheme in BINARY_SCHEMES:
            binarizer = Binarizer(weight, scheme, self.granularity)
            return (binarizer.storage_bits(weight.numel()) + 7) // 8
        return packed_layer_bytes(weight.numel(), bits, groups, scheme)

    def size_bytes(self, bit_map: Mapping[str, Bits] | None = None) -> int:
        """Bytes of the packed model: the layers as :meth:`layer_bytes`, every other parameter
        and buffer as stored (as :func:`svlab.quant.packed.model_size` counts them)."""
        bit_map = self.bits if bit_map is None else bit_map
        return self._rest_bytes() + sum(self.layer_bytes(n, bit_map[n]) for n in self.layers)

    def _rest_bytes(self) -> int:
        fp32_layers = sum(w.numel() * w.element_size() for w in self.original.values())
        return model_size(self.model, {}) - fp32_layers

    # ---- presets ----
    def delta_eer(self, bits: int, progress: Progress | None = None) -> dict[str, float]:
        """EER change from quantizing each layer alone to ``bits`` (the others fp32), as in
        arXiv:2407.08991's layer-wise study. The current bit map is restored afterwards.
        Cached per (bits, quantizer, granularity); ``progress`` hears of each layer done."""
        _check_bits(bits, "every layer")
        key = (bits, self.quantizer, self.granularity)
        total = len(self.layers) + 1  # each layer, then restoring the bit map
        if key not in self._deltas:
            saved = dict(self.bits)
            self.set_all(None)
            deltas, previous = {}, {}
            for done, layer in enumerate(self.layers, 1):
                deltas[layer] = self.set_bit_map({**previous, layer: bits}).eer - self.fp32.eer
                previous = {layer: None}
                _tell(progress, done, total)
            self.set_bit_map(saved)
            self._deltas[key] = deltas
        _tell(progress, total, total)
        return dict(self._deltas[key])

    def sensitivity_pick(
        self, bits: int, tolerance: float, progress: Progress | None = None
    ) -> dict[str, Bits]:
        """The bit map quantizing to ``bits`` every layer whose own EER change
        (:meth:`delta_eer`) is at most ``tolerance``; the sensitive layers stay fp32."""
        deltas = self.delta_eer(bits, progress)
        return {layer: bits if delta <= tolerance else None for layer, delta in deltas.items()}

    def hessian_table(
        self,
        choices: Sequence[int] = DEFAULT_CHOICES,
        n_samples: int = 8,
        progress: Progress | None = None,
    ) -> dict[str, dict[int, float]]:
        """HAWQ-v2 sensitivity ``tr(H) / n * ||Q_b(W) - W||^2`` per layer and bit width
        (:func:`svlab.quant.hessian.hessian_sensitivity`), with the Hessian of the embedding
        drift on the first ``HESSIAN_UTTERANCES`` evaluation utterances (double backward; where
        that is not finite, the same estimate as Gauss-Newton products,
        :func:`svlab.quant.hessian.gauss_newton_trace`) and this workbench's quantizer.
        ``progress`` hears of the trace, then of each layer's codebooks."""
        total = len(self.layers) + 1
        if n_samples not in self._traces:
            reference = clone_model(self.model)
            params = dict(reference.named_parameters())
            with torch.no_grad():
                for layer in self.layers:
                    params[layer].copy_(self.original[layer])
            batch = self.batches[0][:HESSIAN_UTTERANCES]
            chosen = {layer: params[layer] for layer in self.layers}
            with torch_threads(self.threads):
                traces = hutchinson_trace(embedding_distortion_loss(reference, batch), chosen,
                                          n_samples=n_samples)
                if not all(math.isfinite(t) for t in traces.values()):
                    # no second derivative at a dead channel before a standard deviation
                    # (CAM++'s pooling): the same estimate from first-order gradients
                    traces = gauss_newton_trace(reference, batch, chosen, n_samples=n_samples)
            self._traces[n_samples] = traces
        _tell(progress, 1, total)
        table = {}
        for done, layer in enumerate(self.layers, 2):
            table.update(
                hessian_sensitivity(
                    {layer: self.original[layer]},
                    self._traces[n_samples],
                    lambda weight, bits, layer=layer: self.quantized(layer, bits)[0],
                    choices,
                )
            )
            _tell(progress, done, total)
        return table

    def mixed_precision(
        self,
        budget_bytes: float,
        choices: Sequence[int] = DEFAULT_CHOICES,
        progress: Progress | None = None,
    ) -> dict[str, int]:
        """The bit map of least Hessian sensitivity whose packed model fits ``budget_bytes``
        (:func:`svlab.quant.allocate_bits` over :meth:`hessian_table`)."""
        sizes = {
            layer: {bits: 8 * self.layer_bytes(layer, bits) for bits in choices}
            for layer in self.layers
        }
        return allocate_bits(
            self.hessian_table(choices, progress=progress),
            sizes,
            budget_bytes - self._rest_bytes(),
            choices,
        )

    def summary(self) -> dict[str, float]:
        """The numbers of the panels: EER and minDCF (now and fp32), size in KB and ratio, the
        EER's 95% speaker-bootstrap interval (``eer_low``, ``eer_high``) and the paired
        difference from fp32 on the same trials (``delta``, ``delta_low``, ``delta_high``):
        speakers are the first part of each utterance's path, as in VoxCeleb."""
        fp32_size = self.size_bytes(dict.fromkeys(self.layers))
        size = self.size_bytes()
        key = self.state()
        if key not in self._intervals:
            trials = (self.evalset.labels, *self._trial_speakers)
            options = {"resamples": INTERVAL_RESAMPLES, "seed": 0}
            _remember(self._intervals, key, (
                eer_interval(self.current.scores, *trials, **options),
                eer_difference_interval(self.fp32.scores, self.current.scores, *trials, **options),
            ))
        (_, low, high), delta = self._intervals[key]
        return {
            "eer": self.current.eer,
            "eer_low": low,
            "eer_high": high,
            "delta": delta[0],
            "delta_low": delta[1],
            "delta_high": delta[2],
            "min_dcf": self.current.min_dcf,
            "fp32_eer": self.fp32.eer,
            "fp32_min_dcf": self.fp32.min_dcf,
            "size_kb": size / 1024,
            "fp32_size_kb": fp32_size / 1024,
            "ratio": fp32_size / size,
        }


def _remember(store: dict, key: tuple, value):
    """``store[key] = value``, the oldest entries dropped past ``SEEN_STATES``; ``value``."""
    store.pop(key, None)
    store[key] = value
    while len(store) > SEEN_STATES:
        del store[next(iter(store))]
    return value


def _tell(progress: Progress | None, done: int, total: int) -> None:
    if progress is not None:
        progress(done, total)


def _check_choice(value: str, choices: Sequence[str], what: str) -> str:
    if value not in choices:
        raise ValueError(f"{what} must be one of {list(choices)}, got {value!r}")
    return value


def _check_bits(bits: object, layer: str) -> None:
    if bits is None:
        return
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"bits for layer {layer!r} must be 1..8 or None (fp32), got {bits!r}")
