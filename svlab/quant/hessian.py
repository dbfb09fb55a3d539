"""Layer sensitivity tables for bit allocation: Hessian trace (HAWQ-v2, Hutchinson), or measured.

The loss increase from perturbing a layer's weights ``W`` by ``dW`` is, to second order at a
trained minimum, ``dW^T H dW / 2``. HAWQ-v2 replaces the layer's Hessian block ``H`` by its
average eigenvalue ``tr(H) / n`` so that quantizing the layer to ``b`` bits costs about
``tr(H) / n * ||Q_b(W) - W||^2``. The trace comes from Hutchinson's estimator,
``tr(H) = E[v^T H v]`` over Rademacher vectors ``v``, each term one Hessian-vector product.
Each layer gets its own products (``v`` nonzero on that layer only), so an estimate sees only
its layer's diagonal block: for a positive semi-definite Hessian every sample is >= 0. One
product over the whole model would give every layer's estimate at once (``blockwise=False``),
but the cross-layer blocks, zero on average, add so much variance that with a few samples a
layer's estimate can come out negative (as seen on the tutorial ResNet).

The default sensitivity for :func:`svlab.quant.allocate_bits` is this Hessian estimate
(:func:`model_hessian_sensitivity`): arXiv:2406.05359 guides its mixed precision by the Hessian;
its cost is a fixed number of Hessian-vector products whatever the number of layers and bit
widths, while measuring costs one evaluation per layer *and* width; and a second-order model
is additive over layers, which is what the knapsack assumes. :func:`measured_sensitivity`
(one layer at a time, :func:`svlab.quant.layer_sensitivity`) is the check beside it, exact for
each layer alone; benchmarks/bench_mixed.py compares the two.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from svlab.models.reversible import ReversibleSequence
from svlab.quant.quantize import quantize_model, quantizers

Quantizer = Callable[[Tensor, int], Tensor]


def hutchinson_trace(
    loss_fn: Callable[[], Tensor],
    params: Mapping[str, Tensor],
    n_samples: int = 32,
    seed: int = 0,
    blockwise: bool = True,
) -> dict[str, float]:
    """Estimate the trace of each parameter's diagonal Hessian block of ``loss_fn()``.

    ``loss_fn`` is a closure returning a scalar loss computed from ``params``; ``n_samples``
    Rademacher vectors are drawn (from a generator seeded with ``seed``). ``blockwise``: one
    Hessian-vector product per parameter and sample (``v_l^T H_ll v_l``, no cross-layer
    variance), or one per sample over all parameters (cheaper, noisier). For a quadratic
    ``sum(d * w**2) / 2`` the Hessian is ``diag(d)`` and every sample is exact:

    >>> w = torch.ones(3, requires_grad=True)
    >>> d = torch.tensor([1.0, 2.0, 3.0])
    >>> hutchinson_trace(lambda: (d * w**2).sum() / 2, {"w": w}, n_samples=2)
    {'w': 6.0}
    """
    _check_request(params, n_samples)
    frozen = [name for name, p in params.items() if not p.requires_grad]
    if frozen:
        raise ValueError(f"parameters {frozen} do not require grad: no Hessian to estimate")
    names, tensors = list(params), list(params.values())
    loss = loss_fn()
    if loss.dim() != 0:
        raise ValueError(f"loss_fn must return a scalar, got shape {tuple(loss.shape)}")
    grads = torch.autograd.grad(loss, tensors, create_graph=True, allow_unused=True)
    unused = [n for n, g in zip(names, grads, strict=True) if g is None]
    if unused:
        raise ValueError(f"the loss does not depend on parameters {unused}")
    _check_twice_differentiable(grads)
    totals = torch.zeros(len(tensors), dtype=torch.float64)
    for vs in _rademacher(tensors, n_samples, seed):
        if blockwise:
            hvs = [
                torch.autograd.grad(g, t, grad_outputs=v, retain_graph=True, allow_unused=True)[0]
                for g, t, v in zip(grads, tensors, vs, strict=True)
            ]
        else:
            hvs = torch.autograd.grad(
                grads, tensors, grad_outputs=vs, retain_graph=True, allow_unused=True
            )
        for i, (v, hv) in enumerate(zip(vs, hvs, strict=True)):
            if hv is not None:  # None: the gradient does not depend on the layer (zero block)
                totals[i] += (v * hv).sum().double().cpu()
    return {name: float(t / n_samples) for name, t in zip(names, totals, strict=True)}


def _check_request(params: Mapping[str, Tensor], n_samples: int) -> None:
    if n_samples < 1:
        raise ValueError(f"n_samples must be at least 1, got {n_samples}")
    if not params:
        raise ValueError("no parameters given to estimate Hessian traces for")


def _rademacher(tensors: Sequence[Tensor], n_samples: int, seed: int) -> Iterator[list[Tensor]]:
    """``n_samples`` draws of one +-1 vector per tensor, shaped like it, from a generator seeded
    with ``seed``: both trace estimators draw these, in this order, so they agree."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(n_samples):
        yield [(torch.randint(0, 2, t.shape, generator=generator) * 2 - 1).to(t.device, t.dtype)
               for t in tensors]


