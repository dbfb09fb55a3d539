"""The ipywidgets workbench: turn a layer's bits, see its weights, size, EER and DET move at once.

:class:`Workbench` wires sliders and buttons to a :class:`svlab.workbench.engine.LiveQuantizer`;
:class:`MemoryPanel` wires training settings to :func:`svlab.memory.project`. Every control is an
attribute, so a test sets ``wb.layer_sliders["embedding.weight"].value = "2"`` and reads the
numbers back from ``wb.numbers.value`` exactly as a learner sees them.
"""

from __future__ import annotations

import html
import time

import ipywidgets as w
import plotly.graph_objects as go

from svlab.memory import CUDA_CONTEXT_BYTES, GPU_2080TI_BYTES, fits, project
from svlab.metrics import format_difference
from svlab.workbench.engine import QUANTIZERS, Bits, LiveQuantizer
from svlab.workbench.figures import (
    det_figure,
    histogram_figure,
    memory_figure,
    set_det,
    set_histogram,
)

BITS_OPTIONS = ("1", "2", "3", "4", "5", "6", "7", "8", "fp32")
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


def numbers_html(summary: dict[str, float], seconds: float | None = None) -> str:
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
    timing = "" if seconds is None else f"<p><i>updated in {seconds:.2f} s</i></p>"
    return (
        "<table style='font-size:14px'><tr><th></th><th>now</th><th>fp32</th></tr>"
        f"{body}</table>{timing}"
    )


