"""Training memory: the whole step's peak, traced and projected, against the CPU allocator;
vanilla + fp32 optimizer vs reversible + 8-bit at the paper's setting, rebuilt by branch and
by unit; mixed precision; recomputation cost."""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path

import pandas as pd
import torch

import svlab.models
from svlab.losses import CosineClassifier
from svlab.memory import (
    CUDA_CONTEXT_BYTES,
    GPU_2080TI_BYTES,
    breakdown,
    fits,
    project,
    project_step,
)
from svlab.memory.saved_tensors import SavedTensorRecorder
from svlab.memory.step import allocator_peak, trace_step
from svlab.models.reversible import set_memory_saving, set_recompute
from svlab.optim import make_optimizer
from svlab.profiles import seed_everything

RESULTS = Path(__file__).parent / "results" / "memory.json"
TWINS = [  # (vanilla, reversible, depth in the name)
    ("resnet18", "rev_resnet18", 18),
    ("resnet34", "rev_resnet34", 34),
    ("dfresnet56", "rev_dfresnet56", 56),
    ("dfresnet110", "rev_dfresnet110", 110),
    ("dfresnet233", "rev_dfresnet233", 233),
]
PAPER = {"batch_size": 128, "frames": 200, "feat_dim": 80}  # fp32, VoxCeleb2's 5994 speakers
GiB, MiB = 2**30, 2**20


def peak_against_allocator(names, batch: int, frames: int, speakers: int = 100) -> list[dict]:
    """A real CPU training step (full-size model, Adam, after a warm-up step): the CPU
    allocator's extra peak (profiler memory events) beside the tracker's, the meta-device
    projection's, and what svlab counted before (the tensors saved in forward)."""
    rows = []
    for spec in names:
        seed_everything(0)
        name, _, grain = spec.partition(":")  # "rev_dfresnet56:unit": rebuilt by unit
        rebuild = {"recompute": grain} if grain else {}
        model = svlab.models.build(name, **rebuild)
        head = CosineClassifier(model.embed_dim, speakers)
        opt = make_optimizer([*model.parameters(), *head.parameters()], "adam", lr=1e-3)
        x, y = torch.randn(batch, frames, 80), torch.randint(0, speakers, (batch,))

        def step(model=model, head=head, opt=opt, x=x, y=y):
            opt.zero_grad(set_to_none=True)
            head(model(x), y).backward()
            opt.step()

        step()
        opt.zero_grad(set_to_none=True)
        allocator = allocator_peak(step, "cpu")
        traced = trace_step(model, opt, x, y, loss_fn=head)
        projected = project_step(name, batch, frames, "adam", num_classes=speakers, **rebuild)
        with SavedTensorRecorder(exclude=[*model.parameters(), *model.buffers()]) as saved:
            head(model(x), y)
        rows.append({
            "model": spec, "batch": f"{batch} x {frames} x 80",
            "allocator_extra_peak_MiB": allocator / MiB,
            "traced_extra_peak_MiB": traced.extra_peak_bytes / MiB,
            "projected_extra_peak_MiB": projected.extra_peak_bytes / MiB,
            "traced_over_allocator": traced.extra_peak_bytes / allocator,
            "forward_saved_only_MiB": saved.bytes / MiB,
            "forward_saved_over_allocator": saved.bytes / allocator,
        })  # fmt: skip
    return rows


def composition(table: pd.DataFrame) -> dict:
    return {f"{category} GiB": value / GiB for category, value in table["bytes"].items()}


def reversible_peak_by_depth(twins, batches) -> list[dict]:
    """Projected step peak of the DF-ResNets and their reversible twins by depth and batch
    (fp32 Adam): what grows with depth, what with the batch."""
    rows = []
    for batch in batches:
        for vanilla, reversible, depth in twins:
            if not vanilla.startswith("df"):
                continue
            for name in (vanilla, reversible):
                table = project(name, batch_size=batch, frames=PAPER["frames"], optimizer="adam")
                rows.append({"model": name, "depth": depth, "batch": batch,
                             "peak_GiB": table["bytes"].sum() / GiB, **composition(table)})
    return rows


