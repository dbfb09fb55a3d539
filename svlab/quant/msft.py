"""Multi-stage fine-tuning (MSFT): quantize layer groups one stage at a time, fine-tuning between.

arXiv:2406.05359 quantizes a mixed-precision network progressively in a chosen order instead of
all at once: after each stage the layers still at full precision are fine-tuned to make up for
the error just introduced, so the damage of every stage is repaired before the next. Here a
stage quantizes its layers to their bits in the bit map (``quantize_model``), then the model
is trained with the layers quantized so far frozen (``freeze_quantized=True``, the still
full-precision weights, biases and normalisation layers learn) or trained through the
straight-through estimator (``freeze_quantized=False``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from svlab.quant.quantize import latent_weight, quantizable_names, quantize_model, quantizers

ORDERS = ("shallow_to_deep", "deep_to_shallow", "sensitive_first", "sensitive_last")
Trainer = Callable[[Any, nn.Module], Any]


def check_bit_map(model: nn.Module, bit_map: Mapping[str, int]) -> dict[str, int]:
    """Check that ``bit_map`` names quantizable weights of ``model`` with bits in 1..8.

    >>> net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    >>> check_bit_map(net, {"1.weight": 4})
    {'1.weight': 4}
    >>> check_bit_map(net, {})
    Traceback (most recent call last):
    ...
    ValueError: the bit map names no layer; quantizable weights are: ['0.weight', '1.weight']
    """
    names = quantizable_names(model)
    if not bit_map:
        raise ValueError(f"the bit map names no layer; quantizable weights are: {names}")
    unknown = [name for name in bit_map if name not in names]
    if unknown:
        raise ValueError(f"the bit map names {unknown}, not quantizable weights of the model")
    for name, bits in bit_map.items():
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
            raise ValueError(f"bits for {name} must be an integer in 1..8, got {bits!r}")
    return dict(bit_map)


def make_stages(
    bit_map: Mapping[str, int],
    order: str = "shallow_to_deep",
    n_stages: int = 4,
    sensitivity: Mapping[str, Mapping[int, float]] | None = None,
) -> list[list[str]]:
    """Split the layers of ``bit_map`` into ``n_stages`` groups, quantized in ``order``.

    ``order``: ``"shallow_to_deep"`` (the bit map's order, which :func:`quantize_model` and
    :func:`svlab.quant.allocate_bits` keep as the model's), ``"deep_to_shallow"``,
    ``"sensitive_first"`` / ``"sensitive_last"`` (by ``sensitivity[layer][bits]`` at the layer's
    bits). Groups hold consecutive layers of that order, their sizes differing by at most one.

    >>> bits = {"a": 2, "b": 4, "c": 2}
    >>> make_stages(bits, "deep_to_shallow", 2)
    [['c', 'b'], ['a']]
    >>> make_stages(bits, "sensitive_first", 3, {"a": {2: 0.1}, "b": {4: 0.5}, "c": {2: 0.3}})
    [['b'], ['c'], ['a']]
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    layers = list(bit_map)
    if not layers:
        raise ValueError("the bit map names no layer")
    if not 1 <= n_stages <= len(layers):
        raise ValueError(f"n_stages must be in 1..{len(layers)} (one per layer at most)")
    if order == "deep_to_shallow":
        layers.reverse()
    elif order.startswith("sensitive"):
        if sensitivity is None:
            raise ValueError(f"order {order!r} needs the sensitivity table")
        missing = [layer for layer in layers if bit_map[layer] not in sensitivity.get(layer, {})]
        if missing:
            raise ValueError(f"no sensitivity at the mapped bits for layers {missing}")
        layers.sort(
            key=lambda layer: sensitivity[layer][bit_map[layer]],
            reverse=order == "sensitive_first",
        )
    base, extra = divmod(len(layers), n_stages)
    stages, start = [], 0
    for i in range(n_stages):
        end = start + base + (i < extra)
        stages.append(layers[start:end])
        start = end
    return stages


def check_stages(bit_map: Mapping[str, int], stages: Sequence[Sequence[str]]) -> None:
    """Every layer of ``bit_map`` in exactly one stage, and nothing else.

    >>> check_stages({"a": 2, "b": 4}, [["a"], ["a", "b"]])
    Traceback (most recent call last):
    ...
    ValueError: layer 'a' is in stage 1 and again in stage 2
    >>> check_stages({"a": 2, "b": 4}, [["a"]])
    Traceback (most recent call last):
    ...
    ValueError: the stages leave out layers of the bit map: ['b']
    """
    if isinstance(stages, str) or not stages:
        raise ValueError("stages must be a non-empty list of lists of layer names")
    seen: dict[str, int] = {}
    for number, stage in enumerate(stages, start=1):
        if isinstance(stage, str) or not stage:
            raise ValueError(f"stage {number} must be a non-empty list of layer names")
        for layer in stage:
            if layer not in bit_map:
                raise ValueError(f"stage {number} names {layer!r}, which the bit map lacks")
            if layer in seen:
                raise ValueError(
                    f"layer {layer!r} is in stage {seen[layer]} and again in stage {number}"
                )
            seen[layer] = number
    left_out = [layer for layer in bit_map if layer not in seen]
    if left_out:
        raise ValueError(f"the stages leave out layers of the bit map: {left_out}")


def _freeze_quantized(model: nn.Module) -> None:
    for name, quantizer in quantizers(model).items():
        latent_weight(model, name).requires_grad_(False)
        quantizer.codebook.requires_grad_(False)


def msft(
    model: nn.Module,
    bit_map: Mapping[str, int],
    stages: Sequence[Sequence[str]] | str,
    train_cfg: Any,
    *,
    n_stages: int = 4,
    sensitivity: Mapping[str, Mapping[int, float]] | None = None,
    freeze_quantized: bool = True,
    granularity: str = "tensor",
    method: str = "kmeans",
    trainer: Trainer,
    eval_fn: Callable[[nn.Module], Any] | None = None,
) -> tuple[nn.Module, list[dict]]:
    """Quantize ``model`` to ``bit_map`` stage by stage, fine-tuning after each stage.

    ``stages`` is a list of lists of weight names covering the bit map exactly once, or an
    order name for :func:`make_stages` (with ``n_stages`` and ``sensitivity``).
    ``trainer(train_cfg, model)`` fine-tunes the model in place: a
    :func:`svlab.quant.finetune.fine_tuner` (``svlab.train`` runs, ``train_cfg`` the steps per
    stage), ``lambda cfg, m: svlab.train.train(cfg, model=m)`` or any loop of your own.
    ``eval_fn(model)``, if given, is recorded after every stage. Returns the quantized model
    and one record per stage: its number, layers, bits, how many weights were quantized so
    far, and the evaluation.

    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> x, y = torch.randn(32, 4), torch.randn(32, 2)
    >>> def fit(steps, model):                   # plain gradient descent on what is trainable
    ...     params = [p for p in model.parameters() if p.requires_grad]
    ...     for _ in range(steps):
    ...         grads = torch.autograd.grad(((model(x) - y) ** 2).mean(), params)
    ...         with torch.no_grad():
    ...             for p, g in zip(params, grads):
    ...                 p -= 0.1 * g
    >>> q, history = msft(net, {"0.weight": 2, "2.weight": 4}, "deep_to_shallow", 5,
    ...                   n_stages=2, trainer=fit)
    >>> [h["layers"] for h in history], sorted(quantizers(q))
    ([['2.weight'], ['0.weight']], ['0.weight', '2.weight'])
    """
    bit_map = check_bit_map(model, bit_map)
    if isinstance(stages, str):
        stages = make_stages(bit_map, stages, n_stages, sensitivity)
    check_stages(bit_map, stages)
    history = []
    quantized_so_far = 0
    for number, stage in enumerate(stages, start=1):
        model = quantize_model(
            model, {name: bit_map[name] for name in stage}, granularity=granularity, method=method
        )
        quantized_so_far += len(stage)
        if freeze_quantized:
            _freeze_quantized(model)
        result = trainer(train_cfg, model)
        if isinstance(result, nn.Module):
            model = result
        record = {
            "stage": number,
            "layers": list(stage),
            "bits": [bit_map[name] for name in stage],
            "quantized_layers": quantized_so_far,
        }
        if eval_fn is not None:
            record["eval"] = eval_fn(model)
        history.append(record)
    return model, history