def _check_twice_differentiable(grads: Sequence[Tensor]) -> None:
    """Refuse gradients whose graph passes through a once-differentiable autograd function.

    Such a function (a memory-saving reversible block, a checkpointed segment) cuts the graph
    of its gradients: Hessian-vector products would come back empty and read as zero Hessian
    blocks, silently, for every layer before it.
    """
    seen, stack = set(), [g.grad_fn for g in grads if g.grad_fn is not None]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__ == "Error":  # what @once_differentiable puts in the graph
            raise ValueError(
                "the loss's gradient passes through a function without second derivatives "
                "(@once_differentiable: e.g. a memory-saving reversible block); switch it off "
                "for the Hessian, e.g. svlab.models.reversible.set_memory_saving(model, False)"
            )
        stack.extend(next_node for next_node, _ in node.next_functions)


def hessian_sensitivity(
    params: Mapping[str, Tensor],
    traces: Mapping[str, float],
    quantizer: Quantizer,
    choices: Sequence[int],
) -> dict[str, dict[int, float]]:
    """HAWQ-v2 sensitivity ``tr(H) / n * ||Q_b(W) - W||^2`` per layer and bit width.

    ``quantizer(weight, bits)`` returns the quantized weight (for example k-means centroids).
    The table feeds :func:`svlab.quant.allocate_bits`.

    >>> w = torch.tensor([0.0, 1.0, 2.0, 4.0])
    >>> rounding = lambda t, bits: t.round() if bits > 1 else torch.full_like(t, t.mean())
    >>> hessian_sensitivity({"w": w}, {"w": 2.0}, rounding, (1, 2))
    {'w': {1: 4.375, 2: 0.0}}
    """
    table: dict[str, dict[int, float]] = {}
    for name, weight in params.items():
        if name not in traces:
            raise ValueError(f"no Hessian trace for layer {name!r}")
        w = weight.detach()
        per_weight = traces[name] / w.numel()
        table[name] = {
            bits: per_weight * float(((quantizer(w, bits) - w) ** 2).sum()) for bits in choices
        }
    return table


def embedding_distortion_loss(
    model: nn.Module, features: Tensor
) -> Callable[[], Tensor]:
    """A label-free loss for Hessians of a speaker model: embedding drift from its own output.

    ``L(w) = mean over the batch of ||f_w(x) - f_w0(x)||^2`` with ``f_w0(x)`` recorded now. At
    ``w0`` it is zero with zero gradient, and its Hessian is the Gauss-Newton matrix
    ``2 J^T J / B`` (positive semi-definite), so the traces are never negative and the
    second-order model of quantization damage is exact to that order. It needs no classifier
    head or speaker labels. The model is put in eval mode (BatchNorm statistics stay fixed).

    >>> lin = nn.Linear(2, 1, bias=False)
    >>> x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    >>> loss = embedding_distortion_loss(lin, x)
    >>> hutchinson_trace(loss, {"w": lin.weight}, n_samples=4)   # 2 * (1 + 4) / 2
    {'w': 5.0}
    """
    model.eval()
    with torch.no_grad():
        reference = model(features).detach()

    def loss() -> Tensor:
        return ((model(features) - reference) ** 2).sum(dim=-1).mean()

    return loss