class Workbench:
    """Per-layer bits sliders, a global one, quantizer and presets, and the live panels.

    ``budget_kb`` starts the mixed-precision budget (default: an eighth of the fp32 size).

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
    >>> wb.live.bits["embedding.weight"], wb.layer_picker.value
    (2, 'embedding.weight')
    """

    def __init__(self, live: LiveQuantizer, budget_kb: float | None = None) -> None:
        self.live = live
        self._busy = False
        layout = w.Layout(width="420px")
        style = {"description_width": "170px"}
        self.global_slider = w.SelectionSlider(
            options=BITS_OPTIONS, value="fp32", description="all layers",
            continuous_update=False, layout=layout, style=style,
        )
        self.layer_sliders = {
            layer: w.SelectionSlider(
                options=BITS_OPTIONS, value="fp32", description=layer.removesuffix(".weight"),
                continuous_update=False, layout=layout, style=style,
            )
            for layer in live.layers
        }
        for slider in self.layer_sliders.values():
            slider.add_class("svlab-layer-slider")
        self.quantizer = w.Dropdown(
            options=[(QUANTIZER_LABELS[q], q) for q in QUANTIZERS], value=live.quantizer,
            description="quantizer",
        )
        self.granularity = w.ToggleButtons(
            options=["tensor", "channel"], value=live.granularity, description="codebooks",
            tooltips=["one codebook per layer", "one codebook per output channel"],
        )
        self.layer_picker = w.Dropdown(options=live.layers, description="histogram of")
        self.preset_buttons = {
            bits: w.Button(description=f"uniform {bits} bit") for bits in (8, 4, 2)
        }
        fp32_kb = live.size_bytes(dict.fromkeys(live.layers)) / 1024
        self.budget = w.FloatText(
            value=round(budget_kb or fp32_kb / 8, 1), description="budget (KB)"
        )
        self.mixed_button = w.Button(description="mixed precision", button_style="info")
        self.pick_bits = w.Dropdown(options=BITS_OPTIONS[:-1], value="2", description="pick at")
        self.tolerance = w.FloatText(value=0.5, description="max +EER (%)")
        self.pick_button = w.Button(description="sensitivity pick", button_style="info")
        self.message = w.HTML()
        self.numbers = w.HTML()
        self.numbers.add_class("svlab-numbers")
        self.histogram = go.FigureWidget(histogram_figure())
        self.histogram.add_class("svlab-histogram")
        self.det = go.FigureWidget(det_figure())
        self.det.add_class("svlab-det")
        set_det(self.det, 0, live.fp32.far, live.fp32.frr)
        self._connect()
        self.refresh()

    # ---- wiring ----
    def _connect(self) -> None:
        self.global_slider.observe(self._on_global, names="value")
        for layer, slider in self.layer_sliders.items():
            slider.observe(lambda change, layer=layer: self._on_layer(layer, change), names="value")
        self.quantizer.observe(self._on_quantizer, names="value")
        self.granularity.observe(self._on_quantizer, names="value")
        self.layer_picker.observe(lambda change: self.refresh(), names="value")
        for bits, button in self.preset_buttons.items():
            button.on_click(lambda _, bits=bits: self.apply(dict.fromkeys(self.live.layers, bits)))
        self.mixed_button.on_click(lambda _: self.apply_mixed())
        self.pick_button.on_click(lambda _: self.apply_pick())

    def _on_layer(self, layer: str, change: dict) -> None:
        if self._busy:
            return
        start = time.perf_counter()
        self.layer_picker.value = layer
        self.live.set_bits(layer, bits_value(change["new"]))
        self.refresh(time.perf_counter() - start)

    def _on_global(self, change: dict) -> None:
        if not self._busy:
            self.apply(dict.fromkeys(self.live.layers, bits_value(change["new"])))

    def _on_quantizer(self, change: dict) -> None:
        start = time.perf_counter()
        self._report(lambda: self.live.set_quantizer(self.quantizer.value, self.granularity.value))
        if self.quantizer.value in ("sign", "static", "adaptive") and not self._busy:
            self.apply(dict.fromkeys(self.live.layers, 1))
        self.refresh(time.perf_counter() - start)

    # ---- actions ----
    def apply(self, bit_map: dict[str, Bits]) -> None:
        """Set many layers at once (one re-scoring) and move their sliders to match."""
        start = time.perf_counter()
        self._report(lambda: self.live.set_bit_map(bit_map))
        self._busy = True
        try:
            for layer, slider in self.layer_sliders.items():
                slider.value = bits_option(self.live.bits[layer])
            widths = set(self.live.bits.values())
            if len(widths) == 1:
                self.global_slider.value = bits_option(widths.pop())
        finally:
            self._busy = False
        self.refresh(time.perf_counter() - start)

    def apply_mixed(self) -> None:
        """The mixed-precision preset: least Hessian sensitivity within the KB budget."""
        bit_map = self._report(lambda: self.live.mixed_precision(1024 * self.budget.value))
        if bit_map is not None:
            self.apply(bit_map)
            self.message.value += f"<br>mixed precision for {self.budget.value:g} KB applied"

    def apply_pick(self) -> None:
        """The layer-wise sensitivity preset: quantize the layers that tolerate it alone."""
        bits, tolerance = int(self.pick_bits.value), self.tolerance.value / 100
        bit_map = self._report(lambda: self.live.sensitivity_pick(bits, tolerance))
        if bit_map is not None:
            self.apply(bit_map)
            kept = [layer for layer, b in bit_map.items() if b is None]
            self.message.value += f"<br>kept fp32: {html.escape(', '.join(kept) or 'none')}"

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
    def refresh(self, seconds: float | None = None) -> None:
        """Redraw the numbers, the histogram of the picked layer and the DET curve."""
        layer = self.layer_picker.value
        bits = self.live.bits[layer]
        weight, levels = self.live.quantized(layer, bits)
        scheme = self.live.scheme(bits)
        label = "fp32" if bits is None else f"{bits} bit {QUANTIZER_LABELS[scheme]}"
        set_histogram(self.histogram, layer, self.live.original[layer], levels, label)
        set_det(self.det, 1, self.live.current.far, self.live.current.frr)
        self.numbers.value = numbers_html(self.live.summary(), seconds)

    @property
    def widget(self) -> w.Widget:
        """The whole workbench as one widget, to display in a notebook.

        The figures are made anew here from their current state: a plotly FigureWidget sends
        changes to the browser as messages that only a displayed view receives, so figures
        changed before display would show up empty.
        """
        self.histogram = _redisplayable(self.histogram, "svlab-histogram")
        self.det = _redisplayable(self.det, "svlab-det")
        presets = w.VBox([
            w.HBox(list(self.preset_buttons.values())),
            w.HBox([self.budget, self.mixed_button]),
            w.HBox([self.pick_bits, self.tolerance, self.pick_button]),
        ])
        sliders = w.VBox(
            [self.global_slider, *self.layer_sliders.values()],
            layout=w.Layout(max_height="420px", overflow_y="auto", width="440px"),
        )
        controls = w.VBox([self.quantizer, self.granularity, presets, self.message])
        panels = w.VBox([
            w.HBox([self.numbers, self.layer_picker]),
            w.HBox([self.histogram, self.det]),
        ])
        return w.VBox([w.HTML(f"<p>{GUIDE}</p>"), controls, w.HBox([sliders, panels])])

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


def _redisplayable(figure: go.FigureWidget, css_class: str) -> go.FigureWidget:
    """A new FigureWidget holding ``figure``'s current data and layout, tagged ``css_class``.

    >>> _redisplayable(go.FigureWidget(data=[go.Bar(y=[1, 2])]), "x")._dom_classes
    ('x',)
    """
    fresh = go.FigureWidget(figure.to_dict())
    fresh.add_class(css_class)
    return fresh


