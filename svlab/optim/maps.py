"""The 256 values an 8-bit optimizer state can take: the dynamic tree map and a linear foil."""

from __future__ import annotations

import torch

EXPONENT_BITS = 7  # the largest run of leading zeros the dynamic type can encode


def dynamic_map(signed: bool = True) -> torch.Tensor:
    """The dynamic tree data type of Dettmers et al. as a sorted table of 256 float32 values.

    An 8-bit code is read as: a sign bit (signed map only), then a run of ``e`` zero bits
    that sets the decimal exponent ``10**-e``, then a 1 bit that ends the run (the
    "indicator"), and the bits left over hold a linear fraction in [0.1, 1]. A value close
    to zero spends its bits on the exponent, a value close to 1 spends them on the fraction,
    so the type covers about 1e-7 .. 1 (seven decades) while keeping two to three
    significant digits near 1 - unlike a linear map, whose smallest step is 1/127.

    The table enumerates every code. For exponent ``10**(i - 6)``, i = 0 .. 6, the
    fraction has ``i`` bits (signed: the sign used one) or ``i + 1`` bits (unsigned), so
    it splits [0.1, 1] into ``2**bits`` equal bins; the code stands for each bin's centre.
    The signed map mirrors those values, and both add the exact values 0 and 1:
    2 * (1 + 2 + ... + 64) + 2 = 256 signed, (2 + 4 + ... + 128) + 2 = 256 unsigned.
    So the signed map is lopsided: +1 is exact but its lowest value is -0.99297, the
    centre of the top bin (bitsandbytes' CPU kernel overwrites that entry of the map it is
    given with -1.0; svlab leaves the table as it is).
    The arithmetic (all in float32, bin centres first, then the decade) follows
    bitsandbytes' ``create_dynamic_map`` so the two tables are bit-identical.

    >>> signed, unsigned = dynamic_map(True), dynamic_map(False)
    >>> signed.shape, signed[0].item(), signed[-1].item(), unsigned[0].item()
    (torch.Size([256]), -0.992968738079071, 1.0, 0.0)
    >>> f"{signed[signed > 0].min().item():.2e}", bool((signed.diff() > 0).all())
    ('5.50e-07', True)
    """
    values = [torch.zeros(1), torch.ones(1)]
    for i in range(EXPONENT_BITS):
        fraction_bits = i if signed else i + 1
        edges = torch.linspace(0.1, 1.0, 2**fraction_bits + 1, dtype=torch.float32)
        centres = (edges[:-1] + edges[1:]) / 2.0 * 10.0 ** (i - (EXPONENT_BITS - 1))
        values.append(centres)
        if signed:
            values.append(-centres)
    return torch.cat(values).sort().values


def linear_map(signed: bool = True) -> torch.Tensor:
    """A uniform 8-bit map, the foil for :func:`dynamic_map`: equal steps over [-1, 1] or [0, 1].

    Signed: the 255 values ``k / 127`` for k = -127 .. 127 (symmetric int8, zero exact, one
    code unused); unsigned: the 256 values ``k / 255``. After block-wise scaling by the
    absmax, anything smaller than half a step (1/254 or 1/510 of the block's largest value)
    becomes exactly zero - which is where most of Adam's second-moment entries live.

    >>> m = linear_map(True); m.shape, m[0].item(), m[127].item(), round(m[128].item(), 5)
    (torch.Size([255]), -1.0, 0.0, 0.00787)
    >>> linear_map(False).shape
    torch.Size([256])
    """
    if signed:
        return torch.arange(-127, 128, dtype=torch.float32) / 127.0
    return torch.arange(0, 256, dtype=torch.float32) / 255.0
