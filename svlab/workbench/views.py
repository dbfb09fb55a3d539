"""What the workbench shows besides its controls: the numbers panel, the pick summary, and
plotly figures in ipywidgets that a reloaded browser tab shows as they are now."""

from __future__ import annotations

import ipywidgets as w
import plotly.graph_objects as go

from svlab.metrics import format_difference
from svlab.workbench.engine import Bits
from svlab.workbench.figures import HEIGHT

PLOTLY_MIME = "application/vnd.plotly.v1+json"
# Dimmed while busy; the figure outputs get their plot's height (JupyterLab's plotly renderer
# sizes its plot to 100% of a parent that would otherwise have none).
CSS = (
    "<style>.svlab-busy {opacity: 0.6; cursor: progress;}"
    f" .svlab-figure .jp-RenderedPlotly {{height: {HEIGHT + 10}px;}}</style>"
)


def numbers_html(summary: dict[str, float]) -> str:
    """The numbers panel: EER (with its 95% speaker-bootstrap interval) and minDCF against
    fp32, the paired EER difference from fp32 on the same trials, packed size and ratio.

    >>> text = numbers_html({"eer": 0.05, "eer_low": 0.03, "eer_high": 0.08, "delta": 0.01,
    ...                      "delta_low": -0.004, "delta_high": 0.02, "min_dcf": 0.5,
    ...                      "fp32_eer": 0.04, "fp32_min_dcf": 0.4, "size_kb": 100.0,
    ...                      "fp32_size_kb": 800.0, "ratio": 8.0})
    >>> "<b class='svlab-eer'>5.00%</b> [3.0, 8.0]" in text, "not resolved" in text
    (True, True)
    """
    delta = (summary["delta"], summary["delta_low"], summary["delta_high"])
    rows = [
        ("EER (95% interval)",
         f"<b class='svlab-eer'>{100 * summary['eer']:.2f}%</b> "
         f"[{100 * summary['eer_low']:.1f}, {100 * summary['eer_high']:.1f}]",
         f"{100 * summary['fp32_eer']:.2f}%"),
        ("EER - fp32, paired", f"<span class='svlab-delta'>{format_difference(delta)}</span>",
         ""),
        ("minDCF (p=0.01)", f"<b class='svlab-mindcf'>{summary['min_dcf']:.3f}</b>",
         f"{summary['fp32_min_dcf']:.3f}"),
        ("size", f"<b class='svlab-size'>{summary['size_kb']:.1f} KB</b>",
         f"{summary['fp32_size_kb']:.1f} KB"),
        ("compression", f"<b class='svlab-ratio'>{summary['ratio']:.1f}x</b>", "1.0x"),
    ]  # fmt: skip
    body = "".join(f"<tr><td>{a}</td><td>{b}</td><td>{c}</td></tr>" for a, b, c in rows)
    head = "<tr><th></th><th>now</th><th>fp32</th></tr>"
    return f"<table style='font-size:14px'>{head}{body}</table>"


class FigureView:
    """A plotly figure shown in an ipywidgets ``Output``, sent whole on every :meth:`show`.

    An Output's content is widget state that the kernel holds: a reloaded browser tab (or a
    second view of the cell) shows the figure as it is now. A plotly FigureWidget sends only
    changes, which a view that was not open at the time never receives, so after a reload its
    title and bars could come from different moves. ``figure`` is the Python state to change.

    >>> view = FigureView(go.Figure(go.Bar(y=[1, 2]), layout={"title": "a"}), "svlab-x")
    >>> view.figure.layout.title.text = "b"; view.show()
    >>> view.output.outputs[0]["data"][PLOTLY_MIME]["layout"]["title"]["text"]
    'b'
    """

    def __init__(self, figure: go.Figure, css_class: str) -> None:
        self.figure = figure
        self.output = w.Output(layout=w.Layout(flex="1 1 360px", min_width="300px"))
        self.output.add_class("svlab-figure")
        self.output.add_class(css_class)
        self.show()

    def show(self) -> None:
        """Send the figure's current data and layout to every view."""
        bundle = {**self.figure.to_plotly_json(), "config": {"responsive": True,
                                                             "displaylogo": False}}
        title = self.figure.layout.title.text or "figure"
        self.output.outputs = ({
            "output_type": "display_data",
            "data": {PLOTLY_MIME: bundle, "text/plain": f"plotly figure: {title}"},
            "metadata": {},
        },)


def pick_summary(
    deltas: dict[str, float],
    bit_map: dict[str, Bits],
    tolerance: float,
    together: tuple[float, float, float] | None = None,
) -> str:
    """One or two lines on a sensitivity pick: how many layers were quantized, the kept ones
    nearest the ``tolerance``, and (``together``: the paired difference from fp32 with its
    interval, as fractions) what the picked layers cost quantized all at once, which is not
    the sum of what each cost alone. EER changes are shown in % points.

    >>> print(pick_summary({"a": 0.02, "b": 0.009, "c": 0.001}, {"a": None, "b": None, "c": 2},
    ...                    0.005, together=(0.001, -0.002, 0.004)))
    1 of 3 layers at 2 bits (EER +0.10 points alone; together +0.10 points [-0.20, +0.40], \
not resolved); 2 kept fp32, the closest: b +0.90, a +2.00
    >>> print(pick_summary({"a": 0.02, "b": 0.009}, {"a": None, "b": None}, 0.005))
    no layer stays within +0.50 points alone: all 2 kept fp32, the closest: b +0.90, a +2.00. \
Raise the tolerance to 0.9 or pick more bits.
    """
    picked = [layer for layer, bits in bit_map.items() if bits is not None]
    kept = sorted((layer for layer in bit_map if bit_map[layer] is None), key=deltas.get)
    closest = ", ".join(f"{short_name(layer)} {100 * deltas[layer]:+.2f}" for layer in kept[:3])
    more = f" and {len(kept) - 3} more" if len(kept) > 3 else ""
    if not picked:
        return (f"no layer stays within +{100 * tolerance:.2f} points alone: all {len(kept)} "
                f"kept fp32, the closest: {closest}{more}. Raise the tolerance to "
                f"{100 * deltas[kept[0]]:.1f} or pick more bits.")
    worst = max(deltas[layer] for layer in picked)
    combined = "" if together is None else f"; together {format_difference(together)}"
    text = (f"{len(picked)} of {len(bit_map)} layers at {bit_map[picked[0]]} bits "
            f"(EER {100 * worst:+.2f} points alone{combined})")
    return text + (f"; {len(kept)} kept fp32, the closest: {closest}{more}" if kept else "")


def short_name(layer: str) -> str:
    """A layer's name as the sliders show it: without ``.weight``.

    >>> short_name("stem.0.0.weight")
    'stem.0.0'
    """
    return layer.removesuffix(".weight")
