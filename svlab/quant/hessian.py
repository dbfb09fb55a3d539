"""Hessian-trace layer sensitivity (Hutchinson's estimator), HAWQ-style, for bit allocation.

The loss increase from perturbing a layer's weights ``W`` by ``dW`` is, to second order at a
trained minimum, ``dW^T H dW / 2``. HAWQ-v2 replaces the layer's Hessian block ``H`` by its
average eigenvalue ``tr(H) / n`` so that quantizing the layer to ``b`` bits costs about
``tr(H) / n * ||Q_b(W) - W||^2``. The trace comes from Hutchinson's estimator,
``tr(H) = E[v^T H v]`` over Rademacher vectors ``v``, each term one Hessian-vector product.
One product over the whole model gives every layer's estimate at once: the off-diagonal blocks
average out because the layers' vectors are independent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

Quantizer = Callable[[Tensor, int], Tensor]


def hutchinson_trace(
    loss_fn: Callable[[], Tensor],
    params: Mapping[str, Tensor],
    n_samples: int = 32,
    seed: int = 0,
) -> dict[str, float]:
    """Estimate the trace of each parameter's diagonal Hessian block of ``loss_fn()``.

    ``loss_fn`` is a closure returning a scalar loss computed from ``params``; ``n_samples``
    Rademacher vectors are drawn (from a generator seeded with ``seed``). For a quadratic
    ``sum(d * w**2) / 2`` the Hessian is ``diag(d)`` and every sample is exact:

    >>> w = torch.ones(3, requires_grad=True)
    >>> d = torch.tensor([1.0, 2.0, 3.0])
    >>> hutchinson_trace(lambda: (d * w**2).sum() / 2, {"w": w}, n_samples=2)
    {'w': 6.0}
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be at least 1, got {n_samples}")
    if not params:
        raise ValueError("no parameters given to estimate Hessian traces for")
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
    generator = torch.Generator().manual_seed(seed)
    totals = torch.zeros(len(tensors), dtype=torch.float64)
    for _ in range(n_samples):
        vs = [
            (torch.randint(0, 2, t.shape, generator=generator) * 2 - 1).to(t.device, t.dtype)
            for t in tensors
        ]
        hvs = torch.autograd.grad(grads, tensors, grad_outputs=vs, retain_graph=True)
        for i, (v, hv) in enumerate(zip(vs, hvs, strict=True)):
            totals[i] += (v * hv).sum().double().cpu()
    return {name: float(t / n_samples) for name, t in zip(names, totals, strict=True)}


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
