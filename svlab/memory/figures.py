"""Plots of training memory: stacked bars by category, a step's timeline, state-error sweeps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio

from svlab.memory.projection import GPU_2080TI_BYTES


def long_table(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Breakdowns keyed by setting (model, batch size, depth...) as one long table.

    >>> from svlab.memory.step import category_table
    >>> table = category_table({"parameters": 2**20})
    >>> long_table({"a": table})[["setting", "category", "MiB"]]
      setting    category  MiB
    0       a  parameters  1.0
    """
    rows = [
        {"setting": str(setting), "category": category, "bytes": int(b), "MiB": b / 2**20}
        for setting, table in tables.items()
        for category, b in table["bytes"].items()
    ]
    return pd.DataFrame(rows)


def stacked_bar(
    tables: Mapping[str, pd.DataFrame],
    title: str = "Training memory by category",
    capacity_bytes: int | None = GPU_2080TI_BYTES,
    xlabel: str = "setting",
):
    """A plotly stacked bar per setting (a model, batch size or depth), in GiB, with a line at
    ``capacity_bytes`` (the 2080Ti's 11 GiB by default; ``None`` for no line).

    >>> from svlab.memory.step import category_table
    >>> fig = stacked_bar({"tiny": category_table({"parameters": 2**30, "activations": 2**31})})
    >>> [trace.name for trace in fig.data], fig.layout.barmode
    (['parameters', 'activations'], 'stack')
    """
    data = long_table(tables)
    fig = go.Figure()
    for category in dict.fromkeys(data["category"]):
        part = data[data["category"] == category]
        fig.add_bar(name=category, x=part["setting"], y=part["bytes"] / 2**30)
    fig.update_layout(barmode="stack", title=title, xaxis_title=xlabel, yaxis_title="GiB")
    if capacity_bytes is not None:
        fig.add_hline(
            y=capacity_bytes / 2**30,
            line_dash="dash",
            annotation_text=f"{capacity_bytes / 2**30:.0f} GiB (2080Ti)",
        )
    return fig


PHASES = ("forward", "backward", "step")
PHASE_COLOURS = ("#e8f0fe", "#fdeee8", "#eef7ea")
PHASE_SLICES = 500  # points per phase and line: each the most bytes alive in its slice


def phase_positions(line: pd.DataFrame) -> pd.Series:
    """Each op's place on an axis where every phase spans one unit: forward [0, 1), backward
    [1, 2), step [2, 3), the op at its rank within its phase over the phase's op count. Two
    steps with different op counts (a reversible one re-runs its forward) then line up.

    >>> line = pd.DataFrame({"phase": ["forward", "forward", "backward", "step"]})
    >>> phase_positions(line).tolist()
    [0.0, 0.5, 1.0, 2.0]
    """
    rank = line.groupby("phase", sort=False).cumcount()
    size = line.groupby("phase", sort=False)["phase"].transform("size")
    return rank / size + line["phase"].map(PHASES.index)


def timeline_figure(
    timelines: Mapping[str, pd.DataFrame], title: str = "Bytes live during one training step"
):
    """A plotly line per setting: GiB live through one step (see :func:`timeline`), the three
    phases shaded and aligned (:func:`phase_positions`), each line the most bytes alive in
    each of ``PHASE_SLICES`` slices per phase (the peaks stay; the file stays small).

    >>> from svlab.memory import timeline
    >>> line = timeline("rev_resnet18", batch_size=2, frames=50, num_classes=0)
    >>> fig = timeline_figure({"rev_resnet18": line})
    >>> fig.data[0].name, float(fig.data[0].y.max()) == float(line["live_bytes"].max() / 2**30)
    ('rev_resnet18', True)
    >>> [shape.x0 for shape in fig.layout.shapes]
    [0, 1, 2]
    """
    fig = go.Figure()
    for index, (phase, colour) in enumerate(zip(PHASES, PHASE_COLOURS, strict=True)):
        fig.add_vrect(x0=index, x1=index + 1, fillcolor=colour, opacity=0.6, line_width=0,
                      annotation_text=phase, annotation_position="top left")
    for name, line in timelines.items():
        slices = (phase_positions(line) * PHASE_SLICES).astype(int)
        curve = (line["live_bytes"] / 2**30).groupby(slices).max()
        fig.add_scatter(x=curve.index / PHASE_SLICES, y=curve.values, name=name, mode="lines",
                        hovertemplate="%{y:.3f} GiB")
    fig.update_layout(title=title, xaxis_title="position within the phase", yaxis_title="GiB",
                      xaxis={"tickvals": [0.5, 1.5, 2.5], "ticktext": list(PHASES)})
    return fig


def category_colours(categories: Sequence[str]) -> dict[str, str]:
    """One colour per category, in order, from the default template's colour cycle.

    >>> category_colours(["dynamic", "linear"])
    {'dynamic': '#636efa', 'linear': '#EF553B'}
    """
    cycle = pio.templates[pio.templates.default].layout.colorway
    return {name: cycle[i % len(cycle)] for i, name in enumerate(categories)}


def category_lines(
    frame: pd.DataFrame,
    x: str,
    panels: Mapping[str, str],
    by: str,
    log_x: bool = False,
    log_y: Sequence[str] = (),
    height: int = 380,
):
    """Side-by-side line plots, one per column of ``panels`` (column -> subplot title), one
    line per value of ``by`` in every subplot: a category has one colour in all of them and one
    legend entry (a legend group), so the legend reads for every subplot. ``log_y`` lists the
    columns drawn on a log axis.

    >>> frame = pd.DataFrame({"block": [64, 256, 64, 256], "map": ["d", "d", "l", "l"],
    ...                       "err": [1.0, 2.0, 3.0, 4.0], "peak": [5.0, 6.0, 7.0, 8.0]})
    >>> fig = category_lines(frame, "block", {"err": "error", "peak": "peak"}, by="map")
    >>> [(t.name, t.line.color, t.showlegend) for t in fig.data]  # doctest: +NORMALIZE_WHITESPACE
    [('d', '#636efa', True), ('d', '#636efa', False), ('l', '#EF553B', True),
     ('l', '#EF553B', False)]
    """
    from plotly.subplots import make_subplots

    missing = [c for c in (x, by, *panels) if c not in frame.columns]
    if missing:
        raise ValueError(f"category_lines: no column(s) {missing} in {list(frame.columns)}")
    colours = category_colours([str(v) for v in dict.fromkeys(frame[by])])
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=list(panels.values()))
    for name, colour in colours.items():
        rows = frame[frame[by].astype(str) == name]
        for col, column in enumerate(panels, 1):
            fig.add_scatter(x=rows[x], y=rows[column], name=name, legendgroup=name,
                            showlegend=col == 1, line={"color": colour},
                            marker={"color": colour}, row=1, col=col)
    fig.update_xaxes(title_text=x, type="log" if log_x else None)
    for col, column in enumerate(panels, 1):
        if column in log_y:
            fig.update_yaxes(type="log", row=1, col=col)
    fig.update_layout(height=height, legend_title_text=by)
    return fig
