"""The live bytes of a whole training step, storage by storage: forward, backward, optimizer step.

:class:`StepTracker` is a :class:`~torch.utils._python_dispatch.TorchDispatchMode`: PyTorch
calls it for every op, on any device (meta included). Each tensor storage an op returns is
recorded when it first appears, with the phase (forward, backward, step) and the module
running at the time; a ``weakref.finalize`` on the storage records when it is freed. So the
tracker knows, after every op, which storages are alive, and at the step's peak what they were:
parameters, gradients, optimizer states, inputs, activations saved for backward in the
forward pass, activations recomputed in the backward pass (reversible blocks), and
temporaries (everything else: unsaved forward outputs, backward buffers, optimizer scratch).

What it cannot see: memory a kernel allocates inside itself and frees before returning
(a convolution's workspace). The tests compare it with PyTorch's allocator, as seen by the
profiler on CPU and by ``torch.cuda.max_memory_allocated`` on a GPU.
"""

from __future__ import annotations

import os
import sys
import tempfile
import weakref
from collections.abc import Callable, Iterable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from svlab.memory.autocast import MetaAutocast

CATEGORIES = (
    "parameters",
    "gradients",
    "optimizer states",
    "inputs",
    "activations",
    "recomputed",
    "temporaries",
)
PHASES = ("forward", "backward", "step")


@dataclass
class _Storage:
    nbytes: int
    born: int  # event number of the allocation (-1: alive before tracking began)
    phase: str
    module: str
    category: str = ""
    died: int | None = None


def storage_key(t: torch.Tensor) -> int:
    """An id of the memory ``t`` lives in, shared by all views of it (meta tensors too).

    >>> w = torch.zeros(4); storage_key(w) == storage_key(w[1:]) != storage_key(w.clone())
    True
    """
    return t.untyped_storage()._cdata


class StepTracker(TorchDispatchMode):
    """Records every storage that ops return while active, and when each one is freed.

    ``adopt`` registers storages that were alive before (parameters, optimizer states,
    inputs) under a category. ``phase`` and ``module`` label what is allocated next;
    :func:`trace_step` sets them. Only storages on ``device`` are counted.

    >>> tracker = StepTracker(torch.device("cpu"))
    >>> with tracker:
    ...     a = torch.ones(256)            # 1 KiB
    ...     b = a * 2                      # 1 KiB more: the peak
    ...     del a
    ...     c = b + 1                      # a's KiB was freed first
    >>> tracker.peak_bytes, tracker.live_bytes
    (2048, 2048)
    """

    def __init__(self, device: torch.device | str) -> None:
        super().__init__()
        self.device = torch.device(device)
        self.storages: list[_Storage] = []
        self.live: dict[int, int] = {}  # storage key -> index in self.storages
        self.events = 0
        self.live_bytes = 0
        self.peak_bytes = 0
        self.peak_event = -1
        self.phase = "forward"
        self.module = "(model)"
        self.ops: list[tuple[int, str, str, str, int]] = []  # event, phase, module, op, live
        self._finalizers: list[weakref.finalize] = []

    def _counted(self, t: torch.Tensor) -> bool:
        return t.device.type == self.device.type and t.untyped_storage().nbytes() > 0

    def _see(self, t: torch.Tensor, category: str = "", born: int | None = None) -> int | None:
        """The index of ``t``'s storage record, recording it first if it is new."""
        if not self._counted(t):
            return None
        storage = t.untyped_storage()
        key = storage._cdata
        if key in self.live:
            return self.live[key]
        nbytes = storage.nbytes()
        index = len(self.storages)
        self.storages.append(
            _Storage(nbytes, self.events if born is None else born, self.phase, self.module,
                     category)
        )
        self.live[key] = index
        self.live_bytes += nbytes
        if self.live_bytes > self.peak_bytes:
            self.peak_bytes, self.peak_event = self.live_bytes, self.events
        self.events += 1
        self._finalizers.append(weakref.finalize(storage, self._free, key, index))
        return index

    def _free(self, key: int, index: int) -> None:
        if self.live.get(key) != index:
            return
        del self.live[key]
        record = self.storages[index]
        record.died = self.events
        self.live_bytes -= record.nbytes
        self.events += 1

    def adopt(self, tensors: Iterable[torch.Tensor], category: str) -> None:
        """Count ``tensors`` (alive before tracking) as ``category`` from the start."""
        for t in tensors:
            index = self._see(t, category, born=-1)
            if index is not None and not self.storages[index].category:
                self.storages[index].category = category

    def label(self, tensors: Iterable[torch.Tensor], category: str) -> None:
        """File the storages behind ``tensors`` under ``category`` (first label wins)."""
        for t in tensors:
            if self._counted(t):
                index = self.live.get(storage_key(t))
                if index is not None and not self.storages[index].category:
                    self.storages[index].category = category

    def __exit__(self, *exc):
        """Stop tracking: frees after this are not recorded."""
        for finalizer in self._finalizers:
            finalizer.detach()
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._see(t)
        self.ops.append((self.events, self.phase, self.module, str(func.overloadpacket),
                         self.live_bytes))
        return out


