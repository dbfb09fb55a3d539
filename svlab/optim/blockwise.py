"""Block-wise 8-bit quantization: scale each block by its absmax, store the nearest code's index."""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

from svlab.optim.maps import dynamic_map

CELL_SHIFT = 16  # a float32's top 16 bits (sign, exponent, 7 mantissa bits) name its cell


class QuantizationError(ValueError):
    """A tensor, code table or block size that block-wise quantization cannot take."""


def check_blocksize(blocksize: int) -> int:
    """Return ``blocksize`` if it is a positive integer, else raise :class:`QuantizationError`.

    >>> check_blocksize(256)
    256
    >>> check_blocksize(0)
    Traceback (most recent call last):
    ...
    svlab.optim.blockwise.QuantizationError: blocksize must be a positive integer, got 0
    """
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize <= 0:
        raise QuantizationError(f"blocksize must be a positive integer, got {blocksize!r}")
    return blocksize


def holds(condition: torch.Tensor) -> bool:
    """Whether every element of a boolean tensor is true; on the meta device, which has
    shapes but no values (memory projection runs optimizers there), nothing can be checked:
    True.

    >>> holds(torch.tensor([True, False])), holds(torch.empty(3, dtype=torch.bool, device="meta"))
    (False, True)
    """
    return condition.is_meta or bool(condition.all())


def _check_code(code: torch.Tensor) -> torch.Tensor:
    if code.ndim != 1 or not 2 <= code.numel() <= 256 or not code.is_floating_point():
        raise QuantizationError(
            "code must be a 1-D float table of 2 to 256 values, "
            f"got {code.dtype} {tuple(code.shape)}"
        )
    if not holds(code.diff() > 0):
        raise QuantizationError("code must be sorted in increasing order without repeats")
    return code.float()


def _blocks(x: torch.Tensor, blocksize: int) -> torch.Tensor:
    """``x`` flattened, zero-padded to whole blocks, as a [n_blocks, blocksize] float32 view."""
    flat = x.detach().reshape(-1).float()
    padding = -flat.numel() % blocksize
    return (F.pad(flat, (0, padding)) if padding else flat).view(-1, blocksize)


