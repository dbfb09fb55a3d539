"""The ipywidgets workbench: turn a layer's bits, see its weights, size, EER and DET move at once.

:class:`Workbench` wires sliders and buttons to a :class:`svlab.workbench.engine.LiveQuantizer`;
:class:`MemoryPanel` (:mod:`svlab.workbench.memory_panel`) wires training settings to
:func:`svlab.memory.project`. Every control is an
attribute, so a test sets ``wb.layer_sliders["embedding.weight"].value = "2"`` and reads the
numbers back from ``wb.numbers.value`` exactly as a learner sees them.
"""

from __future__ import annotations

import html
from collections.abc import Iterator
from contextlib import contextmanager
from time import perf_counter

import ipywidgets as w

from svlab.workbench.engine import BINARY_SCHEMES, QUANTIZERS, Bits, LiveQuantizer
from svlab.workbench.figures import (
    det_figure,
    histogram_figure,
    set_det,
    set_histogram,
)
from svlab.workbench.memory_panel import MemoryPanel
from svlab.workbench.views import (
    CSS,
    FigureView,
    numbers_html,
    pick_summary,
    short_name,
)

__all__ = ["BITS_OPTIONS", "MIXED", "MemoryPanel", "Workbench", "bits_option", "bits_value",
           "dashboard"]
BITS_OPTIONS = ("1", "2", "3", "4", "5", "6", "7", "8", "fp32")
MIXED = "mixed"  # the "all layers" slider's reading when the layers' widths differ
QUANTIZER_LABELS = {
    "kmeans": "k-means",
    "uniform": "uniform",
    "sign": "binary: sign",
    "static": "binary: static scale",
    "adaptive": "binary: adaptive",
}
GUIDE = (
    "Move a layer's slider: that layer is re-quantized, the evaluation utterances re-embedded "
    "from that layer on, the trials re-scored. Binary quantizers act on layers at 1 bit (the "
    "others use k-means); the adaptive one starts equal to the static one, its scale and "
    "threshold are learned only by fine-tuning (notebook 06)."
)


def bits_value(option: str) -> Bits:
    """A slider's option as bits: ``"4"`` is 4, ``"fp32"`` is ``None``.

    >>> bits_value("4"), bits_value("fp32")
    (4, None)
    """
    return None if option == "fp32" else int(option)


def bits_option(bits: Bits) -> str:
    """Bits as a slider option: 4 is ``"4"``, ``None`` is ``"fp32"``.

    >>> bits_option(None), bits_option(2)
    ('fp32', '2')
    """
    return "fp32" if bits is None else str(bits)


