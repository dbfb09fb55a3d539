"""The workbench's plotly panels: weight histogram with its levels, DET curve, training memory."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import plotly.graph_objects as go
import torch

DET_TICKS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9)
DET_LIMITS = (0.0005, 0.95)  # the axes' range: a model at 40-50% EER still shows its knee
RATE_CLIP = 1e-6  # rates of 0 and 1 drawn just off the axes (finite), not along their edges
DET_POINTS = 300  # points a drawn DET curve keeps: 7,000 trials' worth took the browser ~0.1 s
MAX_LEVEL_MARKERS = 2048
HISTOGRAM_BINS = 80
HEIGHT = 340  # px, every panel; the width follows the container


def probit(rates) -> np.ndarray:
    """The normal deviate of each rate (the DET plot's axis). Rates are clipped to
    ``[RATE_CLIP, 1 - RATE_CLIP]`` only to stay finite: a rate beyond the axes' ``DET_LIMITS``
    lies outside the plot, where plotly cuts the curve at the frame, instead of being drawn
    along the frame's edge as if it were the limit.

    >>> probit([0.5, 0.0228]).round(2).tolist()
    [0.0, -2.0]
    >>> bool(probit([0.99])[0] > probit([DET_LIMITS[1]])[0])  # above the frame, not on it
    True
    """
    rates = torch.as_tensor(np.asarray(rates, dtype=np.float64))
    return torch.special.ndtri(rates.clamp(RATE_CLIP, 1 - RATE_CLIP)).numpy()


def det_figure() -> go.Figure:
    """An empty DET plot (probit axes labelled in %) with a trace each for fp32 and quantized.

    No fixed width: the plot takes its container's (the workbench wraps its panels to the
    window); the legend sits in the empty lower-left corner, inside the axes.

    >>> [t.name for t in det_figure().data]
    ['fp32', 'quantized']
    """
    fig = go.Figure()
    fig.add_scatter(x=[], y=[], mode="lines", name="fp32", line={"dash": "dash", "color": "gray"})
    fig.add_scatter(x=[], y=[], mode="lines", name="quantized", line={"color": "crimson"})
    ticks = {
        "tickvals": probit(DET_TICKS).tolist(),
        "ticktext": [f"{100 * t:g}" for t in DET_TICKS],
        "range": probit(DET_LIMITS).tolist(),
        "autorange": False,
    }
    fig.update_layout(
        title="DET curve",
        xaxis={"title": "false alarm rate (%)", **ticks},
        yaxis={"title": "miss rate (%)", **ticks},
        height=HEIGHT,
        autosize=True,
        margin={"l": 50, "r": 10, "t": 40, "b": 40},
        legend={"x": 0.02, "xanchor": "left", "y": 0.02, "yanchor": "bottom"},
    )
    return fig


def det_points(
    far: np.ndarray, frr: np.ndarray, max_points: int = DET_POINTS
) -> tuple[np.ndarray, np.ndarray]:
    """A DET curve's points on probit axes, thinned to at most ``max_points`` of them.

    The points kept are spaced evenly along the curve's length inside the frame (the first
    point at or past each step); so every dropped point lies within one step of a kept one,
    and the curve looks the same while the browser draws a few hundred points, not one per
    trial. The first and last points are kept.

    >>> far = np.linspace(1, 0, 10_000); x, y = det_points(far, 1 - far, max_points=50)
    >>> len(x) <= 50, float(x[0]) == float(probit([1.0])[0]), round(float(y[-1]), 2)
    (True, True, 4.75)
    """
    x, y = probit(far), probit(frr)
    if x.size <= max_points:
        return x, y
    low, high = probit(DET_LIMITS)
    inside = np.stack([np.clip(x, low, high), np.clip(y, low, high)], axis=1)
    length = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(inside, axis=0), axis=1))])
    targets = np.linspace(0.0, length[-1], max_points - 1)
    keep = np.unique(np.append(np.searchsorted(length, targets), x.size - 1))
    return x[keep], y[keep]


def set_det(fig: go.Figure, trace: int, far: np.ndarray, frr: np.ndarray) -> None:
    """Draw one DET curve (false-alarm and miss rates) into trace ``trace`` of ``fig``
    (:func:`det_points`).

    >>> fig = det_figure(); set_det(fig, 1, np.array([1.0, 0.5, 0.0]), np.array([0.0, 0.5, 1.0]))
    >>> float(fig.data[1].x[1])
    0.0
    """
    fig.data[trace].x, fig.data[trace].y = det_points(far, frr)


def histogram_figure() -> go.Figure:
    """An empty weight histogram: fp32 weight counts as bars, quantization levels as markers.

    >>> [t.name for t in histogram_figure().data]
    ['fp32 weights', 'levels']
    """
    fig = go.Figure()
    fig.add_bar(x=[], y=[], name="fp32 weights", marker={"color": "steelblue"})
    fig.add_scatter(
        x=[],
        y=[],
        mode="markers",
        name="levels",
        marker={"symbol": "triangle-up", "size": 10, "color": "crimson"},
    )
    fig.update_layout(
        title="weights",
        xaxis_title="weight value",
        yaxis_title="count",
        height=HEIGHT,
        autosize=True,
        bargap=0.02,
        title_font_size=13,
        margin={"l": 50, "r": 10, "t": 40, "b": 40},
        legend={"x": 0.98, "xanchor": "right", "y": 0.98},
    )
    return fig


def set_histogram(
    fig: go.Figure, layer: str, weight: torch.Tensor, levels: torch.Tensor | None, label: str
) -> None:
    """Show ``weight``'s values and its quantization ``levels`` (``None``: fp32, no levels).

    The weights are counted here in ``HISTOGRAM_BINS`` bins (only the counts go to the
    browser); the levels (all groups' codebook entries, at most ``MAX_LEVEL_MARKERS`` distinct
    ones) are drawn as markers on the x axis, where the weights that round to them lie.

    >>> fig = histogram_figure()
    >>> set_histogram(fig, "fc", torch.tensor([0.0, 1.0, 2.0]), torch.tensor([[0.5, 1.5]]), "1 bit")
    >>> fig.data[1].x.tolist(), fig.layout.title.text, int(fig.data[0].y.sum())
    ([0.5, 1.5], 'fc: 1 bit, 2 levels', 3)
    """
    values = weight.detach().float().reshape(-1).cpu().numpy()
    distinct = np.array([]) if levels is None else np.unique(levels.detach().float().cpu().numpy())
    if distinct.size > MAX_LEVEL_MARKERS:
        distinct = distinct[np.linspace(0, distinct.size - 1, MAX_LEVEL_MARKERS).astype(int)]
    counts, edges = np.histogram(values, bins=HISTOGRAM_BINS)
    with fig.batch_update():
        fig.data[0].x, fig.data[0].y = (edges[1:] + edges[:-1]) / 2, counts
        fig.data[0].width = float(edges[1] - edges[0])
        fig.data[1].x, fig.data[1].y = distinct, np.zeros(distinct.size)
        suffix = "" if levels is None else f", {distinct.size} levels"
        fig.layout.title.text = f"{layer}: {label}{suffix}"


def memory_figure(tables: Mapping, capacity_bytes: int) -> go.Figure:
    """Stacked training-memory bars (GiB) per setting with a dashed line at ``capacity_bytes``.

    ``tables`` maps a setting's label to a :func:`svlab.memory.project` breakdown.

    >>> import pandas as pd
    >>> t = pd.DataFrame({"bytes": [2**30, 2**31]}, index=["parameters", "activations"])
    >>> fig = memory_figure({"a": t}, 11 * 2**30)
    >>> [tr.name for tr in fig.data], fig.layout.shapes[0].y0
    (['parameters', 'activations'], 11.0)
    """
    from svlab.memory.figures import stacked_bar

    fig = stacked_bar(tables, title="Peak of one training step (projected)",
                      capacity_bytes=capacity_bytes)
    fig.update_layout(height=HEIGHT, autosize=True, margin={"l": 50, "r": 10, "t": 40, "b": 40})
    return fig