@dataclass
class StepMemory:
    """What one training step held: the peak, its composition, and the timeline.

    ``at_peak`` has one row per category (bytes, MiB) and sums to ``peak_bytes``;
    ``by_module`` splits the same peak by the module that allocated each storage;
    ``timeline`` has one row per op: its phase, module, name and the bytes live after it.
    ``start_bytes`` were alive before the step (parameters, states, inputs).
    """

    peak_bytes: int
    start_bytes: int
    at_peak: pd.DataFrame
    by_module: pd.Series
    timeline: pd.DataFrame = field(repr=False)

    @property
    def extra_peak_bytes(self) -> int:
        """The peak minus what was alive before the step: what the step itself added."""
        return self.peak_bytes - self.start_bytes


def category_table(sizes: dict[str, int]) -> pd.DataFrame:
    """Bytes by category as a table with ``bytes`` and ``MiB`` columns, in CATEGORIES' order.

    >>> category_table({"gradients": 2**20, "parameters": 2**21})["MiB"].to_dict()
    {'parameters': 2.0, 'gradients': 1.0}
    """
    order = [c for c in CATEGORIES if c in sizes] + [c for c in sizes if c not in CATEGORIES]
    frame = pd.DataFrame({"bytes": pd.Series({c: int(sizes[c]) for c in order}, dtype="int64")})
    frame.index.name = "category"
    frame["MiB"] = frame["bytes"] / 2**20
    return frame


def _summarise(tracker: StepTracker) -> StepMemory:
    peak = tracker.peak_event
    alive = [
        s for s in tracker.storages
        if s.born <= peak and (s.died is None or s.died > peak)
    ]
    sizes = dict.fromkeys(CATEGORIES, 0)
    modules: dict[str, int] = {}
    for s in alive:
        category = s.category or "temporaries"
        sizes[category] += s.nbytes
        owner = s.module if s.born >= 0 else f"({category})"
        modules[owner] = modules.get(owner, 0) + s.nbytes
    start = sum(s.nbytes for s in tracker.storages if s.born < 0)
    timeline = pd.DataFrame(tracker.ops, columns=["event", "phase", "module", "op", "live_bytes"])
    timeline["live_MiB"] = timeline["live_bytes"] / 2**20
    return StepMemory(
        peak_bytes=tracker.peak_bytes,
        start_bytes=start,
        at_peak=category_table(sizes),
        by_module=pd.Series(modules, dtype="int64", name="bytes").sort_values(ascending=False),
        timeline=timeline,
    )


@contextmanager
def _module_labels(tracker: StepTracker, modules: dict[str, nn.Module], depth: int):
    """Keep ``tracker.module`` at the running module's name, cut to ``depth`` levels.

    Every module is hooked, so a recomputation in backward (a reversible block re-running
    its branches) is filed under the module it recomputes.
    """
    stack: list[str] = []
    handles = []
    for prefix, root in modules.items():
        for name, module in root.named_modules():
            full = ".".join(part for part in (prefix, name) if part)
            label = ".".join(full.split(".")[:depth]) or "(model)"

            def enter(module, args, label=label):
                stack.append(label)
                tracker.module = label

            def leave(module, args, output):
                stack.pop()
                tracker.module = stack[-1] if stack else _outside(tracker.phase)

            handles.append(module.register_forward_pre_hook(enter))
            handles.append(module.register_forward_hook(leave))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _outside(phase: str) -> str:
    return {"forward": "(model)", "backward": "(autograd)", "step": "(optimizer)"}[phase]


