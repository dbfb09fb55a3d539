"""Plots of training memory: stacked bars by category, and a step's timeline."""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd
import plotly.graph_objects as go

from svlab.memory import GPU_2080TI_BYTES


def long_table(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Breakdowns keyed by setting (model, batch size, depth...) as one long table.

    >>> from svlab.step_memory import category_table
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

    >>> from svlab.step_memory import category_table
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