def gauss_newton_trace(
    model: nn.Module,
    features: Tensor,
    params: Mapping[str, Tensor],
    n_samples: int = 16,
    seed: int = 0,
    chunk: int = 32,
) -> dict[str, float]:
    """:func:`hutchinson_trace` of :func:`embedding_distortion_loss`, blockwise, computed as
    the Gauss-Newton products that Hessian equals at the model's own weights, without second
    derivatives.

    At ``w0`` the loss's Hessian is ``2 J^T J / B`` exactly (its other term is multiplied by
    ``f(x) - f_w0(x)``, which is 0), so ``v_l^T H_ll v_l = 2 / B * sum_b sum_d (g_bdl . v_l)^2``
    with ``g_bdl`` the gradient of embedding dimension ``d`` of utterance ``b`` with respect to
    parameter ``l``: ``B * D`` first-order gradients (``chunk`` at a time, batched) serve every
    parameter and every sample at once, where the double-backward pays one Hessian-vector
    product per parameter and sample. The Rademacher vectors are :func:`hutchinson_trace`'s
    (same ``seed``, same order), so both give the same estimate to rounding, except where
    second derivatives do not exist: an embedding through a standard deviation over time with
    a constant channel (CAM++'s dead ReLU channels) makes the double-backward NaN, not this.

    >>> _ = torch.manual_seed(0); net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    >>> x = torch.randn(5, 3); chosen = {"a": net[0].weight, "b": net[2].weight}
    >>> fast = gauss_newton_trace(net, x, chosen, n_samples=3)
    >>> slow = hutchinson_trace(embedding_distortion_loss(net, x), chosen, n_samples=3)
    >>> all(abs(fast[k] - slow[k]) <= 1e-5 * slow[k] for k in chosen)
    True
    """
    _check_request(params, n_samples)
    names, tensors = list(params), list(params.values())
    draws = list(_rademacher(tensors, n_samples, seed))  # hutchinson_trace's, in its order
    probes = [torch.stack([vs[i].reshape(-1) for vs in draws]) for i in range(len(tensors))]
    totals = [torch.zeros(n_samples, dtype=torch.float64) for _ in tensors]
    model.eval()
    for b in range(features.shape[0]):
        embedding = model(features[b : b + 1]).reshape(-1)
        dims = embedding.numel()
        for start in range(0, dims, chunk):
            rows = torch.arange(start, min(start + chunk, dims))
            selector = torch.zeros(rows.numel(), dims, dtype=embedding.dtype,
                                   device=embedding.device)  # fmt: skip
            selector[torch.arange(rows.numel()), rows] = 1.0
            grads = torch.autograd.grad(embedding, tensors, grad_outputs=selector,
                                        is_grads_batched=True, retain_graph=True,
                                        allow_unused=True)  # fmt: skip
            for total, grad, probe in zip(totals, grads, probes, strict=True):
                if grad is not None:  # None: the parameter does not reach the embedding
                    products = grad.reshape(rows.numel(), -1) @ probe.T
                    total += (products.double() ** 2).sum(dim=0).cpu()
        del embedding
    scale = 2.0 / features.shape[0]
    return {name: float(scale * total.mean()) for name, total in zip(names, totals, strict=True)}