def _mean_square(embeddings: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    return embeddings.square().mean()


def optimizer_tensors(optimizer: torch.optim.Optimizer | None) -> list[torch.Tensor]:
    """Every tensor an optimizer keeps in its state (momenta, 8-bit codes, absmax, steps).

    >>> p = nn.Parameter(torch.ones(3)); opt = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    >>> p.grad = torch.ones(3); opt.step(); [t.shape for t in optimizer_tensors(opt)]
    [torch.Size([3])]
    """
    if optimizer is None:
        return []
    tensors = [v for state in optimizer.state.values() for v in state.values()
               if torch.is_tensor(v)]
    maps = getattr(optimizer, "_maps", {})  # svlab's 8-bit optimizers share their code tables
    return tensors + list(maps.values())


def _mixed_precision(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return nullcontext()
    if device.type == "meta":
        return MetaAutocast(dtype)
    return torch.autocast(device.type, dtype=dtype)


def trace_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    features: torch.Tensor,
    labels: torch.Tensor | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor] | None = None,
    depth: int = 2,
    autocast: torch.dtype | None = None,
) -> StepMemory:
    """Run one training step (forward, loss, backward, ``optimizer.step()``) and trace it.

    Gradients are set to ``None`` first, as ``zero_grad()`` does. The step runs for real:
    the model and optimizer change (see :func:`svlab.memory.breakdown` for a measurement
    that puts them back). Works on CPU, CUDA and the meta device. ``loss_fn(embeddings,
    labels)`` defaults to the mean square of the embeddings; a loss that is an
    ``nn.Module`` (a classifier head) counts as model too. Modules are named up to
    ``depth`` levels (``"stages.1"`` at depth 2) in ``by_module`` and the timeline. With
    ``autocast`` (``torch.float16`` or ``torch.bfloat16``) forward and backward run in mixed
    precision: ``torch.autocast`` on CPU and CUDA, :class:`svlab.memory.autocast.MetaAutocast`
    (CUDA's casting rules) on the meta device; the optimizer step stays outside.

    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    >>> step = trace_step(net, opt, torch.ones(16, 4))
    >>> step.at_peak["bytes"].sum() == step.peak_bytes, list(step.timeline["phase"].unique())
    (np.True_, ['forward', 'backward', 'step'])
    """
    loss_fn = _mean_square if loss_fn is None else loss_fn
    modules = {"": model}
    if isinstance(loss_fn, nn.Module):
        modules["(loss)"] = loss_fn
    weights = [t for m in modules.values() for t in (*m.parameters(), *m.buffers())]
    for p in weights:
        p.grad = None
    tracker = StepTracker(features.device)
    tracker.adopt(weights, "parameters")
    tracker.adopt(optimizer_tensors(optimizer), "optimizer states")
    tracker.adopt([t for t in (features, labels) if t is not None], "inputs")

    def pack(t: torch.Tensor) -> torch.Tensor:
        tracker.label([t], "activations" if tracker.phase == "forward" else "recomputed")
        return t

    with _module_labels(tracker, modules, depth), tracker:
        with _mixed_precision(features.device, autocast), \
                torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = loss_fn(model(features), labels)
            tracker.phase, tracker.module = "backward", "(autograd)"
            loss.backward()
            del loss
        tracker.label([p.grad for p in weights if p.grad is not None], "gradients")
        if optimizer is not None:
            tracker.phase, tracker.module = "step", "(optimizer)"
            optimizer.step()
            tracker.label(optimizer_tensors(optimizer), "optimizer states")
    return _summarise(tracker)


PROFILER_CHATTER = ("profiler_start", "profiler_stop", "gpuGetDeviceCount",
                    "Memory block of unknown size")


@contextmanager
def _profiler_chatter_dropped():
    """Run the body with the process's stderr (file descriptor 2, where the profiler's native
    code writes) captured; afterwards pass on every line but the profiler's own start / stop
    notices and its complaint that a machine without a GPU has no GPU."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines(keepends=True):
                if not any(marker in line for marker in PROFILER_CHATTER):
                    sys.stderr.write(line)


def allocator_peak(step: Callable[[], object], device: torch.device | str) -> int:
    """The allocator's own peak while ``step()`` runs, above what was allocated before it.

    On CUDA it is ``torch.cuda.max_memory_allocated``; on CPU, the allocation and free
    events that PyTorch's profiler records from the CPU allocator (every allocation,
    including those a kernel makes inside itself), summed in time order. This is the
    independent measurement that :class:`StepTracker` is tested against.

    >>> peak = allocator_peak(lambda: torch.ones(2**20) + 1, "cpu")  # the ones, then the sum
    >>> peak // 2**20  # MiB (and a few bytes for the scalar 1)
    8
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    if device.type != "cpu":
        raise ValueError(f"allocator_peak measures CPU or CUDA memory, not {device.type!r}")
    with _profiler_chatter_dropped(), profile(activities=[ProfilerActivity.CPU],
                                              profile_memory=True) as prof:
        step()
    events = sorted(
        (event.start_ns(), event.nbytes())
        for event in prof.profiler.kineto_results.events()
        if event.name() == "[memory]" and event.device_type() == torch._C._autograd.DeviceType.CPU
    )
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak
