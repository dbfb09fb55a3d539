"""How a chain of couplings backpropagates without its inputs: branch by branch, or unit by unit."""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial

import torch
from torch import nn

from svlab.models.units import (
    autocast_state,
    capture_rng,
    chain_vjp,
    in_autocast,
    replayed_rng,
    run_units,
    units_of,
)

GRAINS = ("branch", "unit")  # what a coupling's backward rebuilds at once: a branch, or a unit


def halves(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two channel halves of a coupling's input or output (views, no copy).

    >>> [h.shape[1] for h in halves(torch.zeros(1, 6, 2, 2))]
    [3, 3]
    """
    if x.dim() < 2 or x.shape[1] % 2:
        raise ValueError(f"a coupling needs an even number of channels, got shape {list(x.shape)}")
    x1, x2 = x.chunk(2, dim=1)
    return x1, x2



@contextmanager
def _frozen_batchnorm_statistics(module: nn.Module):
    """Run the body, then put every BatchNorm running statistic of ``module`` back as it was.

    The recomputation in backward runs F and G a second time in training mode; without this,
    each BatchNorm would count the batch twice in its running mean and variance (memcnn #12).
    """
    saved = [
        (buffer, buffer.clone())
        for layer in module.modules()
        if isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer.track_running_stats
        for buffer in (layer.running_mean, layer.running_var, layer.num_batches_tracked)
        if buffer is not None
    ]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def _vjp(
    output_fn, inputs: torch.Tensor, params: list[torch.Tensor], grad_output: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor | None]]:
    """Recompute ``output_fn(inputs)`` with grad on; return (output, d input, d params)."""
    with torch.enable_grad():
        leaf = inputs.detach().requires_grad_()
        output = output_fn(leaf)
        trainable = [p for p in params if p.requires_grad]
        grads = torch.autograd.grad(output, [leaf, *trainable], grad_output, allow_unused=True)
    by_param = iter(grads[1:])
    param_grads = [next(by_param) if p.requires_grad else None for p in params]
    input_grad = torch.zeros_like(leaf) if grads[0] is None else grads[0]
    return output.detach(), input_grad, param_grads


def _accumulate(totals: dict[int, torch.Tensor], params, grads) -> None:
    for param, grad in zip(params, grads, strict=True):
        if grad is not None:
            previous = totals.get(id(param))
            totals[id(param)] = grad if previous is None else previous + grad


def _backward_by_branch(ctx, y, grad_y, totals):
    """Each branch re-run with autograd on as a whole (svlab's first way, kept to compare)."""
    steps = zip(reversed(ctx.blocks), reversed(ctx.rng_states), strict=True)
    for block, (rng_f, rng_g) in steps:
        y1, y2 = halves(y)
        dy1, dy2 = halves(grad_y)
        with _frozen_batchnorm_statistics(block), in_autocast(ctx.autocast):
            g_params = list(block.g.parameters())
            with replayed_rng(rng_g, ctx.device):
                g_out, dg_dy1, dg_params = _vjp(block.g, y1, g_params, dy2)
            x2 = y2 - g_out
            dx1 = dy1 + dg_dy1
            del g_out, dg_dy1, y2, dy1
            f_params = list(block.f.parameters())
            with replayed_rng(rng_f, ctx.device):
                f_out, df_dx2, df_params = _vjp(block.f, x2, f_params, dx1)
            x1 = y1 - f_out
            dx2 = dy2 + df_dx2
            del f_out, df_dx2, y1, dy2
        _accumulate(totals, g_params + f_params, dg_params + df_params)
        y = torch.cat([x1, x2], dim=1)
        grad_y = torch.cat([dx1, dx2], dim=1)
        del x1, x2, dx1, dx2
    return grad_y


def _backward_by_unit(ctx, y, grad_y, totals):
    """Each branch rebuilt unit by unit (:func:`svlab.models.units.chain_vjp`). The rebuilt
    input and its gradient go in place into two buffers the size of one output: x2 = y2 - G(y1)
    as soon as G(y1) is rebuilt, then dx1 = dy1 + dG/dy1 accumulated chunk by chunk."""
    x, dx = torch.empty_like(y), grad_y.clone()
    x1, x2 = halves(x)
    dx1, dx2 = halves(dx)
    steps = zip(reversed(ctx.blocks), reversed(ctx.rng_states), strict=True)
    for block, (rng_f, rng_g) in steps:
        y1, y2 = halves(y)  # from the second coupling on, y is x: rebuilt in place
        with in_autocast(ctx.autocast):
            with replayed_rng(rng_g, ctx.device):
                _, found = chain_vjp(units_of(block.g), y1, dx2, input_grad=dx1,
                                     use_output=partial(torch.sub, y2, out=x2))
            params = list(block.g.parameters())
            _accumulate(totals, params, [found.get(id(p)) for p in params])
            with replayed_rng(rng_f, ctx.device):
                _, found = chain_vjp(units_of(block.f), x2, dx1, input_grad=dx2,
                                     use_output=partial(torch.sub, y1, out=x1))
            params = list(block.f.parameters())
            _accumulate(totals, params, [found.get(id(p)) for p in params])
        y = x
    return dx


def _branches(block: nn.Module, grain: str):
    """F and G as the forward pass runs them: as modules, or unit by unit (tensors dropped as
    soon as used; the same arithmetic)."""
    if grain == "branch":
        return block.f, block.g
    units_f, units_g = units_of(block.f), units_of(block.g)
    return (lambda x: run_units(units_f, x)), (lambda x: run_units(units_g, x))


class ReversibleFunction(torch.autograd.Function):
    """Runs couplings in sequence, keeps only the last output, rebuilds inputs in backward."""

    @staticmethod
    def forward(ctx, x, blocks, preserve_rng_state, grain, *params):
        ctx.blocks, ctx.rng_states, ctx.grain = blocks, [], grain
        ctx.device = x.device
        ctx.autocast = autocast_state(x.device.type)
        with torch.no_grad():
            for block in blocks:
                f, g = _branches(block, grain)
                x1, x2 = halves(x)
                rng_f = capture_rng(x.device) if preserve_rng_state else None
                y1 = x1 + f(x2)
                rng_g = capture_rng(x.device) if preserve_rng_state else None
                y2 = x2 + g(y1)
                del x1, x2
                x = torch.cat([y1, y2], dim=1)
                del y1, y2
                ctx.rng_states.append((rng_f, rng_g))
        ctx.save_for_backward(x)
        return x

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        (y,) = ctx.saved_tensors
        totals: dict[int, torch.Tensor] = {}
        walk = _backward_by_unit if ctx.grain == "unit" else _backward_by_branch
        grad_x = walk(ctx, y.detach(), grad_y, totals)
        params = list(ctx.blocks.parameters())
        return (grad_x, None, None, None, *[totals.get(id(p)) for p in params])
