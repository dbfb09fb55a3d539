"""The training state a run saves as ``checkpoint.pt`` and resumes from, exactly; Ctrl-C."""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from svlab import checkpoint
from svlab.train.config import TrainConfig

STATE_FORMAT = "svlab-train-state-v1"
# settings that may change between an interrupted run and its resumption
RESUMABLE_CHANGES = {"stop_after_steps", "workers", "threads", "device", "out_dir", "eval_every"}


def save_state(
    path: Path,
    cfg: TrainConfig,
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    **bookkeeping: Any,
) -> None:
    """Write the whole training state atomically: weights, optimizer, scaler, RNG, config and
    ``bookkeeping`` (step, history, ...), as :func:`restore_state` reads it.

    >>> import tempfile, pathlib
    >>> net = nn.Linear(2, 2); opt = torch.optim.SGD(net.parameters(), 0.1)
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "checkpoint.pt"
    >>> scaler = torch.amp.GradScaler("cpu", enabled=False)
    >>> save_state(path, TrainConfig(), net, opt, scaler, step=3)
    >>> restore_state(path, TrainConfig(), net, opt, scaler)["step"]
    3
    """
    state = {
        "format": STATE_FORMAT,
        "config": dataclasses.asdict(cfg),
        "net": net.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": torch.get_rng_state(),
        **bookkeeping,
    }
    checkpoint.save(path, state)


def restore_state(
    path: Path,
    cfg: TrainConfig,
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
) -> dict:
    """Load a training state saved by :func:`save_state` into the objects; return it all.

    Refused, naming the setting, when ``cfg`` differs from the saved run's config in anything
    but ``RESUMABLE_CHANGES``.

    >>> restore_state(Path("/no/checkpoint.pt"), TrainConfig(), None, None, None)
    Traceback (most recent call last):
    ...
    FileNotFoundError: no checkpoint at /no/checkpoint.pt
    """
    state = checkpoint.load(path)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path} is not an svlab training state")
    mine = dataclasses.asdict(cfg)
    changed = sorted(
        k for k, v in state["config"].items() if mine.get(k) != v and k not in RESUMABLE_CHANGES
    )
    if changed:
        key = changed[0]
        raise ValueError(
            f"{path} was written by a run with {key}={state['config'][key]!r}, "
            f"not {mine[key]!r}: resume with the same config (changed: {', '.join(changed)})"
        )
    try:
        net.load_state_dict(state["net"])
    except RuntimeError as err:
        raise ValueError(f"{path}: the saved weights do not fit this model: {err}") from err
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"])
    return state


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped :func:`train` after ``step`` of ``total`` steps, whose training state was
    saved to ``state_path`` first: ``train(cfg, resume=True)`` continues from it.

    >>> str(TrainingInterrupted(37, 480, Path("runs/x/checkpoint.pt")))
    'interrupted at step 37 of 480: state saved to runs/x/checkpoint.pt'
    """

    def __init__(self, step: int, total: int, state_path: Path) -> None:
        super().__init__(f"interrupted at step {step} of {total}: state saved to {state_path}")
        self.step, self.total, self.state_path = step, total, state_path


@contextlib.contextmanager
def hold_ctrl_c() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) back until the block is done, then raise it as KeyboardInterrupt:
    an interrupted run then never saves half an optimizer step. Only where Python's own handler
    is in place, in the main thread; elsewhere the block runs as it is.

    >>> terminal = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
    >>> try:
    ...     with hold_ctrl_c():
    ...         signal.raise_signal(signal.SIGINT)
    ...         print("the block finishes")
    ... except KeyboardInterrupt:
    ...     print("then Ctrl-C stops it")
    the block finishes
    then Ctrl-C stops it
    >>> _ = signal.signal(signal.SIGINT, terminal)
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    caught = []
    signal.signal(signal.SIGINT, lambda *_: caught.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if caught:
        raise KeyboardInterrupt