MEMORY_FAMILIES = {
    "ResNet": {"18": "resnet18", "34": "resnet34"},
    "DF-ResNet": {"56": "dfresnet56", "110": "dfresnet110", "233": "dfresnet233"},
}


class MemoryPanel:
    """Batch size, depth, reversible on/off, 8-bit optimizer states on/off: projected bars.

    Each change traces one training step of the chosen model on the meta device
    (:func:`svlab.memory.project`: forward, backward and optimizer step, nothing is
    allocated) and draws what it holds at its peak beside the standard setting (same model
    and batch, not reversible, 32-bit states), with a line at 11 GiB. The verdict adds
    :data:`svlab.memory.CUDA_CONTEXT_BYTES` for the CUDA context and allocator.

    >>> panel = MemoryPanel(batch_size=8, frames=20, num_classes=10)
    >>> panel.eight_bit.value = True
    >>> list(panel.figure.data[0].x)
    ['resnet34, Adam', 'resnet34, Adam 8-bit']
    """

    def __init__(
        self, batch_size: int = 128, frames: int = 200, num_classes: int = 5994
    ) -> None:
        self.frames, self.num_classes = frames, num_classes
        self.family = w.ToggleButtons(options=list(MEMORY_FAMILIES), description="model")
        self.depth = w.ToggleButtons(options=list(MEMORY_FAMILIES["ResNet"]), value="34",
                                     description="depth")
        self.batch_size = w.SelectionSlider(
            options=[2**i for i in range(3, 10)], value=batch_size, description="batch size",
            continuous_update=False,
        )
        self.optimizer = w.ToggleButtons(options=["SGD", "Adam"], value="Adam",
                                         description="optimizer")
        self.reversible = w.Checkbox(value=False, description="reversible blocks")
        self.eight_bit = w.Checkbox(value=False, description="8-bit optimizer states")
        self.numbers = w.HTML()
        self.numbers.add_class("svlab-memory-numbers")
        self.figure = go.FigureWidget()
        self.family.observe(self._on_family, names="value")
        for control in (self.depth, self.batch_size, self.optimizer, self.reversible,
                        self.eight_bit):
            control.observe(lambda change: self.refresh(), names="value")
        self.refresh()

    def _on_family(self, change: dict) -> None:
        depths = list(MEMORY_FAMILIES[change["new"]])
        self.depth.options = depths
        self.depth.value = depths[-1] if change["new"] == "ResNet" else depths[0]

    def setting(self, reversible: bool, eight_bit: bool) -> tuple[str, str]:
        """(model name, optimizer name) for :func:`svlab.memory.project`."""
        name = MEMORY_FAMILIES[self.family.value][self.depth.value]
        optimizer = self.optimizer.value.lower() + ("8bit" if eight_bit else "")
        return ("rev_" if reversible else "") + name, optimizer

    def refresh(self) -> None:
        """Project the standard and the chosen setting and redraw the bars."""
        self.numbers.value = "<i>tracing one training step on the meta device...</i>"
        tables = {}
        for reversible, eight_bit in ((False, False), (self.reversible.value,
                                                       self.eight_bit.value)):
            name, optimizer = self.setting(reversible, eight_bit)
            label = f"{name}, {self.optimizer.value}{' 8-bit' if eight_bit else ''}"
            tables[label] = project(
                name, batch_size=self.batch_size.value, frames=self.frames,
                optimizer=optimizer, num_classes=self.num_classes,
            )
        fresh = memory_figure(tables, GPU_2080TI_BYTES)
        with self.figure.batch_update():
            self.figure.data = []
            for trace in fresh.data:
                self.figure.add_trace(trace)
            self.figure.layout = fresh.layout
        self.numbers.value = " | ".join(
            f"{label}: peak <b>{table['bytes'].sum() / 2**30:.2f} GiB</b> "
            f"({'fits' if fits(table) else 'does not fit'} on 11 GiB with "
            f"{CUDA_CONTEXT_BYTES / 2**30:.2f} GiB for the CUDA context)"
            for label, table in tables.items()
        )

    @property
    def widget(self) -> w.Widget:
        """The panel as one widget."""
        controls = w.VBox([self.family, self.depth, self.batch_size, self.optimizer,
                           self.reversible, self.eight_bit])
        self.figure = _redisplayable(self.figure, "svlab-memory")
        return w.HBox([controls, w.VBox([self.numbers, self.figure])])

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)
