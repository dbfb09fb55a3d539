"""Backpropagation one conv-BN(-ReLU) unit at a time, in batch chunks: a lower memory floor.

A reversible coupling rebuilds its inputs, but svlab's first way of doing it
(``recompute="branch"``) then re-runs a whole branch with autograd on, holding every
intermediate tensor of the branch at once, plus the buffers of its backward pass. In a
DF-ResNet's first stage a branch widens 16 channels to 128 at full resolution, so those are
the largest tensors of the whole step. ``recompute="unit"`` does the same arithmetic in a
leaner order:

1. the branch is re-run under ``no_grad``, keeping only each unit's input and its BatchNorm
   batch statistics (mean and 1/std per channel);
2. the units are backpropagated last to first. A unit's BatchNorm backward needs two sums over
   the whole batch (of the incoming gradient, and of the gradient times the normalised
   activation), so each unit takes two passes over batch chunks: one for the sums, one that
   re-runs the convolution on the chunk with autograd on and takes the chunk's input and
   weight gradients. Everything else in a unit acts sample by sample, so chunking is exact;
3. a unit's input gradient is written over its input, which nothing needs any more.

At most two full tensors of a branch are alive at once (one unit's input and the gradient
of its output), and the per-chunk buffers are bounded by :data:`CHUNK_BYTES`. The same unit
backward serves ordinary conv-BN(-ReLU) layers (a model's stem and transitions) through
:func:`recomputed`, which saves only the layers' input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

CHUNK_BYTES = 32 * 2**20  # the most bytes of one tensor that a chunk of the batch may hold


@dataclass
class Unit:
    """A convolution and its BatchNorm, then optionally a ReLU and a dropout (in this order)."""

    conv: nn.Conv2d
    norm: nn.BatchNorm2d
    relu: bool = False
    dropout: nn.Dropout | None = None


def _leaves(module: nn.Module) -> Iterator[nn.Module]:
    if isinstance(module, nn.Sequential):
        for child in module:
            yield from _leaves(child)
    else:
        yield module


def units_of(layers: nn.Module) -> list[Unit]:
    """Read ``layers`` (nested ``nn.Sequential``s) as a chain of conv-BN(-ReLU)(-dropout) units.

    >>> from svlab.models.resnet import conv_bn
    >>> [(u.conv.out_channels, u.relu) for u in units_of(nn.Sequential(
    ...     conv_bn(2, 8), nn.ReLU(), conv_bn(8, 2)))]
    [(8, True), (2, False)]
    """
    units: list[Unit] = []
    conv = None
    for layer in _leaves(layers):
        last = units[-1] if units and conv is None else None
        if isinstance(layer, nn.Conv2d) and conv is None:
            conv = layer
        elif isinstance(layer, nn.BatchNorm2d) and conv is not None:
            units.append(Unit(conv, layer))
            conv = None
        elif isinstance(layer, nn.ReLU) and last is not None and not last.relu and not last.dropout:
            last.relu = True
        elif isinstance(layer, nn.Dropout) and last is not None and last.dropout is None:
            last.dropout = layer
        else:
            raise ValueError(
                "unit-wise recomputation needs layers of the form conv, BatchNorm, optional ReLU, "
                f"optional dropout; found {type(layer).__name__} out of that order in {layers!r}"
            )
    if conv is not None or not units:
        raise ValueError(f"unit-wise recomputation found no conv-BatchNorm unit in {layers!r}")
    return units


# ---------------------------------------------------------------- random numbers and autocast


def capture_rng(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The CPU RNG state (and ``device``'s, on CUDA), to replay a dropout mask later.

    >>> state = capture_rng(torch.device("cpu")); a = torch.rand(2)
    >>> with replayed_rng(state, torch.device("cpu")): torch.equal(torch.rand(2), a)
    True
    """
    cuda_state = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda_state


@contextmanager
def replayed_rng(state: tuple[torch.Tensor, torch.Tensor | None] | None, device: torch.device):
    """Run the body with the RNG as it was when ``state`` was captured; restore it afterwards
    (``None``: leave the RNG alone). Example in :func:`capture_rng`."""
    if state is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state(state[1], device)
        yield


def autocast_state(device_type: str) -> tuple[str, torch.dtype] | None:
    """(device type, dtype) of the autocast region we are in, or None outside autocast.

    >>> autocast_state("cpu") is None
    True
    """
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return device_type, torch.get_autocast_dtype(device_type)
    return None


