"""The notebooks' library figures read right: colours match legends, bit axes are categories,
every layer is named, log ticks are one per decade or fewer."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from svlab.memory.figures import category_lines, phase_positions, timeline_figure
from svlab.quant.sensitivity import sensitivity_heatmap, sensitivity_scatter


def sweep() -> pd.DataFrame:
    """Notebook 03's shape: two maps, a block-size sweep, two measures."""
    sizes = [64, 256, 1024, 4096]
    return pd.DataFrame([
        {"blocksize": b, "map": kind, "v flushed %": f * i, "largest step / true": 10.0 ** i}
        for kind, f in (("dynamic", 0.1), ("linear", 3.0)) for i, b in enumerate(sizes, 1)
    ])


def test_category_lines_one_colour_and_one_legend_entry_per_category():
    frame = sweep()
    fig = category_lines(frame, "blocksize", {"v flushed %": "v flushed (%)",
                                              "largest step / true": "largest step"},
                         by="map", log_x=True, log_y=["largest step / true"])
    legend = {t.name: t.line.color for t in fig.data if t.showlegend}
    assert list(legend) == ["dynamic", "linear"] and len(set(legend.values())) == 2
    for trace in fig.data:  # every line, in every subplot, wears its legend entry's colour
        assert trace.line.color == trace.marker.color == legend[trace.name]
        assert trace.legendgroup == trace.name
    by_axis = {(t.xaxis, t.name): t for t in fig.data}
    for (axis, name), trace in by_axis.items():
        rows = frame[frame["map"] == name]
        column = "v flushed %" if axis == "x" else "largest step / true"
        assert list(trace.y) == list(rows[column]) and list(trace.x) == list(rows["blocksize"])
    assert fig.layout.xaxis.type == fig.layout.xaxis2.type == "log"
    assert fig.layout.yaxis.type != "log" and fig.layout.yaxis2.type == "log"
    with pytest.raises(ValueError, match=r"no column\(s\) \['step'\]"):
        category_lines(frame, "blocksize", {"step": "s"}, by="map")


def test_heatmap_has_equal_width_bit_categories_and_names_every_layer():
    bits = [1, 2, 3, 4, 6, 8]
    layers = [f"stages.{i}.0.branch.0.0.weight" for i in range(23)]
    rng = np.random.default_rng(0)
    table = pd.DataFrame(10.0 ** rng.uniform(-9, -1, (len(layers), len(bits))), index=layers,
                         columns=bits)
    table.iloc[0, 0] = 0.0  # a zero cost is drawn at the floor, not as -inf
    fig = sensitivity_heatmap(table)
    assert fig.layout.xaxis.type == "category"
    assert list(fig.data[0].x) == ["1", "2", "3", "4", "6", "8"]
    assert list(fig.layout.xaxis.categoryarray) == ["1", "2", "3", "4", "6", "8"]
    assert fig.layout.yaxis.tickmode == "array" and list(fig.layout.yaxis.tickvals) == layers
    assert list(fig.layout.yaxis.ticktext) == layers and fig.layout.yaxis.tickfont.size <= 11
    assert fig.layout.height >= 16 * len(layers)
    expected = [[math.log10(max(v, 1e-12)) for v in row] for row in table.to_numpy()]
    assert np.allclose(fig.data[0].z, expected)
    assert sensitivity_heatmap(table.iloc[:3]).layout.height < fig.layout.height
    with pytest.raises(ValueError, match="empty"):
        sensitivity_heatmap(pd.DataFrame())


@pytest.mark.parametrize("low,high", [(1e-4, 1e-2), (1e-12, 1e3)])
def test_scatter_log_ticks_one_per_decade_or_fewer(low, high):
    layers = [f"l{i}" for i in range(8)]
    estimate = pd.Series(np.geomspace(low, high, 8), index=layers)
    measured = pd.Series(np.geomspace(low, high, 8)[[0, 2, 1, 3, 5, 4, 7, 6]], index=layers)
    fig = sensitivity_scatter(estimate, measured)
    rho = estimate.corr(measured, method="spearman")
    assert fig.layout.title.text.endswith(f"(Spearman rho {rho:.2f})")
    decades = math.log10(high / max(low, 1e-9))  # drawn from the floor up
    for axis in (fig.layout.xaxis, fig.layout.yaxis):
        assert axis.type == "log" and axis.exponentformat == "power"
        assert isinstance(axis.dtick, int) and axis.dtick >= 1
        assert decades / axis.dtick <= 6  # at most 6 labels (plus the ends): they cannot touch
    assert list(fig.data[0].text) == layers


def test_scatter_names_layers_missing_from_one_side():
    estimate = pd.Series([1e-3, 1e-2], index=["conv", "fc"])
    measured = pd.Series([1e-3, 1e-2], index=["conv", "emb"])
    with pytest.raises(ValueError, match=r"layers \['emb', 'fc'\] are in only one"):
        sensitivity_scatter(estimate, measured)


def test_timelines_of_different_lengths_line_up_phase_by_phase():
    """A reversible step runs more ops than its vanilla twin; on the phase axis both start
    each phase at the same place, and each line keeps its peak."""
    short = pd.DataFrame({"phase": ["forward"] * 2 + ["backward"] * 2 + ["step"],
                          "live_bytes": [1, 3, 2, 1, 1]})
    long = pd.DataFrame({"phase": ["forward"] * 6 + ["backward"] * 8 + ["step"] * 2,
                         "live_bytes": list(range(16))})
    for line in (short, long):
        starts = phase_positions(line).groupby(line["phase"], sort=False).min()
        assert starts.tolist() == [0.0, 1.0, 2.0]
    fig = timeline_figure({"short": short, "long": long})
    assert [float(t.y.max()) for t in fig.data] == [3 / 2**30, 15 / 2**30]
    assert [a.text for a in fig.layout.annotations] == ["forward", "backward", "step"]