def total_memory(twins) -> list[dict]:
    """Projected step peak at the paper's setting: vanilla with fp32 states vs reversible with
    8-bit states (rebuilt by branch, and by unit), for Adam and for SGD with momentum."""
    rows = []
    for vanilla, reversible, depth in twins:
        for fp32, eight_bit in (("adam", "adam8bit"), ("sgd", "sgd8bit")):
            a = project(vanilla, optimizer=fp32, **PAPER)
            b = project(reversible, optimizer=eight_bit, **PAPER)
            c = project(reversible, optimizer=eight_bit, recompute="unit", **PAPER)
            row = {"depth": depth, "vanilla": f"{vanilla} + {fp32}",
                   "reversible": f"{reversible} + {eight_bit}"}
            for label, table in (("vanilla", a), ("reversible", b), ("by unit", c)):
                row.update({f"{label} {k}": v for k, v in composition(table).items()})
                row[f"{label}_peak_GiB"] = table["bytes"].sum() / GiB
                row[f"{label}_fits_2080Ti"] = fits(table, GPU_2080TI_BYTES)
            row["saving_x"] = row["vanilla_peak_GiB"] / row["reversible_peak_GiB"]
            row["saving_by_unit_x"] = row["vanilla_peak_GiB"] / row["by unit_peak_GiB"]
            rows.append(row)
    return rows


def step_times(models: dict[str, torch.nn.Module], fbank: torch.Tensor, repeats: int) -> dict:
    """Median seconds of forward + backward + SGD step for each model. The models take turns
    step by step, so a busy machine slows all of them alike."""
    opts = {k: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9) for k, m in models.items()}
    times = {k: [] for k in models}
    for r in range(repeats + 1):
        for key, model in models.items():
            start = time.perf_counter()
            opts[key].zero_grad(set_to_none=True)
            model(fbank).square().mean().backward()
            opts[key].step()
            if r:  # the first round warms up
                times[key].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def flat_gradients(model: torch.nn.Module, fbank: torch.Tensor) -> torch.Tensor:
    model.zero_grad()
    model(fbank).square().mean().backward()
    return torch.cat([p.grad.flatten().double() for p in model.parameters()])


def recomputation_overhead(twins, repeats: int, small: dict, batch: int, frames: int) -> list:
    """On CPU at a small size: step time of each reversible model with recomputation on vs
    off (same weights) and of its vanilla twin; and how far its float32 gradients are from
    float64 ones, beside the same distance for ordinary (caching) float32 execution."""
    rows = []
    fbank = torch.randn(batch, frames, small["feat_dim"])
    for vanilla, reversible, _ in twins:
        seed_everything(0)
        rev = svlab.models.build(reversible, **small)
        cached = set_memory_saving(copy.deepcopy(rev), False)
        unit = set_recompute(copy.deepcopy(rev), "unit")
        exact = flat_gradients(copy.deepcopy(cached).double(), fbank.double())
        grad_rev, grad_cached = flat_gradients(rev, fbank), flat_gradients(cached, fbank)
        grad_unit = flat_gradients(unit, fbank)
        times = step_times(
            {"recompute": rev, "unit": unit, "cache": cached,
             "vanilla": svlab.models.build(vanilla, **small)},
            fbank,
            repeats,
        )
        scale = exact.abs().max().item()
        rows.append(
            {
                "model": reversible,
                "setting": f"base_width {small['base_width']}, {batch} x {frames} x "
                f"{small['feat_dim']}, CPU 1 thread",
                "step_ms_recompute": 1000 * times["recompute"],
                "step_ms_by_unit": 1000 * times["unit"],
                "step_ms_cache": 1000 * times["cache"],
                "step_ms_vanilla_twin": 1000 * times["vanilla"],
                "overhead_vs_cache": times["recompute"] / times["cache"],
                "overhead_vs_vanilla": times["recompute"] / times["vanilla"],
                "by_unit_vs_by_branch": times["unit"] / times["recompute"],
                "by_unit_vs_vanilla": times["unit"] / times["vanilla"],
                "fp32_recompute_vs_cache_max_diff": (grad_rev - grad_cached).abs().max().item()
                / scale,
                "fp32_recompute_vs_fp64_max_diff": (grad_rev - exact).abs().max().item() / scale,
                "fp32_cache_vs_fp64_max_diff": (grad_cached - exact).abs().max().item() / scale,
                "fp32_by_unit_vs_fp64_max_diff": (grad_unit - exact).abs().max().item() / scale,
            }
        )
    return rows


