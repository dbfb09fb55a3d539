"""The memory panel: training settings in, the projected peak of one training step out, as bars."""

from __future__ import annotations

import functools

import ipywidgets as w
import plotly.graph_objects as go

from svlab.memory import CUDA_CONTEXT_BYTES, GPU_2080TI_BYTES, fits, project
from svlab.workbench.figures import memory_figure
from svlab.workbench.views import CSS, FigureView

MEMORY_FAMILIES = {
    "ResNet": {"18": "resnet18", "34": "resnet34"},
    "DF-ResNet": {"56": "dfresnet56", "110": "dfresnet110", "233": "dfresnet233"},
}


class MemoryPanel:
    """Batch size, depth, reversible on/off (rebuilt by branch or by unit), 8-bit optimizer
    states on/off: projected bars.

    Each change traces one training step of the chosen model on the meta device
    (:func:`svlab.memory.project`: forward, backward and optimizer step, nothing is
    allocated) and draws what it holds at its peak beside the standard setting (same model
    and batch, not reversible, 32-bit states), with a line at 11 GiB. The verdict adds
    :data:`svlab.memory.CUDA_CONTEXT_BYTES` for the CUDA context and allocator.

    >>> panel = MemoryPanel(batch_size=8, frames=20, num_classes=10)
    >>> panel.eight_bit.value = True
    >>> list(panel.figure.data[0].x)
    ['resnet34, Adam', 'resnet34, Adam 8-bit']
    >>> panel.reversible.value = True; panel.recompute.value = "unit"
    >>> list(panel.figure.data[0].x)[1]
    'rev_resnet34 by unit, Adam 8-bit'
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
        self.recompute = w.ToggleButtons(
            options=[("branch at once", "branch"), ("unit by unit", "unit")], value="branch",
            description="rebuild", disabled=True,
            tooltips=["svlab's first way: each branch re-run with autograd on",
                      "one conv-BN-ReLU unit at a time, in batch chunks: a lower floor"],
        )
        self.eight_bit = w.Checkbox(value=False, description="8-bit optimizer states")
        self.numbers = w.HTML().add_class("svlab-memory-numbers")
        self.view = FigureView(go.Figure(), "svlab-memory")
        self.family.observe(self._on_family, names="value")
        for control in (self.depth, self.batch_size, self.optimizer, self.reversible,
                        self.recompute, self.eight_bit):
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
        self.recompute.disabled = not self.reversible.value
        tables = {}
        for reversible, eight_bit in ((False, False), (self.reversible.value,
                                                       self.eight_bit.value)):
            name, optimizer = self.setting(reversible, eight_bit)
            rebuild = {"recompute": self.recompute.value} if reversible else {}
            grain = " by unit" if rebuild.get("recompute") == "unit" else ""
            label = f"{name}{grain}, {self.optimizer.value}{' 8-bit' if eight_bit else ''}"
            tables[label] = project(
                name, batch_size=self.batch_size.value, frames=self.frames,
                optimizer=optimizer, num_classes=self.num_classes, **rebuild,
            )
        self.view.figure = memory_figure(tables, GPU_2080TI_BYTES)
        self.view.show()
        self.numbers.value = " | ".join(
            f"{label}: peak <b>{table['bytes'].sum() / 2**30:.2f} GiB</b> "
            f"({'fits' if fits(table) else 'does not fit'} on 11 GiB with "
            f"{CUDA_CONTEXT_BYTES / 2**30:.2f} GiB for the CUDA context)"
            for label, table in tables.items()
        )

    @property
    def figure(self) -> go.Figure:
        """The bars as drawn now."""
        return self.view.figure

    @functools.cached_property
    def widget(self) -> w.Widget:
        """The panel as one widget, built once (a container per display is collected, closed)."""
        controls = w.VBox([self.family, self.depth, self.batch_size, self.optimizer,
                           self.reversible, self.recompute, self.eight_bit],
                          layout=w.Layout(flex="0 1 auto"))
        bars = w.VBox([w.HTML(CSS), self.numbers, self.view.output],
                      layout=w.Layout(flex="1 1 480px", min_width="300px"))
        return w.HBox([controls, bars], layout=w.Layout(flex_flow="row wrap", width="100%"))

    def _repr_mimebundle_(self, **kwargs) -> dict:
        """The panel, named in plain text as a short repr, not its children's."""
        bundle = self.widget._repr_mimebundle_(**kwargs)
        bundle["text/plain"] = f"MemoryPanel(batch_size={self.batch_size.value})"
        return bundle
