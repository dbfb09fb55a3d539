"""Quantize any model's weights to per-layer codebooks (k-means or uniform), trainable by STE.

How a quantized layer is represented
------------------------------------
``quantize_model`` returns a copy of the model in which each chosen weight (``conv.weight``,
``fc.weight``, ``lstm.weight_ih_l0`` ...) carries a ``torch.nn.utils.parametrize``
parametrization, a :class:`CodebookQuantizer`:

- the module keeps its class behaviour and forward signature; ``module.weight`` now *computes*
  the quantized weight from the latent fp32 tensor, stored at
  ``module.parametrizations.weight.original`` (a trainable ``nn.Parameter``);
- the quantizer holds ``codebook``, a ``[groups, 2**bits]`` fp32 ``nn.Parameter`` (``groups`` is
  1 for a per-tensor codebook, ``weight.shape[0]`` for per-row / per-output-channel ones), and
  ``bits`` and ``method`` ("kmeans" or "uniform"; a uniform one also ``grid``, each row's lowest
  level and step); ``fit_quantizer(weight, bits, ...)`` makes one, ``quantizer.fit(w)`` re-fits;
- the quantized weight is each latent value replaced by the nearest entry of its row's sorted
  codebook; :meth:`CodebookQuantizer.indices` gives those assignments (what a packed file stores),
  :meth:`CodebookQuantizer.levels` the sorted codebook;
- gradients pass straight through to the latent weight (STE), and to the codebook entries
  (averaged over the weights assigned to each: a sum would move an entry shared by thousands
  of weights thousands of times further than any weight) when ``codebook.requires_grad``, so
  fine-tuning is ordinary training of the returned model; :func:`requantize` re-fits the
  codebooks to the moved latent weights;
- :func:`quantizers` lists ``{parameter name: quantizer}``; :func:`dequantize` returns a plain
  model with the quantized values baked in; :func:`clone_model` copies a quantized model (a plain
  ``copy.deepcopy`` fails on an LSTM/GRU that has run a forward pass with gradients).

By default every weight of Linear, Conv1d/2d/3d, ConvTranspose and LSTM/GRU/RNN layers is
quantized; biases, normalisation layers, embeddings, other parameters and all buffers stay fp32.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase

import torch
from torch import nn
from torch.nn.utils import parametrize

from svlab.quant.kmeans import METHODS as KMEANS_METHODS
from svlab.quant.kmeans import check_finite, cluster_rows
from svlab.quant.uniform import levels_from, uniform_grid

QUANT_METHODS = ("kmeans", "uniform")
GRANULARITIES = ("tensor", "channel")
Patterns = str | Sequence[str] | None


class _StraightThrough(torch.autograd.Function):
    """Return ``quantized`` exactly; pass the gradient to both the latent and the quantized."""

    @staticmethod
    def forward(ctx, latent: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
        return quantized.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return grad, grad


class CodebookQuantizer(nn.Module):
    """Parametrization mapping a latent weight to the nearest entries of a codebook.

    Made empty (``groups`` rows of ``2**bits`` zeros), then fitted to a weight with :meth:`fit`.
    A uniform quantizer also keeps ``grid`` (``[groups, 2]``: each row's lowest level and step),
    from which its codebook is computed exactly.

    >>> q = CodebookQuantizer(groups=1, bits=2, method="kmeans")
    >>> with torch.no_grad():
    ...     _ = q.codebook.copy_(torch.tensor([[-1.0, 0.0, 1.0, 2.0]]))
    >>> q(torch.tensor([[0.4, 1.6], [-3.0, 0.6]])).tolist()
    [[0.0, 2.0], [-1.0, 1.0]]
    """

    def __init__(
        self, groups: int, bits: int, method: str = "kmeans", learn_codebook: bool = False
    ) -> None:
        super().__init__()
        _check_bits(bits, "a quantizer")
        if method not in QUANT_METHODS:
            raise ValueError(f"method must be one of {QUANT_METHODS}, got {method!r}")
        self.codebook = nn.Parameter(torch.zeros(groups, 2**bits), requires_grad=learn_codebook)
        if method == "uniform":
            self.register_buffer("grid", torch.zeros(groups, 2))
        else:
            self.grid = None
        self.bits = bits
        self.method = method

    def fit(self, latent: torch.Tensor, kmeans_method: str = "auto", name: str = "weight") -> None:
        """Set the codebook (and grid) from the weight ``latent`` (named ``name`` in errors)."""
        rows = latent.detach().float().reshape(self.codebook.shape[0], -1).cpu()
        check_finite(rows, name)
        with torch.no_grad():
            if self.method == "uniform":
                self.grid.copy_(uniform_grid(rows, 2**self.bits))
                self.codebook.copy_(levels_from(self.grid[:, 0], self.grid[:, 1], 2**self.bits))
            else:
                if kmeans_method not in KMEANS_METHODS:
                    raise ValueError(
                        f"kmeans_method must be one of {KMEANS_METHODS}, got {kmeans_method!r}"
                    )
                self.codebook.copy_(cluster_rows(rows, 2**self.bits, kmeans_method))

    @property
    def granularity(self) -> str:
        """``"tensor"`` for one codebook, ``"channel"`` for one per row of the weight."""
        return "tensor" if self.codebook.shape[0] == 1 else "channel"

    def levels(self) -> torch.Tensor:
        """The codebook, each row sorted ascending: ``[groups, 2**bits]``."""
        return self.codebook.sort(dim=1).values

    def indices(self, latent: torch.Tensor) -> torch.Tensor:
        """Index into :meth:`levels` of the entry nearest to each latent value: ``[groups, m]``."""
        levels = self.levels().detach()
        rows = latent.detach().reshape(levels.shape[0], -1).to(levels.dtype)
        midpoints = (levels[:, 1:] + levels[:, :-1]) / 2
        return torch.searchsorted(midpoints.contiguous(), rows.contiguous())

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        levels = self.levels()
        indices = self.indices(latent)
        if levels.requires_grad:  # each entry's gradient: the mean over its weights, not the sum
            ones = torch.ones_like(indices, dtype=levels.dtype)
            counts = torch.zeros_like(levels).scatter_add_(1, indices, ones).clamp(min=1)
            levels = levels.detach() + (levels - levels.detach()) / counts
        quantized = levels.gather(1, indices).reshape(latent.shape)
        return _StraightThrough.apply(latent, quantized.to(latent.dtype))

    def extra_repr(self) -> str:
        return f"bits={self.bits}, method={self.method}, granularity={self.granularity}"


def quantizable_names(model: nn.Module) -> list[str]:
    """Names of the weights quantized by default: Linear, Conv*, ConvTranspose*, RNN weights.

    >>> quantizable_names(nn.Sequential(nn.Conv1d(2, 4, 3), nn.BatchNorm1d(4), nn.Linear(4, 2)))
    ['0.weight', '2.weight']
    >>> quantizable_names(nn.LSTM(3, 5))
    ['weight_ih_l0', 'weight_hh_l0']
    """
    names = []
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        if isinstance(module, nn.Linear | nn.modules.conv._ConvNd):
            attrs = ["weight"]
        elif isinstance(module, nn.RNNBase):
            attrs = [a for a in module._flat_weights_names if a.startswith("weight_")]
        else:
            continue
        names += [prefix + attr for attr in attrs]
    return names


def _as_patterns(patterns: Patterns) -> list[str]:
    return [patterns] if isinstance(patterns, str) else list(patterns or [])


def _matches(pattern: str, name: str) -> bool:
    """A glob matches a parameter name, or the name of the module that holds it."""
    return fnmatchcase(name, pattern) or fnmatchcase(name.rpartition(".")[0], pattern)


def _check_bits(bits: object, where: str) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"bits for {where} must be an integer in 1..8, got {bits!r}")
    return bits


def bit_map(
    model: nn.Module,
    bits: int | Mapping[str, int | None],
    *,
    include: Patterns = None,
    exclude: Patterns = None,
) -> dict[str, int]:
    """Which weights ``quantize_model`` quantizes, and to how many bits.

    ``bits`` is one width for every chosen weight, or ``{pattern: bits}``: each weight takes
    the first pattern it matches (``None`` keeps it fp32), weights no pattern matches stay fp32.
    Patterns are globs (``*`` crosses dots) matched against a parameter's name
    (``"layer1.0.conv1.weight"``) or its module's (``"layer1.0.conv1"``). ``include`` limits the
    choice to matching weights, ``exclude`` removes matching ones. A pattern that matches no
    quantizable weight is an error, so typos do not pass silently.

    >>> net = nn.Sequential(nn.Conv1d(2, 4, 3), nn.Linear(4, 2))
    >>> bit_map(net, {"0": 8, "*": 4})
    {'0.weight': 8, '1.weight': 4}
    >>> bit_map(net, 4, exclude="1")
    {'0.weight': 4}
    >>> bit_map(net, {"conv*": 4})
    Traceback (most recent call last):
    ...
    ValueError: pattern 'conv*' matches no quantizable weight; they are: ['0.weight', '1.weight']
    """
    names = quantizable_names(model)
    if not names:
        raise ValueError(f"{type(model).__name__} has no Linear, Conv or RNN weight to quantize")

    def matching(pattern: str) -> list[str]:
        found = [n for n in names if _matches(pattern, n)]
        if not found:
            shown = names if len(names) <= 12 else names[:12] + ["..."]
            raise ValueError(
                f"pattern {pattern!r} matches no quantizable weight; they are: {shown}"
            )
        return found

    chosen = set(names)
    if include is not None:
        chosen = {n for p in _as_patterns(include) for n in matching(p)}
    for pattern in _as_patterns(exclude):
        chosen -= set(matching(pattern))
    if not isinstance(bits, Mapping):
        width = _check_bits(bits, "every weight")
        return {n: width for n in names if n in chosen}
    plan: dict[str, int] = {}
    decided: set[str] = set()
    for pattern, width in bits.items():
        if width is not None:
            _check_bits(width, f"pattern {pattern!r}")
        for name in matching(pattern):
            if name in decided:
                continue
            decided.add(name)
            if width is not None and name in chosen:
                plan[name] = width
    return {n: plan[n] for n in names if n in plan}


def fit_quantizer(
    weight: torch.Tensor,
    bits: int,
    *,
    granularity: str = "tensor",
    method: str = "kmeans",
    kmeans_method: str = "auto",
    name: str = "weight",
) -> CodebookQuantizer:
    """A quantizer for ``weight``: one codebook (``"tensor"``) or one per row (``"channel"``).

    >>> fit_quantizer(torch.tensor([0.0, 0.1, 0.9, 1.0]), 1).codebook.tolist()
    [[0.05000000074505806, 0.949999988079071]]
    >>> fit_quantizer(torch.tensor([0.0, 0.1, 0.9, 1.0]), 1, method="uniform").codebook.tolist()
    [[0.0, 1.0]]
    """
    _check_bits(bits, name)
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    groups = weight.shape[0] if granularity == "channel" and weight.dim() > 1 else 1
    quantizer = CodebookQuantizer(groups, bits, method)
    quantizer.fit(weight, kmeans_method, name)
    return quantizer.to(weight.device)


def clone_model(model: nn.Module) -> nn.Module:
    """A deep copy that is safe for quantized models, LSTM/GRU layers included.

    Two things make a plain ``copy.deepcopy`` unsafe here. An RNN caches the tensors of its last
    forward in ``_flat_weights``; for a parametrized weight, after a pass with gradients, those
    are non-leaf tensors that ``deepcopy`` refuses. And ``parametrize`` keeps the weight
    properties on a class made for each module, which a deep copy shares with the original, so
    adding or removing a parametrization on the copy would change the original; each copied
    module gets a class of its own.

    >>> lstm = quantize_model(nn.LSTM(3, 4), 2)
    >>> _ = lstm(torch.randn(5, 1, 3))
    >>> type(clone_model(lstm)).__name__
    'ParametrizedLSTM'
    """
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.RNNBase) and parametrize.is_parametrized(module):
                module._init_flat_weights()
    copied = copy.deepcopy(model)
    for module in copied.modules():
        if parametrize.is_parametrized(module):
            cls = type(module)
            namespace = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
            module.__class__ = type(cls.__name__, cls.__bases__, namespace)
    return copied


def quantize_model(
    model: nn.Module,
    bits: int | Mapping[str, int | None],
    *,
    granularity: str = "tensor",
    method: str = "kmeans",
    include: Patterns = None,
    exclude: Patterns = None,
    learn_codebook: bool | None = None,
    kmeans_method: str = "auto",
) -> nn.Module:
    """A copy of ``model`` with the chosen weights quantized (see the module docstring).

    ``bits``, ``include`` and ``exclude`` choose the weights as :func:`bit_map` does.
    ``granularity`` is ``"tensor"`` (one codebook per weight, as in arXiv:2406.05359) or
    ``"channel"`` (one per output channel / row). ``method`` is ``"kmeans"`` (optimal 1-D
    k-means levels, :func:`svlab.quant.kmeans_1d`) or ``"uniform"`` (evenly spaced from min to
    max). ``learn_codebook`` (default: true for k-means, false for uniform, whose levels must stay
    evenly spaced) lets fine-tuning move the codebook entries. The input model is not changed.

    >>> net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> q = quantize_model(net, 2)
    >>> [len(q[i].weight.unique()) <= 4 for i in (0, 2)], q[0].bias.equal(net[0].bias)
    ([True, True], True)
    """
    plan = bit_map(model, bits, include=include, exclude=exclude)
    if not plan:
        raise ValueError("no weight is chosen for quantization (check bits, include, exclude)")
    if learn_codebook is None:
        learn_codebook = method == "kmeans"
    quantized = clone_model(model)
    for name, width in plan.items():
        module_name, _, attr = name.rpartition(".")
        module = quantized.get_submodule(module_name)
        if parametrize.is_parametrized(module, attr):
            raise ValueError(f"{name} is already quantized; quantize the fp32 model instead")
        quantizer = fit_quantizer(
            getattr(module, attr),
            width,
            granularity=granularity,
            method=method,
            kmeans_method=kmeans_method,
            name=name,
        )
        quantizer.codebook.requires_grad_(learn_codebook)
        parametrize.register_parametrization(module, attr, quantizer)
    return quantized


def quantizers(model: nn.Module) -> dict[str, CodebookQuantizer]:
    """``{parameter name: quantizer}`` for every quantized weight of ``model``.

    >>> list(quantizers(quantize_model(nn.Sequential(nn.Linear(3, 3)), 1)))
    ['0.weight']
    """
    return parametrizations_of(model, CodebookQuantizer)


def parametrizations_of(model: nn.Module, kind: type[nn.Module]) -> dict[str, nn.Module]:
    """``{parameter name: parametrization}`` for every parametrization of type ``kind``.

    >>> net = quantize_model(nn.Sequential(nn.Linear(3, 3)), 1)
    >>> {name: type(p).__name__ for name, p in parametrizations_of(net, CodebookQuantizer).items()}
    {'0.weight': 'CodebookQuantizer'}
    """
    found = {}
    for module_name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for attr, chain in module.parametrizations.items():
            for parametrization in chain:
                if isinstance(parametrization, kind):
                    found[f"{module_name}.{attr}" if module_name else attr] = parametrization
    return found


def latent_weight(model: nn.Module, name: str) -> torch.Tensor:
    """The latent (unquantized, trainable) tensor behind the quantized weight ``name``.

    >>> net = quantize_model(nn.Sequential(nn.Linear(3, 3)), 1)
    >>> latent_weight(net, "0.weight").shape
    torch.Size([3, 3])
    """
    module_name, _, attr = name.rpartition(".")
    return model.get_submodule(module_name).parametrizations[attr].original


def requantize(model: nn.Module, kmeans_method: str = "auto") -> nn.Module:
    """Re-fit every codebook to the current latent weights (in place), e.g. after fine-tuning.

    >>> net = quantize_model(nn.Sequential(nn.Linear(4, 4)), 1)
    >>> with torch.no_grad():
    ...     _ = latent_weight(net, "0.weight").mul_(10)
    >>> _ = requantize(net); bool(net[0].weight.abs().max() > 1)
    True
    """
    for name, quantizer in quantizers(model).items():
        quantizer.fit(latent_weight(model, name), kmeans_method, name)
    return model


def dequantize(model: nn.Module) -> nn.Module:
    """A plain copy of a quantized model, its weights fixed to their quantized values.

    >>> net = quantize_model(nn.Sequential(nn.Linear(4, 4)), 1)
    >>> plain = dequantize(net)
    >>> quantizers(plain), plain[0].weight.equal(net[0].weight)
    ({}, True)
    """
    plain = clone_model(model)
    for name in quantizers(plain):
        module_name, _, attr = name.rpartition(".")
        parametrize.remove_parametrizations(
            plain.get_submodule(module_name), attr, leave_parametrized=True
        )
    return plain
