"""Mixed-precision bit allocation: the bit map of least total sensitivity within a size budget."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from torch import nn

from svlab.quant.packed import model_size, packed_layer_bytes
from svlab.quant.quantize import Patterns, bit_map, quantize_model

DEFAULT_CHOICES = (1, 2, 3, 4, 6, 8)
CODEBOOK_ENTRY_BITS = 32  # one fp32 centroid


class BudgetError(ValueError):
    """The size budget is below the smallest model the bit choices can make."""


def layer_size_bits(n_params: int, bits: int, n_codebooks: int = 1) -> int:
    """Storage of one k-means-quantized layer in bits: indices plus fp32 codebooks.

    ``n_codebooks`` is 1 for a per-tensor codebook, the number of output channels for
    per-channel codebooks. A codebook holds ``2**bits`` centroids of 32 bits each.

    >>> layer_size_bits(1000, 4)          # 4000 index bits + 16 centroids * 32 bits
    4512
    >>> layer_size_bits(1000, 4, n_codebooks=10)
    9120
    """
    if n_params < 1:
        raise ValueError(f"a layer needs at least one parameter, got {n_params}")
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    return bits * n_params + n_codebooks * (2**bits) * CODEBOOK_ENTRY_BITS


def _size_table(
    layer: str, size: int | Mapping[int, int], choices: Sequence[int]
) -> dict[int, int]:
    if isinstance(size, Mapping):
        missing = [b for b in choices if b not in size]
        if missing:
            raise ValueError(f"sizes[{layer!r}] gives no size for bits {missing}")
        table = {b: int(size[b]) for b in choices}
        bad = {b: s for b, s in table.items() if s < 0}
        if bad:
            raise ValueError(f"sizes[{layer!r}] has negative sizes {bad}")
        return table
    return {b: layer_size_bits(int(size), b) for b in choices}


def _check_inputs(
    sensitivity: Mapping[str, Mapping[int, float]],
    sizes: Mapping[str, int | Mapping[int, int]],
    choices: Sequence[int],
) -> None:
    if not sizes:
        raise ValueError("sizes names no layer: nothing to allocate bits to")
    if not choices:
        raise ValueError("choices is empty: give at least one bit width")
    bad_bits = [b for b in choices if not (isinstance(b, int) and 1 <= b <= 8)]
    if bad_bits:
        raise ValueError(f"bit choices must be integers in 1..8, got {bad_bits}")
    if len(set(choices)) != len(choices):
        raise ValueError(f"bit choices repeat a value: {list(choices)}")
    unknown = sorted(set(sensitivity) - set(sizes))
    if unknown:
        raise ValueError(f"sensitivity names layers that sizes lacks: {unknown}")
    for layer in sizes:
        if layer not in sensitivity:
            raise ValueError(f"no sensitivity for layer {layer!r}")
        row = sensitivity[layer]
        missing = [b for b in choices if b not in row]
        if missing:
            raise ValueError(f"sensitivity[{layer!r}] has no value for bits {missing}")
        bad = {b: row[b] for b in choices if not math.isfinite(float(row[b]))}
        if bad:
            raise ValueError(f"sensitivity[{layer!r}] is not finite: {bad}")


def allocate_bits(
    sensitivity: Mapping[str, Mapping[int, float]],
    sizes: Mapping[str, int | Mapping[int, int]],
    budget: float,
    choices: Sequence[int] = DEFAULT_CHOICES,
) -> dict[str, int]:
    """The bit width per layer minimising total sensitivity with total size at most ``budget``.

    ``sensitivity[layer][bits]`` is the cost of quantizing ``layer`` to ``bits`` (for example a
    Hessian-trace estimate or a measured loss increase); costs are assumed to add across layers.
    ``sizes[layer]`` is the layer's parameter count (its size is then
    :func:`layer_size_bits`, per-tensor codebook included) or a ``{bits: size in bits}`` map.
    ``budget`` is in **bytes** and covers only these layers.

    This is a multiple-choice knapsack, solved exactly by dynamic programming over layers that
    keeps only the Pareto frontier of partial solutions (no other prefix is both smaller and
    cheaper), pruning prefixes that cannot be completed within the budget. Ties in cost go to
    the smaller model.

    >>> sens = {"a": {2: 5.0, 4: 1.0}, "b": {2: 0.5, 4: 0.1}}
    >>> sizes = {"a": {2: 200, 4: 400}, "b": {2: 200, 4: 400}}     # in bits
    >>> allocate_bits(sens, sizes, budget=75, choices=(2, 4))      # 600 bits fit
    {'a': 4, 'b': 2}
    >>> allocate_bits(sens, sizes, budget=40, choices=(2, 4))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    svlab.quant.allocate.BudgetError: budget 40 bytes is below the smallest possible size, 50 by...
    """
    choices = tuple(choices)
    _check_inputs(sensitivity, sizes, choices)
    layers = list(sizes)
    tables = [_size_table(layer, sizes[layer], choices) for layer in layers]
    option_sizes = np.array([[t[b] for b in choices] for t in tables], dtype=np.int64)
    option_costs = np.array(
        [[float(sensitivity[layer][b]) for b in choices] for layer in layers], dtype=np.float64
    )
    if not math.isfinite(budget):
        raise ValueError(f"budget must be a finite number of bytes, got {budget}")
    budget_bits = math.floor(budget * 8)
    smallest = option_sizes.min(axis=1)
    if smallest.sum() > budget_bits:
        raise BudgetError(
            f"budget {budget:g} bytes is below the smallest possible size, "
            f"{smallest.sum() / 8:g} bytes (every layer at its smallest bit width)"
        )
    rest = np.concatenate([np.cumsum(smallest[::-1])[::-1], [0]])  # least size of layers i..

    frontier_size = np.zeros(1, dtype=np.int64)
    frontier_cost = np.zeros(1, dtype=np.float64)
    back: list[tuple[np.ndarray, np.ndarray]] = []
    n_choices = len(choices)
    for i in range(len(layers)):
        size = (frontier_size[:, None] + option_sizes[i][None, :]).ravel()
        cost = (frontier_cost[:, None] + option_costs[i][None, :]).ravel()
        parent = np.repeat(np.arange(len(frontier_size)), n_choices)
        choice = np.tile(np.arange(n_choices), len(frontier_size))
        fits = size + rest[i + 1] <= budget_bits
        size, cost, parent, choice = size[fits], cost[fits], parent[fits], choice[fits]
        order = np.lexsort((cost, size))  # by size, then cost
        size, cost, parent, choice = size[order], cost[order], parent[order], choice[order]
        best_before = np.minimum.accumulate(np.concatenate([[np.inf], cost[:-1]]))
        pareto = cost < best_before  # strictly cheaper than every smaller prefix
        frontier_size, frontier_cost = size[pareto], cost[pareto]
        back.append((parent[pareto], choice[pareto]))

    index = int(np.argmin(frontier_cost))  # frontier costs fall strictly: the last entry
    bit_map: dict[str, int] = {}
    for i in range(len(layers) - 1, -1, -1):
        parent, choice = back[i]
        bit_map[layers[i]] = choices[int(choice[index])]
        index = int(parent[index])
    return {layer: bit_map[layer] for layer in layers}


def bit_map_size(
    bit_map: Mapping[str, int], sizes: Mapping[str, int | Mapping[int, int]]
) -> float:
    """Total size in bytes of the layers of ``bit_map`` (``sizes`` as in :func:`allocate_bits`).

    >>> bit_map_size({"a": 4, "b": 2}, {"a": {2: 200, 4: 400}, "b": {2: 200, 4: 400}})
    75.0
    >>> bit_map_size({"c": 4}, {"a": 10})
    Traceback (most recent call last):
    ...
    ValueError: bit map names layer 'c', which sizes lacks (known: ['a'])
    """
    if not bit_map:
        raise ValueError("bit map names no layer")
    total = 0
    for layer, bits in bit_map.items():
        if layer not in sizes:
            raise ValueError(
                f"bit map names layer {layer!r}, which sizes lacks (known: {list(sizes)})"
            )
        total += _size_table(layer, sizes[layer], (bits,))[bits]
    return total / 8


def total_sensitivity(
    bit_map: Mapping[str, int], sensitivity: Mapping[str, Mapping[int, float]]
) -> float:
    """The sum of ``sensitivity[layer][bits]`` over a bit map: what :func:`allocate_bits` minimises.

    >>> total_sensitivity({"a": 4, "b": 2}, {"a": {2: 5.0, 4: 1.0}, "b": {2: 0.5, 4: 0.1}})
    1.5
    """
    if not bit_map:
        raise ValueError("bit map names no layer")
    missing = [layer for layer in bit_map if layer not in sensitivity]
    if missing:
        raise ValueError(f"no sensitivity for layers {missing}")
    return float(sum(sensitivity[layer][bits] for layer, bits in bit_map.items()))


def layer_sizes(
    model: nn.Module,
    choices: Sequence[int] = DEFAULT_CHOICES,
    *,
    granularity: str = "tensor",
    method: str = "kmeans",
    include: Patterns = None,
    exclude: Patterns = None,
) -> dict[str, dict[int, int]]:
    """``{weight name: {bits: size in bits}}`` of the model's quantizable weights, packed.

    Sizes are :func:`svlab.quant.packed.packed_layer_bytes` times 8 (whole bytes per layer,
    codebooks included), so budgets agree exactly with :func:`svlab.quant.model_size`.

    >>> layer_sizes(nn.Sequential(nn.Linear(100, 10)), (2, 4))
    {'0.weight': {2: 2128, 4: 4512}}
    """
    chosen = bit_map(model, 8, include=include, exclude=exclude)
    weights = dict(model.named_parameters())
    sizes = {}
    for name in chosen:
        weight = weights[name]
        groups = weight.shape[0] if granularity == "channel" and weight.dim() > 1 else 1
        sizes[name] = {
            b: 8 * packed_layer_bytes(weight.numel(), b, groups, method) for b in choices
        }
    return sizes


def fp32_rest_bytes(model: nn.Module, names: Sequence[str]) -> int:
    """Bytes of every parameter and buffer of ``model`` except the weights ``names``.

    >>> fp32_rest_bytes(nn.Sequential(nn.Linear(100, 10)), ["0.weight"])  # the bias
    40
    """
    return sum(
        t.numel() * t.element_size() for k, t in model.state_dict().items() if k not in set(names)
    )


def plan_bits(
    model: nn.Module,
    sensitivity: Mapping[str, Mapping[int, float]],
    size: float,
    choices: Sequence[int] = DEFAULT_CHOICES,
    *,
    granularity: str = "tensor",
    method: str = "kmeans",
) -> dict[str, int]:
    """The bit map of ``model``'s weights in ``sensitivity`` whose whole packed model fits ``size``.

    ``size`` is in bytes and counts the whole model as :func:`svlab.quant.model_size` does
    (packed weights, plus every bias, normalisation parameter and buffer at full precision), so
    ``model_size(model, plan_bits(model, s, size)) <= size``.

    >>> net = nn.Sequential(nn.Linear(100, 10), nn.ReLU(), nn.Linear(10, 2))
    >>> sens = {"0.weight": {2: 1.0, 8: 0.0}, "2.weight": {2: 9.0, 8: 0.0}}
    >>> plan_bits(net, sens, size=1400, choices=(2, 8))  # 8-bit codebooks cost 1 KB each
    {'0.weight': 2, '2.weight': 8}
    """
    names = list(sensitivity)
    if not names:
        raise ValueError("sensitivity names no layer")
    sizes = layer_sizes(model, choices, granularity=granularity, method=method, include=names)
    rest = fp32_rest_bytes(model, names)
    try:
        return allocate_bits(sensitivity, sizes, size - rest, choices)
    except BudgetError as err:
        smallest = sum(min(s.values()) for s in sizes.values()) // 8 + rest
        raise BudgetError(
            f"model size {size:g} bytes is below the smallest possible, {smallest} bytes "
            f"({rest} of them fp32 biases, normalisation and buffers)"
        ) from err


def _metric(result: Any, metric: str) -> float:
    return float(result[metric] if isinstance(result, Mapping) else result)


def mixed_vs_uniform(
    model: nn.Module,
    sensitivity: Mapping[str, Mapping[int, float]],
    eval_fn: Callable[[nn.Module], Any],
    bits: Sequence[int] = DEFAULT_CHOICES,
    *,
    extra_sizes: Sequence[float] = (),
    choices: Sequence[int] = DEFAULT_CHOICES,
    granularity: str = "tensor",
    method: str = "kmeans",
    metric: str = "eer",
) -> list[dict]:
    """Uniform precision at each of ``bits`` beside mixed precision at the same model size.

    For every width ``b``: the model with every weight of ``sensitivity`` at ``b`` bits, and the
    mixed model :func:`plan_bits` chooses for that uniform model's size (never larger), both
    scored by ``eval_fn`` (a number, or a dict holding ``metric``, as ``EvalSet.score`` returns).
    ``extra_sizes`` (bytes) add mixed models at sizes no uniform width has. No fine-tuning.
    One row per model: ``scheme``, ``bits`` (the width, or the weight-averaged bits),
    ``size_bytes``, ``metric`` value, and the ``bit_map``.

    >>> import torch
    >>> _ = torch.manual_seed(0); net = nn.Sequential(nn.Linear(8, 32), nn.Linear(32, 2))
    >>> x = torch.randn(64, 8); y = net(x).detach()
    >>> sens = {"0.weight": {1: 9.0, 2: 1.0}, "1.weight": {1: 0.1, 2: 0.05}}
    >>> mse = lambda m: float(((m(x) - y) ** 2).mean().detach())
    >>> rows = mixed_vs_uniform(net, sens, mse, (2,), extra_sizes=(232,), choices=(1, 2),
    ...                         metric="mse")
    >>> for r in rows:
    ...     print(r["scheme"], r["size_bytes"], r["bit_map"], r["mse"] < 0.1)
    uniform 248 {'0.weight': 2, '1.weight': 2} True
    mixed 248 {'0.weight': 2, '1.weight': 2} True
    mixed 232 {'0.weight': 2, '1.weight': 1} True
    """
    names = list(sensitivity)
    weights = dict(model.named_parameters())
    numel = {name: weights[name].numel() for name in names}

    def row(scheme: str, plan: dict[str, int]) -> dict:
        quantized = quantize_model(model, plan, granularity=granularity, method=method)
        average = sum(plan[n] * numel[n] for n in plan) / sum(numel.values())
        return {
            "scheme": scheme,
            "bits": average,
            "size_bytes": model_size(quantized),
            metric: _metric(eval_fn(quantized), metric),
            "bit_map": plan,
        }

    def plan(size: float) -> dict[str, int]:
        return plan_bits(model, sensitivity, size, choices, granularity=granularity, method=method)

    rows = []
    for width in bits:
        uniform = {name: width for name in names}
        rows.append(row("uniform", uniform))
        target = rows[-1]["size_bytes"]
        rows.append(row("mixed", plan(target)))
    for size in extra_sizes:
        rows.append(row("mixed", plan(size)))
    return rows