class Workbench:
    """Per-layer bits sliders, a global one, quantizer and presets, and the live panels.

    ``budget_kb`` starts the mixed-precision budget (default: an eighth of the fp32 size).
    While an action computes, the panel carries the CSS class ``svlab-busy`` (dimmed),
    :attr:`status` says what is computing and, for all but a single slider move or histogram
    pick, every control is disabled; the long presets move :attr:`progress`. Afterwards
    :attr:`status` gives the seconds from the event to the last figure sent.

    >>> import numpy as np, torch
    >>> from svlab.evaluate import EvalSet
    >>> from svlab.models import ResNet
    >>> _ = torch.manual_seed(0)
    >>> net = ResNet([1, 1], 2, feat_dim=8, embed_dim=4, strides=(1, 2))
    >>> keys = ["s1/a.wav", "s1/b.wav", "s2/c.wav"]  # speaker/utterance, as in VoxCeleb
    >>> evalset = EvalSet(keys, [torch.randn(3, 6, 8)], torch.zeros(3, 8),
    ...                   [(keys[0], keys[1]), (keys[0], keys[2]), (keys[1], keys[2])],
    ...                   np.array([1, 0, 0]))
    >>> wb = Workbench(LiveQuantizer(net, evalset))
    >>> wb.layer_sliders["embedding.weight"].value = "2"
    >>> wb.live.bits["embedding.weight"], wb.layer_picker.value, wb.global_slider.disabled
    (2, 'embedding.weight', False)
    """

    def __init__(self, live: LiveQuantizer, budget_kb: float | None = None) -> None:
        self.live = live
        self._depth = 0  # actions under way (one inside another: the outer one reports)
        self._syncing = False  # controls being set to match the state: not user events
        wide = {"description_width": "initial"}
        slider_style = {"description_width": "150px"}
        slider_layout = w.Layout(width="100%", max_width="400px")
        self.global_slider = w.SelectionSlider(
            options=(*BITS_OPTIONS, MIXED), value="fp32", description="all layers",
            continuous_update=False, layout=slider_layout, style=slider_style,
        )
        self.layer_sliders = {
            layer: w.SelectionSlider(
                options=BITS_OPTIONS, value="fp32", description=short_name(layer),
                continuous_update=False, layout=slider_layout, style=slider_style,
            )
            for layer in live.layers
        }
        for slider in self.layer_sliders.values():
            slider.add_class("svlab-layer-slider")
        self.quantizer = w.Dropdown(
            options=[(QUANTIZER_LABELS[q], q) for q in QUANTIZERS], value=live.quantizer,
            description="quantizer", style=wide,
        )
        self.granularity = w.ToggleButtons(
            options=["tensor", "channel"], value=live.granularity, description="codebooks",
            tooltips=["one codebook per layer", "one codebook per output channel"], style=wide,
        )
        self.layer_picker = w.Dropdown(options=live.layers, description="histogram of",
                                       style=wide)
        self.preset_buttons = {
            bits: w.Button(description=f"uniform {bits} bit") for bits in (8, 4, 2)
        }
        fp32_kb = live.size_bytes(dict.fromkeys(live.layers)) / 1024
        self.budget = w.FloatText(
            value=round(budget_kb or fp32_kb / 8, 1), description="budget (KB)", style=wide,
            layout=w.Layout(width="180px"),
        )
        self.mixed_button = w.Button(description="mixed precision", button_style="info")
        self.pick_bits = w.Dropdown(options=BITS_OPTIONS[:-1], value="2", description="pick at",
                                    style=wide, layout=w.Layout(width="110px"))
        self.tolerance = w.FloatText(value=0.5, description="max EER rise (% points)",
                                     style=wide, layout=w.Layout(width="230px"))
        self.pick_button = w.Button(description="sensitivity pick", button_style="info")
        self.message = w.HTML()
        self.message.add_class("svlab-message")
        self.status = w.HTML()
        self.status.add_class("svlab-status")
        self.progress = w.IntProgress(min=0, max=1, layout=w.Layout(visibility="hidden"),
                                      style={"description_width": "initial"})
        self.progress.add_class("svlab-progress")
        self.numbers = w.HTML()
        self.numbers.add_class("svlab-numbers")
        self.histogram_view = FigureView(histogram_figure(), "svlab-histogram")
        self.det_view = FigureView(det_figure(), "svlab-det")
        self.histogram, self.det = self.histogram_view.figure, self.det_view.figure
        set_det(self.det, 0, live.fp32.far, live.fp32.frr)
        self.panel = self._layout()
        self._connect()
        self.refresh()

    def _layout(self) -> w.VBox:
        wrap = w.Layout(flex_flow="row wrap", align_items="center")
        presets = w.VBox([
            w.HBox([self.quantizer, self.granularity], layout=wrap),
            w.HBox(list(self.preset_buttons.values()), layout=wrap),
            w.HBox([self.budget, self.mixed_button], layout=wrap),
            w.HBox([self.pick_bits, self.tolerance, self.pick_button], layout=wrap),
            w.HBox([self.status, self.progress], layout=wrap),
            self.message,
        ])
        sliders = w.VBox(
            [self.global_slider, *self.layer_sliders.values()],
            layout=w.Layout(max_height="420px", overflow="auto", flex="0 1 410px",
                            min_width="300px"),
        )
        panels = w.VBox(
            [w.HBox([self.numbers, self.layer_picker], layout=wrap),
             w.HBox([self.histogram_view.output, self.det_view.output], layout=wrap)],
            layout=w.Layout(flex="1 1 480px", min_width="0"),
        )
        panel = w.VBox(
            [w.HTML(CSS + f"<p>{GUIDE}</p>"), presets,
             w.HBox([sliders, panels], layout=w.Layout(flex_flow="row wrap", width="100%"))],
            layout=w.Layout(width="100%"),
        )
        panel.add_class("svlab-workbench")
        return panel

    @property
    def controls(self) -> list[w.Widget]:
        """Every control a learner can use (all disabled while an action computes)."""
        return [self.global_slider, *self.layer_sliders.values(), self.quantizer,
                self.granularity, self.layer_picker, *self.preset_buttons.values(),
                self.budget, self.mixed_button, self.pick_bits, self.tolerance, self.pick_button]

    # ---- wiring ----
    def _connect(self) -> None:
        self.global_slider.observe(self._on_global, names="value")
        for layer, slider in self.layer_sliders.items():
            slider.observe(lambda change, layer=layer: self._on_layer(layer, change), names="value")
        self.quantizer.observe(self._on_quantizer, names="value")
        self.granularity.observe(self._on_quantizer, names="value")
        self.layer_picker.observe(self._on_pick_layer, names="value")
        for bits, button in self.preset_buttons.items():
            button.on_click(lambda _, bits=bits: self.apply(dict.fromkeys(self.live.layers, bits),
                                                            f"uniform {bits} bit"))
        self.mixed_button.on_click(lambda _: self.apply_mixed())
        self.pick_button.on_click(lambda _: self.apply_pick())

    @contextmanager
    def _action(self, what: str, lock: bool = True) -> Iterator[None]:
        """Busy while the block runs (cleared even if it raises), then the time it took.

        ``lock``: disable every control meanwhile. A slider move or a histogram pick (a
        fraction of a second) only dims the panel: disabling and enabling 25 controls is 50
        messages for the browser to apply, a third of what it spent on each move."""
        self._depth += 1
        if self._depth > 1:
            try:
                yield
            finally:
                self._depth -= 1
            return
        start = perf_counter()
        locked = self.controls if lock else []
        for control in locked:
            control.disabled = True
        self.panel.add_class("svlab-busy")
        self.status.value = f"<i>computing {html.escape(what)}...</i>"
        try:
            yield
        finally:
            self._depth = 0
            self.progress.layout.visibility = "hidden"
            for control in locked:
                control.disabled = False
            self.panel.remove_class("svlab-busy")
            self.status.value = (f"<i>{html.escape(what)}: updated in "
                                 f"{perf_counter() - start:.2f} s</i>")

    @contextmanager
    def _sync(self) -> Iterator[None]:
        """Set controls to match the state without acting on the change."""
        self._syncing = True
        try:
            yield
        finally:
            self._syncing = False

    def _start(self, what: str) -> None:
        """Show the progress bar at 0, labelled with the first step."""
        self.progress.value = 0
        self.progress.description = what
        self.progress.layout.visibility = "visible"

    def _step(self, done: int, total: int) -> None:
        """A long action's progress: the bar, visible until the action ends."""
        self.progress.max, self.progress.value = total, done
        self.progress.description = f"{done}/{total}"
        self.progress.layout.visibility = "visible"

    def _on_layer(self, layer: str, change: dict) -> None:
        if self._syncing:
            return
        with self._action(f"{short_name(layer)} at {change['new']}", lock=False):
            with self._sync():
                self.layer_picker.value = layer
            self._report(lambda: self.live.set_bits(layer, bits_value(change["new"])))
            self.refresh()

    def _on_global(self, change: dict) -> None:
        if self._syncing:
            return
        if change["new"] == MIXED:  # a reading, not a setting: back to what the layers hold
            with self._sync():
                self.global_slider.value = change["old"]
            self.message.value = ("<i>all layers reads mixed when the layers' widths differ; "
                                  "set it to a width to quantize every layer to it</i>")
            return
        self.apply(dict.fromkeys(self.live.layers, bits_value(change["new"])),
                   f"all layers at {change['new']}")

    def _on_pick_layer(self, change: dict) -> None:
        if not self._syncing:
            with self._action(f"histogram of {short_name(change['new'])}", lock=False):
                self._draw_histogram()

    def _on_quantizer(self, change: dict) -> None:
        if self._syncing:
            return
        with self._action(f"{QUANTIZER_LABELS[self.quantizer.value]}, "
                          f"{self.granularity.value} codebooks"):
            self._report(lambda: self.live.set_quantizer(self.quantizer.value,
                                                         self.granularity.value))
            if self.quantizer.value in BINARY_SCHEMES:
                self.apply(dict.fromkeys(self.live.layers, 1))
            self.refresh()

    # ---- actions ----
    def apply(self, bit_map: dict[str, Bits], what: str = "bits") -> None:
        """Set many layers at once (one re-scoring) and move their sliders to match."""
        with self._action(what):
            self._report(lambda: self.live.set_bit_map(bit_map))
            self.refresh()

    def apply_mixed(self) -> None:
        """The mixed-precision preset: least Hessian sensitivity within the KB budget."""
        budget = self.budget.value
        with self._action(f"mixed precision for {budget:g} KB"):
            self._start("Hessian trace")  # one step: most of the first press's time
            bit_map = self._report(
                lambda: self.live.mixed_precision(1024 * budget, progress=self._step)
            )
            if bit_map is not None:
                self.apply(bit_map)
                self.message.value = f"mixed precision for {budget:g} KB applied"

    def apply_pick(self) -> None:
        """The layer-wise sensitivity preset: quantize the layers that tolerate it alone."""
        bits, tolerance = int(self.pick_bits.value), self.tolerance.value / 100
        with self._action(f"sensitivity pick at {bits} bits"):
            self._start("layer 1")
            deltas = self._report(lambda: self.live.delta_eer(bits, progress=self._step))
            if deltas is not None:
                bit_map = self.live.sensitivity_pick(bits, tolerance)
                self.apply(bit_map)
                summary = self.live.summary()
                together = (summary["delta"], summary["delta_low"], summary["delta_high"])
                self.message.value = html.escape(
                    pick_summary(deltas, bit_map, tolerance, together)
                )

    def _report(self, action):
        """Run ``action``; a ValueError (a budget too small...) is shown, not raised."""
        try:
            result = action()
        except ValueError as err:
            self.message.value = f"<span style='color:crimson'>{html.escape(str(err))}</span>"
            return None
        self.message.value = ""
        return result

    # ---- panels ----
    def refresh(self) -> None:
        """Set the sliders to the bits the layers hold, and redraw the numbers, the histogram
        of the picked layer and the DET curve."""
        self._show_bits()
        self.numbers.value = numbers_html(self.live.summary())
        set_det(self.det, 1, self.live.current.far, self.live.current.frr)
        self.det_view.show()
        self._draw_histogram()

    def _show_bits(self) -> None:
        """Each slider at its layer's bits; "all layers" at the common width, or mixed."""
        with self._sync():
            for layer, slider in self.layer_sliders.items():
                slider.value = bits_option(self.live.bits[layer])
            widths = set(self.live.bits.values())
            self.global_slider.value = bits_option(widths.pop()) if len(widths) == 1 else MIXED

    def _draw_histogram(self) -> None:
        layer = self.layer_picker.value
        bits = self.live.bits[layer]
        _, levels = self.live.quantized(layer, bits)
        scheme = self.live.scheme(bits)
        label = "fp32" if bits is None else f"{bits} bit {QUANTIZER_LABELS[scheme]}"
        set_histogram(self.histogram, layer, self.live.original[layer], levels, label)
        self.histogram_view.show()

    @property
    def widget(self) -> w.Widget:
        """The whole workbench as one widget, to display in a notebook."""
        return self.panel

    def _repr_mimebundle_(self, **kwargs) -> dict:
        """The panel, named in plain text as a short repr, not its children's."""
        bundle = self.panel._repr_mimebundle_(**kwargs)
        bundle["text/plain"] = f"Workbench({len(self.live.layers)} layers)"
        return bundle


