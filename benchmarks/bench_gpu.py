"""svlab's CUDA paths measured for real: step peaks against the projection, a 2080Ti cap, training.

Over 450 lines: the one prepared script a GPU session runs once, with its dry run, so that
everything the device runs is in one file and was run on the CPU first.

Five sections (``--sections`` picks some, by number or name), each with a wall-clock budget;
a section that fails records its error in the JSON and the next one runs:

1. ``peak``: one training step after a warm-up step (CosineClassifier over 5994 speakers,
   batch 128 x 200 x 80) of resnet34, rev_resnet34, dfresnet56, rev_dfresnet56, dfresnet233 and
   rev_dfresnet233 with fp32 Adam, svlab's Adam8bit and bitsandbytes' Adam8bit:
   ``torch.cuda.max_memory_allocated`` / ``max_memory_reserved`` (reset before the measured
   step; the batch is halved on out-of-memory and the batch used is recorded), svlab's tracker
   on the real step (:func:`svlab.memory.breakdown`, a third step, with fp32 Adam) and the
   projection (:func:`svlab.memory.project`, same batch; adam8bit's for bitsandbytes), the ratio
   measured / projected, and the whole-system saving (vanilla + fp32 Adam against
   reversible + 8-bit Adam) per family beside the paper's 16.2x.
2. ``cap``: a 2080Ti simulated with ``torch.cuda.set_per_process_memory_fraction(11 GiB /
   total)``; for each setting of 1 at batch 128, :func:`svlab.memory.fits` of the projection
   against whether two steps actually ran under the cap.
3. ``train``: :func:`svlab.train.train` through the gpu code path (amp, DataLoader workers,
   fbank in the workers, no precompute) on the ci corpus with configs/tutorial_resnet.toml
   (480 steps of batch 32), with fp32 Adam, svlab's and bitsandbytes' Adam8bit: EER, steps/s.
4. ``optim``: bitsandbytes' 8-bit Adam and SGD against svlab's (and fp32 torch) on the same
   resnet34, data and seed for 100 steps: relative L2 distance of the parameters, median
   ``optimizer.step()`` and whole-step times.
5. ``workbench``: the workbench's slider re-score (:class:`svlab.workbench.engine.LiveQuantizer`,
   one layer to 4 bits with its codebook cached, re-embed from that block, re-score) on the
   device, median of several, for the tutorial checkpoint and an (untrained) resnet34.

Estimated real run on one H200, about 6 minutes (the budgets in ``BUDGETS`` add up to 8): ci
corpus made if absent ~30 s; 1 ~150 s (of it ~60-90 s of CPU for the projections on the meta
device); 2 ~40 s; 3 ~90 s; 4 ~30 s; 5 ~15 s. ``--dry-run`` runs every section's code on the CPU at
tiny sizes (tiny ResNets, a handful of steps; bitsandbytes on the CPU) in about a minute, and
writes only where ``--out`` says. ``--quick`` on a CUDA machine: the resnet34 family only and
a quarter of the training; without CUDA it runs the dry run (so ``make bench`` passes on CPUs).

On a GPU machine whose Python is not svlab's (3.12, say), without installing svlab: put the
checkout on ``PYTHONPATH``, install the missing wheels with ``pip install --no-deps``
(bitsandbytes, soundfile and what else ``import numpy, pandas, tqdm, cffi`` finds missing), and
run ``PYTHONUNBUFFERED=1 PYTHONPATH=$PWD python benchmarks/bench_gpu.py --out <dir>/gpu.json``.
bitsandbytes loads the library of ``torch.version.cuda``; where its wheel has none for that
version, ``BNB_CUDA_VERSION`` names another (recorded in the JSON).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from svlab.checkpoint import atomic_write, load_model
from svlab.evaluate import EvalSet
from svlab.losses import CosineClassifier
from svlab.memory import (
    CUDA_CONTEXT_BYTES,
    GPU_2080TI_BYTES,
    breakdown,
    fits,
    project,
    unique_bytes,
)
from svlab.memory.step import allocator_peak, optimizer_tensors
from svlab.models import build
from svlab.optim import make_optimizer
from svlab.profiles import REPO_ROOT, get_profile, seed_everything

RESULTS = Path(__file__).parent / "results" / "gpu.json"
TUTORIAL_CONFIG = REPO_ROOT / "configs" / "tutorial_resnet.toml"
TUTORIAL_CHECKPOINT = REPO_ROOT / "checkpoints" / "tutorial_resnet.pt"
SECTIONS = ("peak", "cap", "train", "optim", "workbench")
BUDGETS = {"peak": 200, "cap": 70, "train": 120, "optim": 50, "workbench": 40}  # seconds
OOM_MESSAGES = ("out of memory", "ALLOC_FAILED")  # cuDNN / cuBLAS failing to get a workspace
PAPER_SAVING = 16.2  # the memory paper's whole-system saving, vanilla + fp32 against ours
OPTIMIZERS = (("fp32 Adam", "adam", "svlab"), ("svlab Adam8bit", "adam8bit", "svlab"),
              ("bitsandbytes Adam8bit", "adam8bit", "bitsandbytes"))
TINY = {"base_width": 4, "embed_dim": 16}


@dataclass
class Sizes:
    """Everything that differs between the real run and the dry run."""

    device: str
    families: list[tuple[str, str]]
    overrides: dict
    batch: int
    frames: int
    classes: int
    train_sets: list[str]
    optim_model: str
    optim_batch: int
    optim_steps: int
    workbench_models: list[str]
    workbench_repeats: int
    eval_per_speaker: int
    train_steps_per_epoch: int | None = None  # set: the batch is the corpus's share of it
    cap_bytes: int | None = None  # None: GPU_2080TI_BYTES; the dry run picks one between peaks
    context_bytes: int = CUDA_CONTEXT_BYTES
    budgets: dict = field(default_factory=lambda: dict(BUDGETS))


def real_sizes(quick: bool) -> Sizes:
    families = [("resnet34", "rev_resnet34"), ("dfresnet56", "rev_dfresnet56"),
                ("dfresnet233", "rev_dfresnet233")]
    return Sizes(
        device="cuda", families=families[:1] if quick else families, overrides={}, batch=128,
        frames=200, classes=5994,
        train_sets=["amp=true", "precompute_features=false", "workers=6", "device='cuda'",
                    f"epochs={4 if quick else 16}", f"eval_every={4 if quick else 16}",
                    "checkpoint_every=100000"],
        optim_model="resnet34", optim_batch=16, optim_steps=100,
        workbench_models=["tutorial", "resnet34"], workbench_repeats=7, eval_per_speaker=4,
    )


def dry_sizes() -> Sizes:
    tiny = "{base_width = 4, embed_dim = 16, depths = [1, 1, 1, 1]}"
    return Sizes(
        device="cpu", families=[("resnet18", "rev_resnet18")], overrides=TINY, batch=4,
        frames=40, classes=10,
        train_sets=["amp=true", "precompute_features=false", "workers=1", "device='cpu'",
                    "epochs=2", "eval_every=2", "crop_frames=40",
                    f"model_args={tiny}", "log_every=1", "checkpoint_every=100000"],
        optim_model="resnet18", optim_batch=4, optim_steps=3,
        workbench_models=["tutorial"], workbench_repeats=2, eval_per_speaker=2,
        train_steps_per_epoch=4, context_bytes=0,
    )


# ---------------------------------------------------------------- helpers


def free(device: str) -> None:
    """Let go of everything a finished run left: Python's cycles, then the CUDA cache."""
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is the device running out of memory (torch's own error, or cuDNN /
    cuBLAS failing to allocate a workspace, which PyTorch reports as a RuntimeError).

    >>> out_of_memory(torch.OutOfMemoryError("x")), out_of_memory(RuntimeError("bad shape"))
    (True, False)
    """
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and any(m in str(err) for m in OOM_MESSAGES)


def halving(run: Callable[[int], dict], batch: int, device: str) -> dict:
    """``run(batch)``, halving the batch after each out-of-memory error until it runs (or 1
    fails too, which raises); the row records the batch used and the failures."""
    failed = []
    while True:
        try:
            row = run(batch)
        except RuntimeError as err:
            if batch == 1 or not out_of_memory(err):
                raise
            failed.append(batch)
        else:
            return {**row, "batch": batch, "oom_batches": failed}
        free(device)
        batch //= 2


def settings(sizes: Sizes) -> list[dict]:
    """Every model x optimizer; first the pairs of the whole-system saving (vanilla + fp32 Adam,
    reversible + 8-bit Adam) of every family, so that a spent budget drops the others."""
    pairs, others = [], []
    for vanilla, reversible in sizes.families:
        for model in (vanilla, reversible):
            for label, name, backend in OPTIMIZERS:
                saving = (model == vanilla) == (name == "adam")
                (pairs if saving else others).append(
                    {"model": model, "optimizer": label, "name": name, "backend": backend})
    return pairs + others


def projection(sizes: Sizes, setting: dict, batch: int) -> pd.DataFrame:
    """svlab's projection of the setting's step; bitsandbytes' states are projected as
    svlab's 8-bit ones (same layout)."""
    return project(setting["model"], batch, sizes.frames, setting["name"],
                   num_classes=sizes.classes, **sizes.overrides)


def step_setting(sizes: Sizes, setting: dict, batch: int, traced: bool) -> dict:
    """A warm-up step, then the measured one (allocator peaks), then optionally a traced one."""
    device = sizes.device
    free(device)
    leftover = torch.cuda.memory_allocated() if device == "cuda" else 0
    seed_everything(0)
    model = build(setting["model"], **sizes.overrides).to(device).train()
    head = CosineClassifier(model.embed_dim, sizes.classes).to(device)
    weights = [*model.parameters(), *head.parameters()]
    optimizer = make_optimizer(weights, setting["name"], 1e-3, backend=setting["backend"])
    feats = torch.randn(batch, sizes.frames, 80, device=device)
    labels = torch.randint(0, sizes.classes, (batch,), device=device)

    def step() -> None:
        for p in weights:
            p.grad = None
        head(model(feats), labels).backward()
        optimizer.step()

    step()  # warm-up: the optimizer states exist from here on
    synchronize(device)
    if device == "cuda":
        before = torch.cuda.memory_allocated()
    else:
        before = unique_bytes([*weights, *optimizer_tensors(optimizer), feats, labels])
    start = time.perf_counter()
    extra = allocator_peak(step, device)  # resets the CUDA peak stats before the step
    seconds = time.perf_counter() - start
    row = {"measured_peak_bytes": before + extra, "start_bytes": before, "step_s": seconds,
           "leftover_bytes": leftover,
           "reserved_peak_bytes": torch.cuda.max_memory_reserved() if device == "cuda" else None}
    if traced:
        table = breakdown(model, optimizer, (feats, labels), loss_fn=head, restore=False)
        row.update(tracked_peak_bytes=table.attrs["peak_bytes"],
                   breakdown_cuda_peak_bytes=table.attrs.get("cuda_peak_bytes"))
    return row


class Budget:
    """A section's wall-clock budget: ``spent()`` once it has run out."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.deadline = seconds, time.perf_counter() + seconds

    def spent(self) -> bool:
        return time.perf_counter() > self.deadline

    def skip_row(self, **row) -> dict:
        return {**row, "skipped": f"section budget of {self.seconds:.0f} s spent"}


def guarded(row: dict, fn: Callable[[], dict], device: str) -> dict:
    """``fn()``'s fields over ``row``, or ``row`` with the error: one failing row is one row."""
    try:
        return {**row, **fn()}
    except Exception as err:  # noqa: BLE001 - recorded in the JSON, the section goes on
        return {**row, "error": f"{type(err).__name__}: {err}"[:500]}
    finally:
        free(device)


# ---------------------------------------------------------------- 1. peak


def section_peak(sizes: Sizes, budget: Budget, state: dict) -> list[dict]:
    rows = []
    for setting in settings(sizes):
        base = {"model": setting["model"], "optimizer": setting["optimizer"],
                "batch_asked": sizes.batch, "frames": sizes.frames}
        if budget.spent():
            rows.append(budget.skip_row(**base))
            continue

        def measure(setting=setting) -> dict:
            traced = setting["name"] == "adam"  # svlab's tracker on the real step, once a model
            row = halving(lambda b: step_setting(sizes, setting, b, traced), sizes.batch,
                          sizes.device)
            projected = projection(sizes, setting, row["batch"]).attrs["peak_bytes"]
            return {**row, "projected_peak_bytes": projected,
                    "measured_over_projected": row["measured_peak_bytes"] / projected}

        rows.append(guarded(base, measure, sizes.device))
    state["peak_rows"] = rows
    return rows


def savings(sizes: Sizes, rows: list[dict]) -> list[dict]:
    """Vanilla + fp32 Adam against reversible + 8-bit Adam, per family, measured and projected."""
    found = {(r["model"], r["optimizer"]): r for r in rows if "measured_peak_bytes" in r}
    out = []
    for vanilla, reversible in sizes.families:
        for label in ("svlab Adam8bit", "bitsandbytes Adam8bit"):
            a, b = found.get((vanilla, "fp32 Adam")), found.get((reversible, label))
            if a is None or b is None:
                continue
            out.append({"family": vanilla, "ours": f"{reversible} + {label}",
                        "batches": f"{a['batch']} / {b['batch']}",
                        "measured_saving": a["measured_peak_bytes"] / b["measured_peak_bytes"],
                        "projected_saving": a["projected_peak_bytes"] / b["projected_peak_bytes"],
                        "paper_saving": PAPER_SAVING})
    return out


# ---------------------------------------------------------------- 2. cap


def section_cap(sizes: Sizes, budget: Budget, state: dict) -> list[dict]:
    device = sizes.device
    tables = {}
    for setting in settings(sizes):
        tables[setting["model"], setting["name"]] = projection(sizes, setting, sizes.batch)
    if device == "cuda":
        total = torch.cuda.get_device_properties(0).total_memory
        cap = sizes.cap_bytes or GPU_2080TI_BYTES
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total))
    else:  # no per-process limit on the CPU: a step "runs" if its measured peak is under a cap
        peaks = sorted(t.attrs["peak_bytes"] for t in tables.values())
        cap = sizes.cap_bytes or peaks[len(peaks) // 2]
    state["cap_bytes"] = cap
    rows = []
    try:
        for setting in settings(sizes):
            table = tables[setting["model"], setting["name"]]
            base = {"model": setting["model"], "optimizer": setting["optimizer"],
                    "batch": sizes.batch, "cap_bytes": cap,
                    "projected_peak_bytes": table.attrs["peak_bytes"],
                    "projected_fits": fits(table, cap, sizes.context_bytes),
                    # the fraction caps the allocator only, not the CUDA context: the verdict
                    # without svlab's context allowance is the one the cap can confirm exactly
                    "projected_fits_without_context": fits(table, cap, 0)}
            if budget.spent():
                rows.append(budget.skip_row(**base))
                continue
            rows.append(guarded(base, lambda s=setting: capped_run(sizes, s, cap), device))
    finally:
        if device == "cuda":
            torch.cuda.set_per_process_memory_fraction(1.0)
    for row in rows:
        if "ran" in row:
            row["agree"] = row["ran"] == row["projected_fits"]
    return rows


def capped_run(sizes: Sizes, setting: dict, cap: int) -> dict:
    try:
        row = step_setting(sizes, setting, sizes.batch, traced=False)
    except RuntimeError as err:
        if not out_of_memory(err):
            raise
        return {"ran": False, "oom": str(err).splitlines()[0][:300]}
    ran = sizes.device == "cuda" or row["measured_peak_bytes"] <= cap
    return {"ran": ran, "measured_peak_bytes": row["measured_peak_bytes"]}


# ---------------------------------------------------------------- 3. train


def corpus(state: dict) -> Path:
    """The corpus root that main prepared, or the error that preparing it raised."""
    if "corpus" not in state:
        raise RuntimeError(f"no corpus: {state.get('corpus_error', 'not prepared')}")
    return Path(state["corpus"])


def section_train(sizes: Sizes, budget: Budget, state: dict) -> list[dict]:
    rows = []
    for label, name, backend in OPTIMIZERS:
        base = {"optimizer": label}
        if budget.spent():
            rows.append(budget.skip_row(**base))
            continue

        def run(name=name, backend=backend) -> dict:
            with tempfile.TemporaryDirectory(prefix="bench-gpu-train-") as out:
                return train_run(sizes, state, name, backend, out)

        rows.append(guarded(base, run, sizes.device))
    return rows


def train_run(sizes: Sizes, state: dict, name: str, backend: str, out: str) -> dict:
    """One :func:`svlab.train.train` run of the tutorial recipe with ``sizes.train_sets``."""
    from svlab.train import TrainConfig, train

    sets = [*sizes.train_sets, f"optimizer='{name}'", f"optimizer_backend='{backend}'",
            f"data_root='{corpus(state)}'", f"out_dir='{out}'"]
    if sizes.train_steps_per_epoch:  # the same few steps on any corpus
        listed = (corpus(state) / "train.txt").read_text().split("\n")
        utterances = sum(1 for line in listed if line.strip())
        sets.append(f"batch_size={max(1, utterances // sizes.train_steps_per_epoch)}")
    cfg = TrainConfig.from_toml(TUTORIAL_CONFIG, "ci", sets)
    start = time.perf_counter()
    result = train(cfg, progress=False)
    seconds = time.perf_counter() - start
    logged = result.history.dropna(subset=["loss"]).iloc[-1]
    scored = result.evaluations
    return {"model": cfg.model, "batch": cfg.batch_size, "amp": cfg.amp,
            "workers": cfg.workers, "steps": int(logged["step"]),
            "steps_per_s": float(logged["step"] / logged["seconds"]),
            "final_loss": float(logged["loss"]),
            "eer": float(scored["eer"].iloc[-1]) if len(scored) else None,
            "min_dcf": float(scored["min_dcf"].iloc[-1]) if len(scored) else None,
            "wall_s": seconds}


# ---------------------------------------------------------------- 4. optim


def optimizer_run(sizes: Sizes, name: str, backend: str) -> tuple[torch.Tensor, dict]:
    """``optim_steps`` steps from the same start on the same batches; the final parameters."""
    device = sizes.device
    seed_everything(0)
    model = build(sizes.optim_model, **sizes.overrides).to(device).train()
    head = CosineClassifier(model.embed_dim, sizes.classes).to(device)
    weights = [*model.parameters(), *head.parameters()]
    lr = 1e-3 if "adam" in name else 0.05
    optimizer = make_optimizer(weights, name, lr, nesterov=False, backend=backend)
    generator = torch.Generator().manual_seed(1)
    batches = [(torch.randn(sizes.optim_batch, sizes.frames, 80, generator=generator).to(device),
                torch.randint(0, sizes.classes, (sizes.optim_batch,), generator=generator)
                .to(device)) for _ in range(4)]
    step_s, whole_s = [], []
    for i in range(sizes.optim_steps):
        feats, labels = batches[i % len(batches)]
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        head(model(feats), labels).backward()
        synchronize(device)
        middle = time.perf_counter()
        optimizer.step()
        synchronize(device)
        end = time.perf_counter()
        step_s.append(end - middle)
        whole_s.append(end - start)
    final = torch.cat([p.detach().float().flatten().cpu() for p in weights])
    return final, {"optimizer_step_s": statistics.median(step_s),
                   "whole_step_s": statistics.median(whole_s), "type": type(optimizer).__name__}


def section_optim(sizes: Sizes, budget: Budget, state: dict) -> list[dict]:
    rows = []
    for name in ("adam8bit", "sgd8bit"):
        finals = {}
        for backend, run_name in (("fp32", name.replace("8bit", "")), ("svlab", name),
                                  ("bitsandbytes", name)):
            base = {"optimizer": name, "backend": backend, "model": sizes.optim_model,
                    "steps": sizes.optim_steps, "batch": sizes.optim_batch}
            if budget.spent():
                rows.append(budget.skip_row(**base))
                continue

            def run(run_name=run_name, backend=backend, finals=finals) -> dict:
                final, row = optimizer_run(sizes, run_name, "svlab" if backend == "fp32"
                                           else backend)
                finals[backend] = final
                return row

            rows.append(guarded(base, run, sizes.device))
        for row in rows[-3:]:
            if "svlab" in finals and row["backend"] in finals:
                reference = finals["svlab"]
                distance = (finals[row["backend"]] - reference).norm() / reference.norm()
                row["drift_from_svlab"] = float(distance)
    return rows


# ---------------------------------------------------------------- 5. workbench


def section_workbench(sizes: Sizes, budget: Budget, state: dict) -> list[dict]:
    from svlab.workbench.engine import LiveQuantizer, workbench_trials

    root = corpus(state)
    trials = workbench_trials(root, per_speaker=sizes.eval_per_speaker)
    evalset = EvalSet.from_trials(trials, root / "wav", max_seconds=2.0)
    rows = []
    for which in sizes.workbench_models:
        base = {"model": which, "utterances": len(evalset.keys), "trials": len(trials)}
        if budget.spent():
            rows.append(budget.skip_row(**base))
            continue

        def run(which=which) -> dict:
            seed_everything(0)
            if which == "tutorial" and TUTORIAL_CHECKPOINT.is_file():
                model = load_model(TUTORIAL_CHECKPOINT)
            else:  # the architecture only: the timing does not depend on trained weights
                model = build(which if which != "tutorial" else "resnet18", **sizes.overrides)
            live = LiveQuantizer(model.to(sizes.device), evalset)
            layers = live.layers
            picked = sorted({layers[0], layers[len(layers) // 2], layers[-1]}, key=layers.index)
            cold, warm = [], []
            for layer in picked:
                start = time.perf_counter()
                live.set_bits(layer, 4)
                cold.append(time.perf_counter() - start)
                for _ in range(sizes.workbench_repeats):
                    live.set_bits(layer, None)
                    start = time.perf_counter()
                    live.set_bits(layer, 4)
                    warm.append(time.perf_counter() - start)
                live.set_bits(layer, None)
            full = []
            for _ in range(sizes.workbench_repeats):
                start = time.perf_counter()
                evalset.score(live.model)
                full.append(time.perf_counter() - start)
            return {"layers_timed": len(picked), "median_cold_s": statistics.median(cold),
                    "median_rescore_s": statistics.median(warm),
                    "median_full_forward_s": statistics.median(full),
                    "fp32_eer": live.fp32.eer}

        rows.append(guarded(base, run, sizes.device))
    return rows


# ---------------------------------------------------------------- main


RUNNERS = {"peak": section_peak, "cap": section_cap, "train": section_train,
           "optim": section_optim, "workbench": section_workbench}


def environment(device: str) -> dict:
    try:
        import bitsandbytes

        bnb = bitsandbytes.__version__
    except Exception as err:  # noqa: BLE001 - a missing or broken install is a result too
        bnb = f"unavailable: {type(err).__name__}: {err}"[:300]
    env = {"python": platform.python_version(), "torch": torch.__version__,
           "cuda": torch.version.cuda, "bitsandbytes": bnb, "device": device,
           "BNB_CUDA_VERSION": os.environ.get("BNB_CUDA_VERSION"),
           "machine": platform.processor() or platform.machine()}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update(device_name=props.name, total_memory_bytes=props.total_memory,
                   capability=[props.major, props.minor], cudnn=torch.backends.cudnn.version(),
                   cudnn_tf32=torch.backends.cudnn.allow_tf32,
                   matmul_tf32=torch.backends.cuda.matmul.allow_tf32)
    return env


def pick_sections(names: list[str]) -> list[str]:
    """Section names from names or numbers (1-5), in the script's order.

    >>> pick_sections(["3", "peak"])
    ['peak', 'train']
    """
    chosen = set()
    for name in names:
        if name.isdigit() and 1 <= int(name) <= len(SECTIONS):
            chosen.add(SECTIONS[int(name) - 1])
        elif name in SECTIONS:
            chosen.add(name)
        else:
            raise ValueError(f"unknown section {name!r}; choose from 1-5 or {SECTIONS}")
    return [s for s in SECTIONS if s in chosen]


def show(name: str, section: dict) -> None:
    """Print a section's tables (and its error, if any)."""
    error = f"  ERROR {section['error']}" if section["error"] else ""
    print(f"\n== {name} ({section['seconds']:.1f} s){error}")
    for key in ("rows", "savings"):
        if section.get(key):
            frame = pd.DataFrame(section[key])
            print(frame.to_string(index=False, float_format=lambda x: f"{x:.4g}"), flush=True)


def plain(value):
    """JSON for numpy numbers and anything else (as text)."""
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="every section on the CPU at tiny sizes (needs --out)")
    parser.add_argument("--quick", action="store_true",
                        help="resnet34 family only, shorter training; no CUDA: the dry run")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS),
                        help=f"numbers 1-5 or names {SECTIONS}")
    parser.add_argument("--out", type=Path, help=f"results JSON (default: {RESULTS})")
    parser.add_argument("--corpus", type=Path,
                        help="corpus root for sections 3 and 5 (default: the ci profile's)")
    args = parser.parse_args(argv)
    try:
        sections = pick_sections(args.sections)
    except ValueError as err:
        parser.error(str(err))
    dry = args.dry_run or (args.quick and not torch.cuda.is_available())
    if dry and args.out is None:
        args.out = Path(tempfile.gettempdir()) / "svlab-bench-gpu-dry-run.json"
    out = args.out or RESULTS
    if dry and out.resolve().parent == RESULTS.parent.resolve():
        parser.error(f"the dry run does not write to {RESULTS.parent}: give --out elsewhere")
    if not dry and not torch.cuda.is_available():
        parser.error("no CUDA device: run with --dry-run (CPU, tiny sizes) to check the script")
    sizes = dry_sizes() if dry else real_sizes(args.quick)
    seed_everything(0)
    started = time.perf_counter()
    state: dict = {}
    if {"train", "workbench"} & set(sections):
        start = time.perf_counter()
        try:
            state["corpus"] = str(args.corpus or get_profile("ci").ensure_corpus())
        except Exception as err:  # noqa: BLE001 - sections 3 and 5 report it; 1, 2, 4 still run
            state["corpus_error"] = f"{type(err).__name__}: {err}"[:1000]
        state["corpus_s"] = time.perf_counter() - start
    result = {"environment": environment(sizes.device), "dry_run": dry, "quick": args.quick,
              "settings": {**vars(sizes), "paper_saving": PAPER_SAVING,
                           "sections": sections, "corpus": state.get("corpus"),
                           "corpus_s": state.get("corpus_s"),
                           "corpus_error": state.get("corpus_error")},
              "sections": {}}
    for name in sections:
        budget = Budget(sizes.budgets[name])
        start = time.perf_counter()
        section = {"rows": [], "error": None}
        try:
            section["rows"] = RUNNERS[name](sizes, budget, state)
        except Exception as err:  # noqa: BLE001 - recorded; the other sections still run
            section["error"] = f"{type(err).__name__}: {err}"[:1000]
        free(sizes.device)
        section["seconds"] = time.perf_counter() - start
        if name == "peak":
            section["savings"] = savings(sizes, section["rows"])
        if name == "cap":
            section["cap_bytes"] = state.get("cap_bytes")
        result["sections"][name] = section
        show(name, section)
        result["total_s"] = time.perf_counter() - started
        text = json.dumps(result, indent=2, default=plain) + "\n"
        atomic_write(out, lambda f, text=text: f.write(text.encode()))  # after every section
    print(f"\n{result['total_s']:.0f} s in all; wrote {out}", flush=True)
    return result


if __name__ == "__main__":
    main()