def quantization_errors(
    model: nn.Module, choices: Sequence[int], **quantize_kwargs
) -> dict[str, dict[int, float]]:
    """``||Q_b(W) - W||^2`` per quantizable weight and bit width, by :func:`quantize_model`.

    ``quantize_kwargs`` (``granularity``, ``method``, ``include``, ``exclude``) go to
    :func:`svlab.quant.quantize_model`, one call per bit width.

    >>> net = nn.Sequential(nn.Linear(2, 2, bias=False))
    >>> with torch.no_grad():
    ...     _ = net[0].weight.copy_(torch.tensor([[0.0, 1.0], [2.0, 4.0]]))
    >>> quantization_errors(net, (1, 2))     # 2 bits: 4 levels for 4 values, exact
    {'0.weight': {1: 2.0, 2: 0.0}}
    """
    originals = {}
    errors: dict[str, dict[int, float]] = {}
    for bits in choices:
        quantized = quantize_model(model, bits, **quantize_kwargs)
        for name in quantizers(quantized):
            module_name, _, attr = name.rpartition(".")
            if name not in originals:
                originals[name] = getattr(model.get_submodule(module_name), attr).detach()
            q = getattr(quantized.get_submodule(module_name), attr).detach()
            errors.setdefault(name, {})[bits] = float(((q - originals[name]) ** 2).sum())
    return errors


def model_hessian_sensitivity(
    model: nn.Module,
    features: Tensor,
    choices: Sequence[int],
    *,
    n_samples: int = 16,
    seed: int = 0,
    **quantize_kwargs,
) -> dict[str, dict[int, float]]:
    """HAWQ-v2 sensitivity of every quantizable weight of a speaker model, ready to allocate.

    Traces are :func:`hutchinson_trace`'s of :func:`embedding_distortion_loss` on a batch of
    ``features``, computed as Gauss-Newton products (:func:`gauss_newton_trace`); errors from
    :func:`quantization_errors` (``quantize_kwargs`` choose the weights, codebook granularity
    and method). The model's parameters are left unchanged.

    >>> _ = torch.manual_seed(0); net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    >>> table = model_hessian_sensitivity(net, torch.randn(16, 4), (1, 4), n_samples=4)
    >>> sorted(table), all(t[1] > t[4] > 0 for t in table.values())
    (['0.weight', '2.weight'], True)
    """
    errors = quantization_errors(model, choices, **quantize_kwargs)
    weights = dict(model.named_parameters())
    params = {name: weights[name] for name in errors}
    was_training = model.training
    flags = {name: p.requires_grad for name, p in params.items()}
    for p in params.values():
        p.requires_grad_(True)
    # reversible blocks recompute in a custom (once-differentiable) backward: use the plain graph
    saving = {m: m.memory_saving for m in model.modules() if isinstance(m, ReversibleSequence)}
    for module in saving:
        module.memory_saving = False
    try:
        traces = gauss_newton_trace(model, features, params, n_samples, seed)
    finally:
        for name, p in params.items():
            p.requires_grad_(flags[name])
        for module, flag in saving.items():
            module.memory_saving = flag
        model.train(was_training)
    return {
        name: {bits: traces[name] / params[name].numel() * err for bits, err in row.items()}
        for name, row in errors.items()
    }


def measured_sensitivity(
    model: nn.Module,
    eval_fn: Callable[[nn.Module], Any],
    choices: Sequence[int],
    *,
    metric: str = "eer",
    **quantize_kwargs,
) -> dict[str, dict[int, float]]:
    """``{layer: {bits: change of eval_fn}}``: each weight quantized alone, at each width.

    Runs :func:`svlab.quant.layer_sensitivity` once per width (one evaluation per layer and
    width). ``eval_fn(model)`` returns a number or a dict holding ``metric``; lower is better.

    >>> _ = torch.manual_seed(0); net = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
    >>> x = torch.randn(16, 4); y = net(x).detach()
    >>> mse = lambda m: float(((m(x) - y) ** 2).mean().detach())
    >>> table = measured_sensitivity(net, mse, (1, 4), metric="mse")
    >>> sorted(table), all(t[1] > t[4] for t in table.values())
    (['0.weight', '1.weight'], True)
    """
    from svlab.quant.sensitivity import layer_sensitivity

    table: dict[str, dict[int, float]] = {}
    for bits in choices:
        rows = layer_sensitivity(model, eval_fn, bits, metric=metric, **quantize_kwargs)
        for layer, delta in zip(rows["layer"], rows[f"delta_{metric}"], strict=True):
            table.setdefault(layer, {})[bits] = float(delta)
    return table
