"""What a lesson states about its numbers, checked within a tolerance that holds on any machine.

A notebook's printed EER moves in its last digit from one machine to another (other CPU kernels
give scores that differ around 1e-7, and an EER that sits at a rounding edge prints either way).
So the lessons do not compare printed digits: beside each volatile printout, a check cell states
the numbers the text relies on and checks them within a tolerance, ``EER_POINTS`` (0.2 EER
points), that a meaningful change (0.3 points or more) exceeds. A check prints only what it
states, never the measured value, so its output is the same on every machine; when a number
moves beyond the tolerance the check raises :class:`LessonCheckError`, naming both.

Fine-tuning is the exception. A few dozen steps of SGD amplify those 1e-7 differences: the same
ci notebook, run under other kernels, moved a fine-tuned multi-bit model's EER by up to 0.3
points and a fine-tuned 1-bit model's by up to 1.1 (a latent weight near zero crosses it on one
machine and not on another); on another x86-64 machine the portable kernels moved the adaptive
binarizer's, after 30 steps, by 2.0 (14.8% to 16.8%; its verdict against fp32 fine-tuned held).
Fine-tuned results are therefore checked within ``FINE_TUNED_POINTS`` (1.0) and
``BINARY_FINE_TUNED_POINTS`` (2.5): they still catch a fine-tuning that stops working (1-bit
models left untuned sit 20-25 points above), not a 0.3-point change, and the lessons say so.

Calibrated compression (``svlab.quant.compress``) amplifies them too: GPTQ rounds each weight
by the calibration statistics, and a weight near a rounding boundary goes either way; the same
ci notebook under ATen's portable kernels moved the real CAM++'s 3-bit EER by 0.38 points. It is
checked within ``CALIBRATED_POINTS`` (1.0).

A stated table row reads as svlab prints it (``"9.6% [7.5, 12.4]"`` for a control,
``"10.9% [8.6, 13.5] +1.22 points [-0.10, +2.66], not resolved"`` for a system against it):
:func:`stated_rows` prints a table's rows in that form, to paste into a check cell.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import pandas as pd

EER_POINTS = 0.2
CALIBRATED_POINTS = 1.0
FINE_TUNED_POINTS = 1.0
BINARY_FINE_TUNED_POINTS = 2.5
_NUMBER = r"[+-]?\d+(?:\.\d+)?"
_EER = re.compile(rf"^\s*(?P<eer>{_NUMBER})% \[(?P<low>{_NUMBER}), (?P<high>{_NUMBER})\]")
_DIFFERENCE = re.compile(
    rf"(?P<difference>{_NUMBER}) points \[(?P<low>{_NUMBER}), (?P<high>{_NUMBER})\], "
    r"(?P<verdict>not resolved|resolved)\s*$"
)


class LessonCheckError(AssertionError):
    """A number a lesson states moved beyond its tolerance on this machine."""


def expect_near(what: str, value: float, stated: float, within: float) -> None:
    """Check that ``value`` is within ``within`` of ``stated``, and print the statement.

    The printed line holds only ``stated`` and ``within``, so it reads the same on any machine.

    >>> expect_near("tutorial EER (%)", 9.65, 9.7, within=EER_POINTS)
    tutorial EER (%): 9.7 within 0.2
    >>> expect_near("tutorial EER (%)", 10.0, 9.7, within=EER_POINTS)
    Traceback (most recent call last):
    ...
    svlab.checks.LessonCheckError: tutorial EER (%): stated 9.7 within 0.2, measured 10
    """
    if within < 0:
        raise ValueError(f"a tolerance is not negative, got within={within}")
    if not abs(float(value) - stated) <= within:
        raise LessonCheckError(
            f"{what}: stated {stated:g} within {within:g}, measured {float(value):.6g}"
        )
    print(f"{what}: {stated:g} within {within:g}")


def read_difference(text: str) -> tuple[float, float, float, str]:
    """A paired difference as svlab prints it, read back: ``(points, low, high, verdict)``.

    >>> read_difference("+1.22 points [-0.10, +2.66], not resolved")
    (1.22, -0.1, 2.66, 'not resolved')
    """
    match = _DIFFERENCE.search(text)
    if match is None:
        raise ValueError(f"not a difference as svlab prints it ('+1.2 points [..], ...'): {text!r}")
    return (float(match["difference"]), float(match["low"]), float(match["high"]),
            match["verdict"])


def _edge(low: float, high: float) -> float:
    """How far the interval's nearer end lies from zero (the margin of its verdict)."""
    return min(abs(low), abs(high))