def mixed_precision(specs, batch: int, frames: int, speakers: int = 100) -> list[dict]:
    """A real CPU training step (full-size models, Adam) traced in float32 and under CPU
    autocast to bfloat16, vanilla and reversible alike: the same batch, the same step."""
    rows = []
    for spec in specs:
        name, _, grain = spec.partition(":")
        peaks = {}
        for dtype in ("float32", "bfloat16"):
            seed_everything(0)
            model = svlab.models.build(name, **({"recompute": grain} if grain else {}))
            head = CosineClassifier(model.embed_dim, speakers)
            opt = make_optimizer([*model.parameters(), *head.parameters()], "adam", lr=1e-3)
            x, y = torch.randn(batch, frames, 80), torch.randint(0, speakers, (batch,))
            autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16")
            with autocast:
                trace_step(model, opt, x, y, loss_fn=head)  # warm-up: Adam's states exist
                peaks[dtype] = trace_step(model, opt, x, y, loss_fn=head).extra_peak_bytes
        rows.append({"model": spec, "batch": f"{batch} x {frames} x 80",
                     "fp32_extra_peak_MiB": peaks["float32"] / MiB,
                     "bf16_autocast_extra_peak_MiB": peaks["bfloat16"] / MiB,
                     "bf16_over_fp32": peaks["bfloat16"] / peaks["float32"]})
    return rows


def projected_mixed_precision(twins) -> list[dict]:
    """At the paper's setting, projected: vanilla + fp32 Adam and reversible (by unit) + 8-bit
    Adam, each in float32 and under CUDA autocast's bfloat16 rules (weights fp32)."""
    rows = []
    for vanilla, reversible, depth in twins:
        row = {"depth": depth, "vanilla": f"{vanilla} + adam",
               "reversible": f"{reversible} by unit + adam8bit"}
        for label, name, optimizer, extra in (("vanilla", vanilla, "adam", {}),
                                              ("by unit", reversible, "adam8bit",
                                               {"recompute": "unit"})):
            for precision, autocast in (("fp32", None), ("bf16", torch.bfloat16)):
                table = project(name, optimizer=optimizer, autocast=autocast, **extra, **PAPER)
                row[f"{label} {precision} GiB"] = table["bytes"].sum() / GiB
        row["saving_fp32_x"] = row["vanilla fp32 GiB"] / row["by unit fp32 GiB"]
        row["saving_bf16_x"] = row["vanilla bf16 GiB"] / row["by unit bf16 GiB"]
        rows.append(row)
    return rows


