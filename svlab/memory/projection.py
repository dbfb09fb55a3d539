"""Projected and measured peaks of a whole training step, what they hold, and `svlab memory`."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache

import pandas as pd
import torch
from torch import nn

from svlab.losses import CosineClassifier
from svlab.memory.step import StepMemory, storage_key, trace_step

GPU_2080TI_BYTES = 11 * 1024**3
# What a step needs on a GPU beyond its tensors: the CUDA context with cuDNN and cuBLAS
# loaded (about 300-500 MiB on a 2080Ti) and the caching allocator's rounding and
# fragmentation. svlab's assumption for the "fits on 11 GB" verdict, not a measurement.
CUDA_CONTEXT_BYTES = 768 * 1024**2
MIN_8BIT_SIZE = 4096  # bitsandbytes keeps smaller tensors' states in 32 bits
BLOCK_SIZE = 256  # bitsandbytes' block size for 8-bit optimizer states
STATE_LAYOUT = {  # optimizer name -> (states per parameter, 8-bit states?, scalar step tensor?)
    "sgd": (1, False, False),
    "adam": (2, False, True),
    "adamw": (2, False, True),
    "sgd8bit": (1, True, False),
    "adam8bit": (2, True, False),
    "adamw8bit": (2, True, False),
}


# ---------------------------------------------------------------- counting bytes


def unique_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the storages behind ``tensors``, each storage counted once.

    >>> w = torch.zeros(10); unique_bytes([w, w[2:], w.view(2, 5), torch.zeros(3)])
    52
    """
    sizes = {storage_key(t): t.untyped_storage().nbytes() for t in tensors}
    return sum(sizes.values())


def _state_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v)]


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the optimizer's state tensors (momenta, 8-bit codes, absmax, shared maps).

    Uses ``svlab.optim.state_bytes`` when the optimizer package provides it, otherwise
    counts the tensors in ``optimizer.state`` with shared storage counted once.

    >>> p = nn.Parameter(torch.ones(3)); opt = torch.optim.Adam([p]); p.grad = torch.ones(3)
    >>> opt.step(); optimizer_state_bytes(opt)  # exp_avg, exp_avg_sq and the step counter
    28
    """
    try:
        from svlab.optim import state_bytes
    except ImportError:
        return unique_bytes(_state_tensors(optimizer))
    return int(state_bytes(optimizer))


def projected_state_bytes(numels: Iterable[int], optimizer: str) -> int:
    """Bytes of optimizer state for parameters of these sizes, without building the optimizer.

    8-bit states follow bitsandbytes: 1 byte per value plus a float32 absmax per 256-value
    block for tensors of at least 4096 values, float32 states for smaller ones, and one
    256-entry float32 code table per state kind. ``"sgd"`` means SGD with momentum.

    >>> projected_state_bytes([10_000, 100], "adam")  # 2 float32 states + a step per tensor
    80808
    >>> projected_state_bytes([10_000, 100], "adam8bit")  # 2 * (10000 + 4 * 40) + 2 * 400 + 2048
    23168
    """
    if optimizer not in STATE_LAYOUT:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {sorted(STATE_LAYOUT)}")
    states, eight_bit, step = STATE_LAYOUT[optimizer]
    total, any_quantized = 0, False
    for n in numels:
        if eight_bit and n >= MIN_8BIT_SIZE:
            total += states * (n + 4 * math.ceil(n / BLOCK_SIZE))
            any_quantized = True
        else:
            total += states * 4 * n
        total += 4 if step else 0
    return total + (states * 256 * 4 if any_quantized else 0)


# ---------------------------------------------------------------- measuring one training step


def _with_peak(step: StepMemory) -> pd.DataFrame:
    table = step.at_peak.copy()
    table.attrs.update(peak_bytes=step.peak_bytes, extra_peak_bytes=step.extra_peak_bytes)
    return table


def breakdown(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    batch: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
    loss_fn: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor] | None = None,
    restore: bool = True,
) -> pd.DataFrame:
    """Run one training step on the model's device and return what it held at its peak.

    ``batch`` is the input features or ``(features, labels)``; ``loss_fn(embeddings, labels)``
    defaults to the mean square of the embeddings. The step (zeroed gradients, forward,
    loss, backward, ``optimizer.step()``) is traced by :func:`svlab.memory.step.trace_step`;
    the rows are the categories of the storages alive at the step's peak, so
    ``table["bytes"].sum()`` is the peak (``table.attrs["peak_bytes"]``). Run a warm-up step
    first so that the optimizer states exist, as they do from the second step on. On CUDA
    ``attrs`` also holds ``cuda_peak_bytes`` and ``cuda_extra_peak_bytes``, the allocator's
    own peak over the step (absolute, and above what was allocated before it), to compare.
    With ``restore`` the model, the optimizer and the gradients are put back as they were,
    so measuring does not train.

    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    >>> _ = breakdown(model, opt, torch.ones(16, 4), restore=False)  # warm-up: momentum exists
    >>> table = breakdown(model, opt, torch.ones(16, 4))
    >>> table.loc[["parameters", "optimizer states", "inputs", "activations"], "bytes"].tolist()
    [232, 232, 256, 512]
    >>> int(table["bytes"].sum()) == table.attrs["peak_bytes"]
    True
    """
    features, labels = batch if isinstance(batch, tuple | list) else (batch, None)
    modules = [model] + ([loss_fn] if isinstance(loss_fn, nn.Module) else [])
    params = [p for m in modules for p in m.parameters()]
    saved = _snapshot(modules, optimizer, params) if restore else None
    device = features.device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    step = trace_step(model, optimizer, features, labels, loss_fn)
    table = _with_peak(step)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        table.attrs.update(cuda_peak_bytes=peak, cuda_extra_peak_bytes=peak - before)
    if saved is not None:
        _restore(modules, optimizer, params, saved)
    return table


def _on_cpu(value):
    """A copy of ``value`` (tensors in nested dicts and lists) in CPU memory, so that the
    snapshot does not count in a GPU's peak."""
    if torch.is_tensor(value):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _on_cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_on_cpu(v) for v in value)
    return copy.deepcopy(value)


def _snapshot(modules, optimizer, params):
    return (
        [_on_cpu(m.state_dict()) for m in modules],
        None if optimizer is None else _on_cpu(optimizer.state_dict()),
        [p.grad for p in params],
    )


def _restore(modules, optimizer, params, saved) -> None:
    states, optimizer_state, grads = saved
    for module, state in zip(modules, states, strict=True):
        module.load_state_dict(state)
    if optimizer is not None:
        optimizer.state.clear()
        optimizer.load_state_dict(optimizer_state)
    for p, grad in zip(params, grads, strict=True):
        p.grad = grad


# ---------------------------------------------------------------- projecting without running


@lru_cache(maxsize=32)
def _projected(
    model_name: str,
    batch_size: int,
    frames: int,
    optimizer: str,
    dtype: torch.dtype,
    feat_dim: int,
    num_classes: int,
    overrides: tuple,
    autocast: torch.dtype | None = None,
) -> StepMemory:
    from svlab.models import build
    from svlab.optim import make_optimizer

    if optimizer not in STATE_LAYOUT:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {sorted(STATE_LAYOUT)}")
    if batch_size < 1 or frames < 1:
        raise ValueError(f"batch_size and frames must be positive, got {batch_size}, {frames}")
    with torch.device("meta"):
        model = build(model_name, feat_dim=feat_dim, **dict(overrides)).to(dtype)
        head = CosineClassifier(model.embed_dim, num_classes).to(dtype) if num_classes else None
        features = torch.empty(batch_size, frames, feat_dim, dtype=dtype)
        labels = torch.zeros(batch_size, dtype=torch.long)
    model.train()
    params = [*model.parameters(), *([] if head is None else head.parameters())]
    opt = make_optimizer(params, optimizer.replace("adamw", "adam"), lr=1e-3)
    for p in params:  # an untraced warm-up step on zero gradients creates the optimizer
        p.grad = torch.zeros_like(p)  # states, as they exist from a run's second step on
    opt.step()
    return trace_step(model, opt, features, labels, head, autocast=autocast)


def project_step(
    model_name: str,
    batch_size: int = 128,
    frames: int = 200,
    optimizer: str = "sgd",
    dtype: torch.dtype = torch.float32,
    feat_dim: int = 80,
    num_classes: int = 5994,
    autocast: torch.dtype | None = None,
    **overrides,
) -> StepMemory:
    """One training step of a registered model traced on the meta device: no memory used.

    The model, a :class:`CosineClassifier` over ``num_classes`` speakers (5994 in VoxCeleb2
    dev; 0 for none), its optimizer (``sgd`` with momentum, ``adam``, ``adamw``, or svlab's
    ``sgd8bit``, ``adam8bit``, ``adamw8bit``) and a ``batch_size x frames x feat_dim``
    batch are built on the meta device, which has shapes but no data. A warm-up step
    creates the optimizer states (one optimizer step on zero gradients); the next step is
    traced by :func:`svlab.memory.step.trace_step`, forward, backward (reversible
    recomputation included) and optimizer step. ``autocast`` (``torch.float16`` or
    ``torch.bfloat16``) traces forward and backward in mixed precision with CUDA autocast's
    casting rules (:mod:`svlab.memory.autocast`), the weights and states in ``dtype``. The
    CUDA context and what kernels allocate inside themselves (workspaces) are not included:
    see :data:`CUDA_CONTEXT_BYTES`. Results are cached, so moving a slider back is instant.

    >>> step = project_step("rev_dfresnet56", batch_size=8, frames=200)
    >>> sorted(step.timeline["phase"].unique()), step.at_peak["bytes"].idxmax()
    (['backward', 'forward', 'step'], 'recomputed')
    """
    return _projected(
        model_name, batch_size, frames, optimizer, dtype, feat_dim, num_classes,
        tuple(sorted(overrides.items())), autocast,
    )


def project(
    model_name: str,
    batch_size: int = 128,
    frames: int = 200,
    optimizer: str = "sgd",
    dtype: torch.dtype = torch.float32,
    feat_dim: int = 80,
    num_classes: int = 5994,
    autocast: torch.dtype | None = None,
    **overrides,
) -> pd.DataFrame:
    """What one training step of a registered model holds at its peak, without running it.

    The composition at the peak of :func:`project_step` (same arguments), by category:
    ``table["bytes"].sum()`` is the whole step's peak (also ``table.attrs["peak_bytes"]``).

    >>> table = project("resnet34", batch_size=128, frames=200, optimizer="adam")
    >>> round(float(table.loc["parameters", "bytes"]) / 1e6, 1), fits(table)
    (32.7, True)
    >>> int(table["bytes"].sum()) == table.attrs["peak_bytes"]
    True
    """
    return _with_peak(
        project_step(
            model_name, batch_size, frames, optimizer, dtype, feat_dim, num_classes, autocast,
            **overrides,
        )
    )


def timeline(model_name: str, **settings) -> pd.DataFrame:
    """Bytes live after each op of one projected training step (``settings`` as
    :func:`project`): columns ``event``, ``phase`` (forward, backward, step), ``module``,
    ``op``, ``live_bytes`` and ``live_MiB``.

    >>> line = timeline("resnet18", batch_size=2, frames=50, num_classes=0)
    >>> line.groupby("phase", sort=False)["live_bytes"].max().idxmax()  # vanilla: end of forward
    'backward'
    """
    return project_step(model_name, **settings).timeline


def fits(
    table: pd.DataFrame,
    capacity_bytes: int = GPU_2080TI_BYTES,
    context_bytes: int = CUDA_CONTEXT_BYTES,
) -> bool:
    """Whether a step's peak (the table's total) plus ``context_bytes`` for the CUDA context
    and the allocator fits in ``capacity_bytes`` (default: an 11 GiB 2080Ti).

    >>> from svlab.memory.step import category_table
    >>> fits(category_table({"parameters": 10, "activations": 5}), 20, context_bytes=6)
    False
    """
    return bool(table["bytes"].clip(lower=0).sum() + context_bytes <= capacity_bytes)