def expect_difference(
    what: str, measured: str | Sequence[float], stated: str, within: float = EER_POINTS
) -> None:
    """Check a paired EER difference and its interval against the stated one, in points.

    ``measured`` is the difference as printed (``format_difference``) or as an interval of
    fractions ``(difference, low, high)``. Each number must lie within ``within`` points of the
    stated one. The verdict must match, except where an end of the stated interval lies within
    ``within`` of zero: there the verdict may differ on another machine, and the line says so.

    >>> expect_difference("4 bits", (-0.0031, -0.0150, 0.0066),
    ...                   "-0.32 points [-1.49, +0.64], not resolved")
    4 bits: -0.32 points [-1.49, +0.64], not resolved, each within 0.2 points
    >>> expect_difference("4 bits", "+0.20 points [-0.90, +1.20], not resolved",
    ...                   "-0.32 points [-1.49, +0.64], not resolved")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    svlab.checks.LessonCheckError: 4 bits: the difference stated -0.32 within 0.2 points, ...
    """
    print(_difference_line(what, measured, stated, within))


def _difference_line(what: str, measured: str | Sequence[float], stated: str,
                     within: float) -> str:
    """The checking of `expect_difference`, returning its line without printing it."""
    points, low, high, verdict = read_difference(stated)
    if isinstance(measured, str):
        got = read_difference(measured)
    else:
        got = (*(100 * float(v) for v in measured[:3]),
               "resolved" if measured[1] > 0 or measured[2] < 0 else "not resolved")
    for name, value, expected in zip(("the difference", "its low end", "its high end"), got[:3],
                                     (points, low, high), strict=True):
        if not abs(value - expected) <= within:
            raise LessonCheckError(f"{what}: {name} stated {expected:+.2f} within {within:g} "
                                   f"points, measured {value:+.2f}")
    at_edge = _edge(low, high) < within
    if got[3] != verdict and not at_edge:
        raise LessonCheckError(f"{what}: stated {verdict}, measured {got[3]} ({stated})")
    line = f"{what}: {stated.strip()}, each within {within:g} points"
    if at_edge:
        line += f" (an end lies within {within:g} of zero: the verdict may differ elsewhere)"
    return line


def expect_comparison(
    table: pd.DataFrame, stated: Mapping[str, str], within: float = EER_POINTS
) -> None:
    """Check each stated system of a :func:`svlab.comparison.compare` table, in EER points.

    ``stated`` maps a system to its row as printed: its ``EER`` text, followed for a system other
    than the control by its ``vs control`` text (as :func:`stated_rows` prints them). The EER and
    its interval must lie within ``within`` points of the stated ones, the difference as in
    :func:`expect_difference`. Systems not stated are not checked.

    >>> from svlab.comparison import compare
    >>> from svlab.metrics import simulate_trials
    >>> sim = simulate_trials(30, 8, seed=1)
    >>> pairs = [(f"{e}/s/1.wav", f"{t}/s/2.wav") for e, t in zip(sim.enroll_speakers,
    ...                                                          sim.test_speakers)]
    >>> table = compare({"a": sim.scores_a, "b": sim.scores_b}, sim.labels, pairs, control="a",
    ...                 resamples=200)
    >>> expect_comparison(table, stated_rows(table, echo=False))  # doctest: +ELLIPSIS
    a: EER ...
    b: EER ... resolved, each within 0.2 points
    """
    rows = table.set_index("system")
    for system, text in stated.items():
        if system not in rows.index:
            raise ValueError(f"{system!r} is not a system of the table: {list(rows.index)}")
        match = _EER.match(text)
        if match is None:
            raise ValueError(f"{system}: not an EER as svlab prints it ('9.6% [7.5, 12.4]'): "
                             f"{text!r}")
        row = rows.loc[system]
        for name, column, key in (("EER", "eer", "eer"), ("its low end", "eer_low", "low"),
                                  ("its high end", "eer_high", "high")):
            value, expected = 100 * float(row[column]), float(match[key])
            if not abs(value - expected) <= within:
                raise LessonCheckError(f"{system}: {name} stated {expected:.1f}% within "
                                       f"{within:g} points, measured {value:.2f}%")
        eer_text = match.group(0).strip()
        rest = text[match.end():].strip()
        if rest:
            measured = (row["difference"], row["difference_low"], row["difference_high"])
            checked = _difference_line(system, measured, rest, within)
            line = f"{system}: EER {eer_text}, {checked[len(system) + 2:]}"
        else:
            line = f"{system}: EER {eer_text}, each within {within:g} points"
        print(line)


def stated_rows(table: pd.DataFrame, echo: bool = True) -> dict[str, str]:
    """A comparison table's rows as a check cell states them: system -> "EER [+ vs control]".

    >>> table = pd.DataFrame({"system": ["a", "b"],
    ...                       "EER": ["9.6% [7.5, 12.4]", "10.9% [8.6, 13.5]"],
    ...                       "vs control": ["", "+1.22 points [-0.10, +2.66], not resolved"]})
    >>> rows = stated_rows(table)
    {'a': '9.6% [7.5, 12.4]',
     'b': '10.9% [8.6, 13.5] +1.22 points [-0.10, +2.66], not resolved'}
    """
    rows = {system: f"{eer} {difference}".strip() for system, eer, difference
            in zip(table["system"], table["EER"], table["vs control"], strict=True)}
    if echo:
        print("{" + ",\n ".join(f"{k!r}: {v!r}" for k, v in rows.items()) + "}")
    return rows