@lru_cache(maxsize=16)
def _cell_table(code_values: tuple[float, ...], device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """For every float32 cell (values sharing their top 16 bits): midpoints below it, and the
    midpoints followed by +inf. Empty first tensor when some cell holds two midpoints."""
    code = torch.tensor(code_values, dtype=torch.float32)
    midpoints = (code[1:] + code[:-1]) / 2.0
    cells = torch.arange(-(2**15), 2**15, dtype=torch.int32) << CELL_SHIFT
    ends = torch.stack([cells, cells | (2**CELL_SHIFT - 1)]).view(torch.float32)
    low, high = ends.amin(0), ends.amax(0)  # NaN cells give NaN: never looked up
    below = torch.searchsorted(midpoints, low)
    inside = torch.searchsorted(midpoints, high, right=True) - below
    if bool((inside > 1).any()):
        below = torch.empty(0, dtype=torch.int32)
    padded = torch.cat([midpoints, torch.tensor([float("inf")])])
    return below.to(torch.int32).to(device), padded.to(device)


def nearest_code(scaled: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """Index of the entry of the sorted ``code`` nearest each value of ``scaled`` (int32).

    "Nearest" means: the number of midpoints between neighbouring codes that lie below the
    value. A binary search (``torch.searchsorted``) finds it in 8 comparisons; faster here
    is a table over float32 bit patterns: the top 16 bits of a float (sign, exponent and 7
    mantissa bits) cut the line into 65,536 cells, each under 1% of its value wide -
    narrower than any gap of the 8-bit maps - so a cell holds at most one midpoint. One
    lookup gives the midpoints below the cell and one comparison settles that last
    midpoint. For codes whose gaps are too fine for the cells, it falls back to
    ``torch.searchsorted``. Ties go to the lower code.

    >>> code = torch.tensor([-1.0, 0.0, 0.5, 1.0])
    >>> nearest_code(torch.tensor([-0.6, -0.5, 0.2, 0.3, 0.8, 1.0]), code).tolist()
    [0, 0, 1, 2, 3, 3]
    """
    flat = scaled.reshape(-1).float()
    if code.is_meta:  # no values to build the table from: the binary search has the same shapes
        midpoints = (code[1:] + code[:-1]) / 2
        return torch.searchsorted(midpoints, flat).to(torch.int32).view(scaled.shape)
    below, padded = _cell_table(tuple(code.tolist()), str(scaled.device))
    if below.numel() == 0:
        return torch.searchsorted(padded[:-1], flat).to(torch.int32).view(scaled.shape)
    cell = (flat.view(torch.int32) >> CELL_SHIFT).add_(2**15)
    index = below.index_select(0, cell)
    index += padded.index_select(0, index) < flat
    return index.view(scaled.shape)


def quantize_blockwise(
    x: torch.Tensor, code: torch.Tensor | None = None, blocksize: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``x`` to uint8 indices into ``code``, one float32 absmax per block.

    ``x`` is cut (flattened, in order) into blocks of ``blocksize`` values. Each block is
    divided by its largest magnitude (its *absmax*), which puts it in [-1, 1] and makes an
    outlier cost precision only inside its own block; each scaled value is then replaced
    by the index of the nearest entry of ``code`` (:func:`nearest_code`: the codes are
    sorted, so a value's nearest code is fixed by the midpoints between codes below it - no
    comparison with all 256). A block of zeros has absmax 0 and stores the code nearest 0.

    Returns ``(q, absmax)``: ``q`` is uint8 with the shape of ``x``, ``absmax`` holds
    ``ceil(x.numel() / blocksize)`` float32 values. The default code is the signed
    :func:`~svlab.optim.maps.dynamic_map`.

    >>> q, absmax = quantize_blockwise(torch.tensor([0.5, 1.0, 0.001, 0.0]), blocksize=2)
    >>> q.dtype, absmax.tolist()
    (torch.uint8, [1.0, 0.0010000000474974513])
    >>> [round(v, 5) for v in dequantize_blockwise(q, absmax, blocksize=2).tolist()]
    [0.50078, 1.0, 0.001, 0.0]
    """
    check_blocksize(blocksize)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        kind = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise QuantizationError(f"quantize_blockwise needs a floating-point tensor, got {kind}")
    if x.numel() == 0:
        raise QuantizationError(f"quantize_blockwise got an empty tensor of shape {tuple(x.shape)}")
    code = _check_code(dynamic_map(signed=True) if code is None else code).to(x.device)
    blocks = _blocks(x, blocksize)
    absmax = blocks.abs().amax(dim=1)
    if not holds(torch.isfinite(absmax)):  # amax propagates NaN and Inf
        raise QuantizationError("quantize_blockwise got NaN or Inf values")
    divisor = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    scaled = (blocks / divisor[:, None]).clamp_(-1.0, 1.0)
    q = nearest_code(scaled.view(-1)[: x.numel()], code).to(torch.uint8).view(x.shape)
    return q, absmax


def dequantize_blockwise(
    q: torch.Tensor,
    absmax: torch.Tensor,
    code: torch.Tensor | None = None,
    blocksize: int = 256,
    shape: torch.Size | tuple[int, ...] | None = None,
) -> torch.Tensor:
    """Undo :func:`quantize_blockwise`: ``code[q] * absmax`` of each value's block, float32.

    ``shape`` (default ``q.shape``) reshapes the result; ``code`` and ``blocksize`` must be
    the ones used to quantize.

    >>> q, absmax = quantize_blockwise(torch.linspace(-1, 1, 5), blocksize=4)
    >>> [round(v, 4) for v in dequantize_blockwise(q, absmax, blocksize=4, shape=(5,)).tolist()]
    [-0.993, -0.5008, 0.0, 0.5008, 1.0]
    >>> dequantize_blockwise(q, absmax[:1], blocksize=4)
    Traceback (most recent call last):
    ...
    svlab.optim.blockwise.QuantizationError: 5 codes in blocks of 4 need 2 absmax values, got 1
    """
    check_blocksize(blocksize)
    if q.dtype != torch.uint8:
        raise QuantizationError(f"dequantize_blockwise needs uint8 codes, got {q.dtype}")
    n_blocks = -(-q.numel() // blocksize)
    if absmax.numel() != n_blocks:
        raise QuantizationError(
            f"{q.numel()} codes in blocks of {blocksize} need {n_blocks} absmax values, "
            f"got {absmax.numel()}"
        )
    code = _check_code(dynamic_map(signed=True) if code is None else code).to(q.device)
    values = _blocks(code.index_select(0, q.reshape(-1).int()), blocksize)
    values = values * absmax.float()[:, None]
    return values.reshape(-1)[: q.numel()].reshape(q.shape if shape is None else shape)


def roundtrip_error(
    x: torch.Tensor, code: torch.Tensor | None = None, blocksize: int = 256
) -> dict[str, float]:
    """How much of ``x`` survives :func:`quantize_blockwise` then :func:`dequantize_blockwise`.

    ``flushed_pct``: nonzero values that come back as exactly 0 (in %);
    ``median_rel_err``: median of ``|y - x| / |x|`` over nonzero values;
    ``mean_err_over_absmax``: mean of ``|y - x|`` divided by the block's absmax.

    >>> x = torch.tensor([1.0, 1e-3, 1e-5, -0.5])
    >>> roundtrip_error(x)["flushed_pct"]
    0.0
    >>> from svlab.optim.maps import linear_map
    >>> roundtrip_error(x, linear_map(True))["flushed_pct"]
    50.0
    """
    q, absmax = quantize_blockwise(x, code, blocksize)
    y = dequantize_blockwise(q, absmax, code, blocksize).view(-1)
    x = x.detach().reshape(-1).float()
    scale = absmax.repeat_interleave(blocksize)[: x.numel()]
    nonzero = x != 0
    error = (y - x).abs()
    return {
        "flushed_pct": 100 * ((y == 0) & nonzero).float().mean().item(),
        "median_rel_err": (error[nonzero] / x[nonzero].abs()).median().item(),
        "mean_err_over_absmax": (error[scale > 0] / scale[scale > 0]).mean().item(),
    }


def adam_update_error(
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    signed_code: torch.Tensor,
    unsigned_code: torch.Tensor,
    blocksize: int = 256,
    eps: float = 1e-8,
) -> dict[str, float]:
    """How far Adam's step direction ``m / (sqrt(v) + eps)`` moves when both moments are
    stored block-wise in 8 bits (``m`` with ``signed_code``, ``v`` with ``unsigned_code``).

    ``rel_err``: ``||u_8bit - u|| / ||u||``; ``max_ratio``: the largest ``|u_8bit|`` over
    the largest ``|u|``. One ``v`` rounded to zero makes its step ``m / eps``: a ratio of
    thousands, however few such values there are.

    >>> from svlab.optim.maps import linear_map
    >>> m, v = torch.tensor([1e-2, 1e-4, 1e-3]), torch.tensor([1e-4, 1e-8, 1e-6])
    >>> round(adam_update_error(m, v, dynamic_map(True), dynamic_map(False))["max_ratio"], 2)
    1.0
    >>> adam_update_error(m, v, linear_map(True), linear_map(False))["max_ratio"] > 1000
    True
    """
    exact = exp_avg / (exp_avg_sq.sqrt() + eps)
    q, absmax = quantize_blockwise(exp_avg, signed_code, blocksize)
    m = dequantize_blockwise(q, absmax, signed_code, blocksize)
    q, absmax = quantize_blockwise(exp_avg_sq, unsigned_code, blocksize)
    v = dequantize_blockwise(q, absmax, unsigned_code, blocksize)
    approx = m / (v.sqrt() + eps)
    return {
        "rel_err": ((approx - exact).norm() / exact.norm()).item(),
        "max_ratio": (approx.abs().max() / exact.abs().max()).item(),
    }