def cuda_peaks(twins, batch_size: int) -> list[dict]:
    """On CUDA: the allocator's peak over one step beside the tracker and the projection."""
    rows = []
    for names in twins:
        for name in names[:2]:
            seed_everything(0)
            model = svlab.models.build(name).cuda()
            head = CosineClassifier(model.embed_dim, 5994).cuda()
            opt = torch.optim.SGD([*model.parameters(), *head.parameters()], 0.1, momentum=0.9)
            batch = (
                torch.randn(batch_size, PAPER["frames"], PAPER["feat_dim"], device="cuda"),
                torch.randint(0, 5994, (batch_size,), device="cuda"),
            )
            breakdown(model, opt, batch, loss_fn=head, restore=False)
            measured = breakdown(model, opt, batch, loss_fn=head)
            projected = project(name, batch_size=batch_size, optimizer="sgd")
            rows.append({
                "model": name, "batch": batch_size,
                "cuda_peak_GiB": measured.attrs["cuda_peak_bytes"] / GiB,
                "cuda_extra_peak_GiB": measured.attrs["cuda_extra_peak_bytes"] / GiB,
                "traced_extra_peak_GiB": measured.attrs["extra_peak_bytes"] / GiB,
                "projected_peak_GiB": projected.attrs["peak_bytes"] / GiB,
            })  # fmt: skip
            del model, head, opt, batch
            torch.cuda.empty_cache()
    return rows


def show(title: str, rows: list[dict]) -> None:
    print(f"\n## {title}")
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3g}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer models, fewer repeats")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seed_everything(0)
    twins = TWINS[:3] if args.quick else TWINS
    repeats = 3 if args.quick else 7
    small = {"base_width": 8, "feat_dim": 40, "embed_dim": 64}
    results = {
        "setting": {
            **PAPER,
            "dtype": "float32",
            "speakers": 5994,
            "cuda_context_allowance_GiB": CUDA_CONTEXT_BYTES / GiB,
            "note": "peak = the most bytes alive at once in one training step after a warm-up "
            "step (forward, backward, optimizer step), traced storage by storage "
            "(svlab.memory.step); projected = the same trace on the meta device; allocator = "
            "the CPU allocator's own events (torch profiler), full-size models at a small batch",
        },
        "quick": args.quick,
        "machine": platform.platform(),
        "torch": torch.__version__,
    }
    measured = ["resnet34", "rev_resnet34", "rev_resnet34:unit", "dfresnet56", "rev_dfresnet56",
                "rev_dfresnet56:unit"]
    if not args.quick:
        measured += ["dfresnet110", "rev_dfresnet110", "rev_dfresnet110:unit"]
    results["peak_vs_allocator"] = peak_against_allocator(measured, batch=2, frames=200)
    show("One CPU training step (Adam): extra peak, allocator vs traced vs projected (MiB)",
         results["peak_vs_allocator"])
    results["reversible_by_depth"] = reversible_peak_by_depth(
        twins, batches=[32] if args.quick else [32, 128]
    )
    show("Projected step peak by depth and batch, fp32 Adam (GiB)", results["reversible_by_depth"])
    results["total_memory"] = total_memory(twins)
    show(
        "Step peak at batch 128 x 200 x 80: vanilla + fp32 states vs reversible + 8-bit, "
        "rebuilt by branch and by unit (GiB)",
        [{k: v for k, v in r.items() if " GiB" not in k and "fits" not in k}
         for r in results["total_memory"]],
    )
    results["mixed_precision"] = mixed_precision(
        ["resnet34", "rev_resnet34:unit", "dfresnet56", "rev_dfresnet56", "rev_dfresnet56:unit"],
        batch=2, frames=200,
    )
    show("One CPU training step, float32 and bfloat16 autocast: extra peak (MiB)",
         results["mixed_precision"])
    results["mixed_precision_projected"] = projected_mixed_precision(twins)
    show("Step peak at batch 128 x 200 x 80, float32 and bfloat16 autocast, projected (GiB)",
         results["mixed_precision_projected"])
    results["recomputation"] = recomputation_overhead(
        [t for t in twins if t[2] <= 110], repeats, small, batch=8, frames=100
    )
    show(
        "Recomputation on CPU: step time, and gradient error relative to max |grad|",
        results["recomputation"],
    )
    if torch.cuda.is_available():
        results["cuda"] = cuda_peaks(twins[:2], batch_size=32 if args.quick else 128)
        show("CUDA: measured peak vs projection", results["cuda"])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