def in_autocast(state: tuple[str, torch.dtype] | None):
    """A context that re-enters the autocast region ``state`` describes (or does nothing)."""
    return nullcontext() if state is None else torch.autocast(*state)


# ---------------------------------------------------------------- one unit


def _chunks(batch: int, per_chunk: int) -> Iterator[slice]:
    for start in range(0, batch, per_chunk):
        yield slice(start, min(start + per_chunk, batch))


def _per_chunk(unit: Unit, x: torch.Tensor) -> int:
    """Samples per chunk, so that a chunk of the unit's input or output stays in CHUNK_BYTES."""
    widening = max(1.0, unit.conv.out_channels / unit.conv.in_channels)
    sample_bytes = max(1, int(x[0].nbytes * widening))
    return max(1, CHUNK_BYTES // sample_bytes)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _batch_statistics(norm: nn.BatchNorm2d) -> bool:
    """Whether ``norm`` normalises with the batch's statistics (as ``F.batch_norm`` decides)."""
    return norm.training or norm.running_mean is None


def _statistics(norm: nn.BatchNorm2d, chunks: Iterable[torch.Tensor]):
    """Per-channel mean and 1/std that ``norm`` normalises with: the batch's (merged chunk by
    chunk, Chan et al.'s pairwise formula) in training, the running ones in evaluation."""
    if not _batch_statistics(norm):
        return norm.running_mean, torch.rsqrt(norm.running_var + norm.eps)
    count, mean, square_sum = 0, None, None
    for z in chunks:
        z = z.to(_compute_dtype(z.dtype))
        var, m = torch.var_mean(z, dim=(0, 2, 3), unbiased=False)
        n = z.numel() // z.shape[1]
        if mean is None:
            count, mean, square_sum = n, m, var * n
            continue
        delta = m - mean
        total = count + n
        mean = mean + delta * (n / total)
        square_sum = square_sum + var * n + delta.square() * (count * n / total)
        count = total
    return mean, torch.rsqrt(square_sum / count + norm.eps)


def _affine(norm: nn.BatchNorm2d, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if norm.affine:
        return norm.weight.to(like.dtype), norm.bias.to(like.dtype)
    return torch.ones_like(like), torch.zeros_like(like)


def _channels(v: torch.Tensor) -> torch.Tensor:
    return v.view(1, -1, 1, 1)


@dataclass
class _Record:
    mean: torch.Tensor
    invstd: torch.Tensor
    keep: torch.Tensor | None  # the dropout mask (True: kept), or None


def _forward(unit: Unit, x: torch.Tensor, need_output: bool) -> tuple[torch.Tensor | None, _Record]:
    """The unit on ``x`` without autograd (output in place of the convolution's), and what its
    backward needs to know of this run."""
    if not need_output:
        per = _per_chunk(unit, x)
        mean, invstd = _statistics(unit.norm, (unit.conv(x[s]) for s in _chunks(len(x), per)))
        return None, _Record(mean, invstd, None)
    z = unit.conv(x)
    mean, invstd = _statistics(unit.norm, (z[s] for s in _chunks(len(z), _per_chunk(unit, x))))
    gamma, beta = _affine(unit.norm, mean)
    scale = gamma * invstd
    z.mul_(_channels(scale)).add_(_channels(beta - mean * scale))
    if unit.relu:
        z.relu_()
    keep = None
    if unit.dropout is not None and unit.dropout.training and unit.dropout.p > 0:
        mask = F.dropout(torch.ones_like(z), unit.dropout.p, training=True)
        z.mul_(mask)
        keep = mask != 0
        del mask
    return z, _Record(mean, invstd, keep)


def _gradient_before_activation(unit, grad, z_hat, gamma, beta, keep) -> torch.Tensor:
    """d loss / d (BatchNorm output) from d loss / d (unit output), for one chunk."""
    grad = grad.to(z_hat.dtype)
    if keep is not None:
        grad = grad.mul(keep).div_(1 - unit.dropout.p)
    if unit.relu:
        active = z_hat.mul(_channels(gamma)).add_(_channels(beta)).gt_(0)
        grad = grad.mul(active)
    return grad


def _backward(unit: Unit, x: torch.Tensor, grad: torch.Tensor, record: _Record,
              input_grad: torch.Tensor | None, adding: bool) -> dict[int, torch.Tensor]:
    """Backpropagate ``grad`` (d loss / d unit output) through the unit, chunk by chunk.

    The input gradient is written (``adding``: added) into ``input_grad``, which may be ``x``
    itself: each chunk of x is read before its gradient is written. Returns the weights'
    gradients by ``id``.
    """
    norm, per = unit.norm, _per_chunk(unit, x)
    batch_statistics = _batch_statistics(norm)
    mean, invstd = _channels(record.mean), _channels(record.invstd)
    gamma, beta = _affine(norm, record.mean)

    def z_hat(z: torch.Tensor) -> torch.Tensor:
        return z.detach().to(mean.dtype).sub(mean).mul_(invstd)

    def keep(s: slice) -> torch.Tensor | None:
        return None if record.keep is None else record.keep[s]

    sum_grad = sum_grad_z = 0
    count = 0
    with torch.no_grad():
        for s in _chunks(len(x), per):
            zh = z_hat(unit.conv(x[s]))
            g = _gradient_before_activation(unit, grad[s], zh, gamma, beta, keep(s))
            sum_grad = sum_grad + g.sum(dim=(0, 2, 3))
            sum_grad_z = sum_grad_z + (g * zh).sum(dim=(0, 2, 3))
            count += zh.numel() // zh.shape[1]
    conv_params = [p for p in (unit.conv.weight, unit.conv.bias) if p is not None]
    trainable = [p for p in conv_params if p.requires_grad]
    totals: dict[int, torch.Tensor] = {}
    scale = _channels(gamma * record.invstd)
    for s in _chunks(len(x), per):
        with torch.enable_grad():
            leaf = x[s].detach().requires_grad_(input_grad is not None)
            z = unit.conv(leaf)
        with torch.no_grad():
            zh = z_hat(z)
            g = _gradient_before_activation(unit, grad[s], zh, gamma, beta, keep(s))
            if batch_statistics:  # written over zh, which is not needed any more
                g = zh.mul_(_channels(-sum_grad_z / count)).add_(g)
                dz = g.sub_(_channels(sum_grad / count)).mul_(scale).to(z.dtype)
            else:
                dz = (g * scale).to(z.dtype)
            del zh, g
        wanted = ([leaf] if input_grad is not None else []) + trainable
        if not wanted:
            continue
        found = list(torch.autograd.grad(z, wanted, dz))
        del z, dz
        if input_grad is not None and adding:
            input_grad[s] += found.pop(0)
        elif input_grad is not None:
            input_grad[s] = found.pop(0)
        for p, g in zip(trainable, found, strict=True):
            totals[id(p)] = g if id(p) not in totals else totals[id(p)] + g
    if norm.affine and norm.weight.requires_grad:
        totals[id(norm.weight)] = sum_grad_z.to(norm.weight.dtype)
    if norm.affine and norm.bias.requires_grad:
        totals[id(norm.bias)] = sum_grad.to(norm.bias.dtype)
    return totals


# ---------------------------------------------------------------- a chain of units


def run_units(units: list[Unit], x: torch.Tensor) -> torch.Tensor:
    """The chain's forward pass without autograd, each tensor dropped as soon as it is used:
    at most a unit's input (or convolution output) and its BatchNorm output alive at once.

    Each BatchNorm and dropout runs as its own module (running statistics and RNG exactly
    as in ``layers(x)``); the ReLU acts in place.

    >>> from svlab.models.resnet import conv_bn
    >>> layers = nn.Sequential(conv_bn(2, 3), nn.ReLU(), conv_bn(3, 2)).eval()
    >>> x = torch.randn(1, 2, 4, 4); torch.equal(run_units(units_of(layers), x), layers(x))
    True
    """
    with torch.no_grad():
        h = x
        for unit in units:
            z = unit.conv(h)
            h = None
            h = unit.norm(z)
            z = None
            if unit.relu:
                h.relu_()
            if unit.dropout is not None:
                h = unit.dropout(h)
    return h


def chain_vjp(
    units: list[Unit],
    x: torch.Tensor,
    grad_output: torch.Tensor,
    use_output: Callable[[torch.Tensor], object] | None = None,
    input_grad: torch.Tensor | None = None,
    need_input_grad: bool = True,
) -> tuple[torch.Tensor | None, dict[int, torch.Tensor]]:
    """The vector-Jacobian product of the chain at ``x`` with ``grad_output``: (d input,
    d weights by ``id``), with at most two full tensors of the chain alive at once.

    ``use_output(output)`` is called with the chain's output as soon as it is rebuilt, which
    is then dropped (a coupling rebuilds its input from it); without it the output is not
    computed. With ``input_grad`` the input gradient is added into that tensor in place and
    not returned. BatchNorms normalise as their ``training`` flag says (this run's batch
    statistics, or the running ones) and their running statistics are left alone. ``x`` and
    ``grad_output`` are only read. Run it under :func:`replayed_rng` to replay dropout.

    >>> from svlab.models.resnet import conv_bn
    >>> _ = torch.manual_seed(0); layers = nn.Sequential(conv_bn(2, 3), nn.ReLU(), conv_bn(3, 2))
    >>> x = torch.randn(4, 2, 5, 5, requires_grad=True); g = torch.randn(4, 2, 5, 5)
    >>> outputs = []
    >>> dx, grads = chain_vjp(units_of(layers), x.detach(), g, use_output=outputs.append)
    >>> expected, = torch.autograd.grad(layers(x), x, g)
    >>> torch.allclose(outputs[0], layers(x)), torch.allclose(dx, expected, atol=1e-5)
    (True, True)
    """
    inputs, records = [x], []
    with torch.no_grad():
        for i, unit in enumerate(units):
            last = i == len(units) - 1
            h, record = _forward(unit, inputs[-1], use_output is not None or not last)
            inputs.append(h)
            records.append(record)
        del h
        output = inputs.pop()
        if use_output is not None:
            use_output(output)
        del output
    grad, totals = grad_output, {}
    for i in reversed(range(len(units))):
        unit_input = inputs.pop()
        adding = i == 0 and input_grad is not None
        if i > 0:
            into = unit_input  # our own buffer: the gradient overwrites it
        elif adding:
            into = input_grad
        else:
            into = torch.empty_like(unit_input) if need_input_grad else None
        found = _backward(units[i], unit_input, grad, records[i], into, adding)
        for key, g in found.items():
            totals[key] = g if key not in totals else totals[key] + g
        grad = None if adding else into
        del unit_input, into
    return grad, totals


class _Recomputed(torch.autograd.Function):
    """Runs conv-BN(-ReLU) layers saving only their input; backward goes unit by unit."""

    @staticmethod
    def forward(ctx, x, units, preserve_rng_state, *params):
        ctx.units, ctx.params = units, params
        ctx.rng = capture_rng(x.device) if preserve_rng_state else None
        ctx.device, ctx.autocast = x.device, autocast_state(x.device.type)
        y = run_units(units, x)
        ctx.save_for_backward(x)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        (x,) = ctx.saved_tensors
        with replayed_rng(ctx.rng, ctx.device), in_autocast(ctx.autocast):
            dx, totals = chain_vjp(ctx.units, x.detach(), grad_y,
                                   need_input_grad=ctx.needs_input_grad[0])
        return (dx, None, None, *[totals.get(id(p)) for p in ctx.params])


def recomputed(
    layers: nn.Module | Sequence[nn.Module], x: torch.Tensor, preserve_rng_state: bool = True
) -> torch.Tensor:
    """``layers`` (conv-BN(-ReLU) modules, applied in order) on ``x``, keeping only ``x``.

    The layers run as usual in forward (BatchNorm statistics updated once). Backward
    rebuilds them unit by unit (:func:`chain_vjp`), so instead of each convolution's,
    BatchNorm's and ReLU's output autograd keeps the first input alone. Without autograd it
    is just the layers applied to ``x``.

    >>> from svlab.models.resnet import conv_bn
    >>> _ = torch.manual_seed(0); layers = [nn.Sequential(conv_bn(1, 4), nn.ReLU()), conv_bn(4, 2)]
    >>> x, w = torch.randn(2, 1, 6, 5, requires_grad=True), torch.randn(2, 2, 6, 5)
    >>> lean, = torch.autograd.grad((recomputed(layers, x) * w).sum(), x)
    >>> plain, = torch.autograd.grad((nn.Sequential(*layers)(x) * w).sum(), x)
    >>> torch.allclose(lean, plain, atol=1e-5)
    True
    """
    layers = [layers] if isinstance(layers, nn.Module) else list(layers)
    units = [unit for layer in layers for unit in units_of(layer)]
    params = [p for layer in layers for p in layer.parameters()]
    if not torch.is_grad_enabled() or not (x.requires_grad or any(p.requires_grad for p in params)):
        return run_units(units, x)
    return _Recomputed.apply(x, units, preserve_rng_state, *params)
