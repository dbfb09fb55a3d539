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


def timeline_figure(
    timelines: Mapping[str, pd.DataFrame], title: str = "Bytes live during one training step"
):
    """A plotly line per setting: GiB live after each op of a step (see :func:`timeline`),
    with the phase (forward, backward, step) and module in the hover text.

    >>> from svlab.memory import timeline
    >>> line = timeline("rev_resnet18", batch_size=2, frames=50, num_classes=0)
    >>> fig = timeline_figure({"rev_resnet18": line})
    >>> fig.data[0].name, len(fig.data[0].x) == len(line)
    ('rev_resnet18', True)
    """
    fig = go.Figure()
    for name, line in timelines.items():
        fig.add_scatter(
            x=line.index, y=line["live_bytes"] / 2**30, name=name, mode="lines",
            text=line["phase"] + " · " + line["module"] + " · " + line["op"],
            hovertemplate="op %{x}: %{y:.3f} GiB<br>%{text}",
        )
    fig.update_layout(title=title, xaxis_title="op (in the order they ran)", yaxis_title="GiB")
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