def sweep(
    settings: Mapping[str, Mapping], **common
) -> dict[str, pd.DataFrame]:
    """:func:`project` for each named setting (its keyword arguments over ``common``).

    >>> tables = sweep({"b32": {"batch_size": 32}, "b64": {"batch_size": 64}},
    ...                model_name="resnet18", frames=200)
    >>> activations = {name: table.loc["activations", "bytes"] for name, table in tables.items()}
    >>> round(float(activations["b64"] / activations["b32"]), 1)  # twice the batch
    2.0
    """
    return {name: project(**{**common, **kwargs}) for name, kwargs in settings.items()}


# ---------------------------------------------------------------- command line


def _run(args) -> int:
    if args.recompute and not args.model.startswith("rev_"):
        raise SystemExit(f"svlab memory: --recompute is for reversible models (rev_...), "
                         f"not {args.model}")
    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    table = project(
        args.model,
        batch_size=args.batch_size,
        frames=args.frames,
        optimizer=args.optimizer,
        dtype=dtype[args.dtype],
        num_classes=args.num_classes,
        autocast=dtype.get(args.autocast),
        **({"recompute": args.recompute} if args.recompute else {}),
    )
    table["GiB"] = table["bytes"] / 2**30
    rebuilt = f", rebuilt by {args.recompute}" if args.recompute else ""
    rebuilt += f", {args.autocast} autocast" if args.autocast else ""
    print(f"{args.model}{rebuilt}, batch {args.batch_size} x {args.frames} frames, "
          f"{args.optimizer}, {args.dtype}: what one training step holds at its peak "
          "(projected on the meta device: forward, backward and optimizer step)")
    print(table[["MiB", "GiB"]].round(3).to_string())
    peak = table["bytes"].sum() / 2**30
    context = CUDA_CONTEXT_BYTES / 2**30
    print(f"peak {peak:.2f} GiB + {context:.2f} GiB for the CUDA context and allocator "
          f"= {peak + context:.2f} GiB; fits on an 11 GiB 2080Ti: {fits(table)}")
    return 0


def register_cli(subparsers) -> None:
    """Add ``svlab memory``: the peak memory of one training step, projected.

    >>> import argparse; parser = argparse.ArgumentParser(); register_cli(parser.add_subparsers())
    >>> parser.parse_args(["memory", "--model", "rev_resnet34"]).batch_size
    128
    """
    from svlab.models import available

    description = (
        "Project what one training step (forward, backward, optimizer step) holds at its peak, "
        "by category, without allocating anything (the model is traced on PyTorch's meta "
        "device), and whether it fits on an 11 GiB 2080Ti."
    )
    parser = subparsers.add_parser(
        "memory",
        help="the peak memory of a training step (does it fit on a 2080Ti?)",
        description=description,
    )
    models = available()
    parser.add_argument("--model", default="resnet34", choices=models, metavar="MODEL",
                        help=f"a registered model: {', '.join(models)}")
    parser.add_argument("--batch-size", type=int, default=128, help="utterances per step")
    parser.add_argument("--frames", type=int, default=200, help="fbank frames per utterance")
    parser.add_argument("--optimizer", default="sgd", choices=sorted(STATE_LAYOUT),
                        help="the optimizer whose states the step holds")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                        help="parameters' and activations' type")
    parser.add_argument("--num-classes", type=int, default=5994, help="training speakers")
    parser.add_argument("--autocast", choices=["float16", "bfloat16"], default=None,
                        help="mixed precision: forward and backward under CUDA autocast's rules "
                        "in this type, weights and optimizer states in --dtype (default: off)")
    parser.add_argument("--recompute", choices=["branch", "unit"], default=None,
                        help="reversible models only: rebuild each coupling's branch at once "
                        "(svlab's first way, the models' default) or one conv-BN-ReLU unit at a "
                        "time in batch chunks, the stem and transitions keeping only their input "
                        "(a lower peak, one more forward pass of each unit)")
    parser.set_defaults(func=_run)