def dashboard(workbench: Workbench, memory: MemoryPanel) -> w.VBox:
    """The workbench and the memory panel as one widget, each under its heading.

    A page that opens on a running kernel (Voila's, a reloaded JupyterLab tab) restores the
    widgets from the kernel and then looks up each displayed widget's model, waiting up to 2 s
    and checking the clock before it looks again. With two displayed panels, drawing the first
    can hold the page past the second one's deadline although its model has arrived: "Error
    displaying widget: model not found". One displayed widget is one lookup.

    >>> import numpy as np, torch
    >>> from svlab.evaluate import EvalSet
    >>> from svlab.models import ResNet
    >>> _ = torch.manual_seed(0)
    >>> net = ResNet([1, 1], 2, feat_dim=8, embed_dim=4, strides=(1, 2))
    >>> evalset = EvalSet(["a/1", "a/2", "b/1"], [torch.randn(3, 6, 8)], torch.zeros(3, 8),
    ...                   [("a/1", "a/2"), ("a/1", "b/1"), ("a/2", "b/1")], np.array([1, 0, 0]))
    >>> board = dashboard(Workbench(LiveQuantizer(net, evalset)),
    ...                   MemoryPanel(batch_size=8, frames=20, num_classes=10))
    >>> [type(child).__name__ for child in board.children]
    ['HTML', 'VBox', 'HTML', 'HBox']
    """
    board = w.VBox([w.HTML("<h3>Quantization</h3>"), workbench.widget,
                    w.HTML("<h3>Training memory</h3>"), memory.widget],
                   layout=w.Layout(width="100%"))
    board.add_class("svlab-dashboard")
    return board
