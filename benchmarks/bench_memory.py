"""Training memory: vanilla vs reversible activations by depth, recomputation cost, totals."""

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
from svlab.memory import (
    GPU_2080TI_BYTES,
    CosineClassifier,
    SavedTensorRecorder,
    breakdown,
    fits,
    project,
    saved_by_module,
)
from svlab.profiles import seed_everything
from svlab.reversible import set_memory_saving

RESULTS = Path(__file__).parent / "results" / "memory.json"
TWINS = [  # (vanilla, reversible, depth in the name)
    ("resnet18", "rev_resnet18", 18),
    ("resnet34", "rev_resnet34", 34),
    ("dfresnet56", "rev_dfresnet56", 56),
    ("dfresnet110", "rev_dfresnet110", 110),
    ("dfresnet233", "rev_dfresnet233", 233),
]
PAPER = {"batch_size": 128, "frames": 200, "feat_dim": 80}  # fp32, VoxCeleb2's 5994 speakers
GiB = 2**30


def measured_activations(name: str, batch_size: int, frames: int, feat_dim: int) -> int:
    """Bytes autograd saves in one real CPU forward pass (model built at full size)."""
    model = svlab.models.build(name, feat_dim=feat_dim)
    exclude = list(model.parameters()) + list(model.buffers())
    fbank = torch.randn(batch_size, frames, feat_dim)
    with SavedTensorRecorder(exclude=exclude) as recorder:
        model(fbank).square().mean()
    return recorder.bytes


def activations_by_depth(twins, measure_batch: int) -> list[dict]:
    """Projected activation bytes at the paper's setting, and a real CPU forward at a small
    batch scaled up to 128 (activations are linear in the batch), for each twin pair."""
    rows = []
    for vanilla, reversible, depth in twins:
        row = {"depth": depth, "vanilla": vanilla, "reversible": reversible}
        for kind, name in (("vanilla", vanilla), ("reversible", reversible)):
            table = project(name, optimizer="sgd", num_classes=0, **PAPER)
            row[f"{kind}_projected_GiB"] = table.loc["activations", "bytes"] / GiB
            measured = measured_activations(name, measure_batch, PAPER["frames"], PAPER["feat_dim"])
            row[f"{kind}_measured_b{measure_batch}_x{128 // measure_batch}_GiB"] = (
                measured * (PAPER["batch_size"] // measure_batch) / GiB
            )
        row["reversible_over_vanilla"] = (
            row["reversible_projected_GiB"] / row["vanilla_projected_GiB"]
        )
        rows.append(row)
    return rows


def part_of(name: str, has_first_transition: bool) -> str:
    """The kind of layer a submodule name (depth 3) of an FbankResNet belongs to."""
    if name.startswith("stem"):
        return "stem"
    if name.startswith("stages."):
        first = name.endswith(".0") and (has_first_transition or name != "stages.0.0")
        return "transitions" if first else "coupling outputs"
    return "pooling + embedding"


def what_reversible_models_save(twins) -> list[dict]:
    """Projected activations of each reversible model at the paper's setting, by kind of
    layer: the stem, the ordinary stage transitions, the coupling chains (output only)."""
    rows = []
    for _, reversible, _ in twins:
        with torch.device("meta"):
            model = svlab.models.build(reversible)
            fbank = torch.empty(PAPER["batch_size"], PAPER["frames"], PAPER["feat_dim"])
        parts = saved_by_module(model, fbank, depth=3)
        first_transition = len(model.stages[0]) == 2
        labels = [part_of(name, first_transition) for name in parts.index]
        kinds = parts.groupby(labels).sum()
        row = {"model": reversible, "total_GiB": parts.sum() / GiB}
        row.update({f"{kind}_GiB": value / GiB for kind, value in kinds.items()})
        row["transitions_share"] = kinds.get("transitions", 0) / parts.sum()
        rows.append(row)
    return rows


def total_memory(twins) -> list[dict]:
    """Projected training memory at the paper's setting: vanilla with fp32 states vs
    reversible with 8-bit states, for Adam and for SGD with momentum."""
    rows = []
    for vanilla, reversible, depth in twins:
        for fp32, eight_bit in (("adam", "adam8bit"), ("sgd", "sgd8bit")):
            a = project(vanilla, optimizer=fp32, **PAPER)
            b = project(reversible, optimizer=eight_bit, **PAPER)
            row = {"depth": depth, "vanilla": f"{vanilla} + {fp32}"}
            row["reversible"] = f"{reversible} + {eight_bit}"
            for label, table in (("vanilla", a), ("reversible", b)):
                for category, value in table["bytes"].items():
                    row[f"{label} {category} MiB"] = value / 2**20
                row[f"{label}_total_GiB"] = table["bytes"].sum() / GiB
                row[f"{label}_fits_2080Ti"] = fits(table, GPU_2080TI_BYTES)
            row["saving_x"] = row["vanilla_total_GiB"] / row["reversible_total_GiB"]
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
        exact = flat_gradients(copy.deepcopy(cached).double(), fbank.double())
        grad_rev, grad_cached = flat_gradients(rev, fbank), flat_gradients(cached, fbank)
        times = step_times(
            {"recompute": rev, "cache": cached, "vanilla": svlab.models.build(vanilla, **small)},
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
                "step_ms_cache": 1000 * times["cache"],
                "step_ms_vanilla_twin": 1000 * times["vanilla"],
                "overhead_vs_cache": times["recompute"] / times["cache"],
                "overhead_vs_vanilla": times["recompute"] / times["vanilla"],
                "fp32_recompute_vs_cache_max_diff": (grad_rev - grad_cached).abs().max().item()
                / scale,
                "fp32_recompute_vs_fp64_max_diff": (grad_rev - exact).abs().max().item() / scale,
                "fp32_cache_vs_fp64_max_diff": (grad_cached - exact).abs().max().item() / scale,
            }
        )
    return rows


def cuda_peaks(twins, batch_size: int) -> list[dict]:
    """Measured breakdown on CUDA (allocator peak) beside the projection, fp32 + SGD."""
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
            measured = breakdown(model, opt, batch, loss_fn=head)
            projected = project(name, batch_size=batch_size, optimizer="sgd")
            rows.append(
                {
                    "model": name,
                    "batch": batch_size,
                    "cuda_peak_GiB": measured.attrs["cuda_peak_bytes"] / GiB,
                    "projected_total_GiB": projected["bytes"].sum() / GiB,
                    "hooks_activations_GiB": measured.loc["activations", "bytes"] / GiB,
                    "cuda_activations_GiB": measured.attrs["cuda_activation_bytes"] / GiB,
                    "projected_activations_GiB": projected.loc["activations", "bytes"] / GiB,
                }
            )
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
            "note": "projected = saved-tensor hooks on the meta device; measured = the same hooks "
            "in a real CPU forward at a small batch, scaled linearly to 128",
        },
        "quick": args.quick,
        "machine": platform.platform(),
        "torch": torch.__version__,
    }
    results["activations_by_depth"] = activations_by_depth(
        twins, measure_batch=1 if args.quick else 2
    )
    show(
        "Activation memory per step at batch 128, 200 x 80, fp32 (GiB)",
        results["activations_by_depth"],
    )
    results["reversible_parts"] = what_reversible_models_save(twins)
    show("What the reversible models still save (projected, GiB)", results["reversible_parts"])
    results["total_memory"] = total_memory(twins)
    show(
        "Total training memory, projected (vanilla fp32 states vs reversible 8-bit)",
        [{k: v for k, v in r.items() if "MiB" not in k} for r in results["total_memory"]],
    )
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
