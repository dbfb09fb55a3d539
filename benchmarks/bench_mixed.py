"""Mixed vs uniform precision at equal size, one-shot vs MSFT, 1-bit schemes; allocation time.

On the tutorial checkpoints (``checkpoints/tutorial_*.pt``) scored on the profile's trial list:

1. sensitivity: Hessian-trace (HAWQ-v2, Hutchinson) beside one-layer-at-a-time measurement of
   the same embedding-distortion loss; their rank correlation and cost;
2. size vs EER: uniform k-means at each width, and the mixed bit map at that same size (and at
   sizes in between), chosen by exact allocation from each sensitivity; no fine-tuning;
3. one-shot vs MSFT at one mixed bit map: quantize everything then fine-tune, or quantize in
   stages (several orders) fine-tuning between stages, for the same total number of steps;
   MSFT with the quantized layers frozen (svlab's reading of MSFT) and trained on through the
   STE ("(STE)");
4. 1-bit: sign, static, adaptive (and 1-bit k-means), before and after the same fine-tuning
   (at ``--binary-lr``);
5. the time to allocate bits for a resnet34-sized model (6.6 M weights, 37 layers).

Fine-tuning is ``svlab.train.train`` (AAM-softmax, starting from the checkpoint's trained head)
for ``--steps`` steps, repeated for ``--seeds`` seeds (crops and their order); the fp32 model
fine-tuned the same way with the same seed is the control. Every EER is scored on
``trials/large.txt`` with its speaker-bootstrap interval, and every method is compared with
its control paired on the same trials (`svlab.comparison.compare`); the summaries give the mean
and spread over seeds and in how many seeds a difference was resolved. Prints tables, writes
benchmarks/results/mixed.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from svlab import checkpoint
from svlab.comparison import across_seeds, compare
from svlab.data.pairs import LARGE_TRIALS
from svlab.evaluate import EvalSet
from svlab.metrics import eer
from svlab.models import build
from svlab.profiles import REPO_ROOT, get_profile, seed_everything
from svlab.quant import (
    binarize,
    binarizers,
    binary_size,
    model_hessian_sensitivity,
    msft,
    plan_bits,
    quantizable_names,
    quantize_model,
)
from svlab.quant.allocate import mixed_vs_uniform
from svlab.quant.finetune import fine_tuner
from svlab.quant.hessian import measured_sensitivity, quantization_errors
from svlab.quant.packed import model_size
from svlab.train import SpeakerCrops, TrainingError

CHOICES = (1, 2, 3, 4, 6, 8)
RESULTS = REPO_ROOT / "benchmarks" / "results" / "mixed.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true",
        help="fewer points and steps; one model unless --checkpoints names more",
    )
    parser.add_argument("--checkpoints", nargs="*", help="model checkpoints (default: tutorials)")
    parser.add_argument("--profile", default="ci")
    parser.add_argument("--seed", type=int, default=0, help="the seed of everything untuned")
    parser.add_argument("--seeds", type=int, default=3, help="fine-tuning seeds (quick: 1)")
    parser.add_argument("--trials", default=LARGE_TRIALS, help="trial list under trials/")
    parser.add_argument("--steps", type=int, help="fine-tuning steps (default 60, quick 24)")
    parser.add_argument("--lr", type=float, default=3e-4, help="fine-tuning learning rate (Adam)")
    parser.add_argument(
        "--binary-lr", type=float, default=2e-3,
        help="learning rate for 1-bit models, whose latent weights must move far enough to flip",
    )
    parser.add_argument(
        "--binary-steps", type=int, help="fine-tuning steps of 1-bit models (default 240, quick 24)"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--crop-frames", type=int, default=100)
    parser.add_argument(
        "--msft-bits", type=int, default=2, help="one-shot / MSFT: mixed at this width's size"
    )
    parser.add_argument("--hutchinson", type=int, default=16, help="Rademacher samples")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def rank_correlation(a: list[float], b: list[float]) -> float:
    """Spearman's rho (average ranks for ties)."""
    def ranks(x):
        x = np.asarray(x, dtype=float)
        order = x.argsort(kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x))
        for value in np.unique(x):
            tied = x == value
            r[tied] = r[tied].mean()
        return r

    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def calibration_batch(root: Path, args: argparse.Namespace, size: int) -> torch.Tensor:
    """``size`` training crops (a fixed batch): the data of the Hessian and the measurement."""
    crops = SpeakerCrops.from_corpus(root, args.crop_frames, args.seed + 1)
    return crops.batch(epoch=0, index=0, batch_size=size)[0]


def distortion_fn(model: torch.nn.Module, feats: torch.Tensor):
    """Mean squared embedding change from the fp32 model on ``feats``: the measured loss."""
    with torch.no_grad():
        reference = model.eval()(feats)

    def measure(quantized: torch.nn.Module) -> float:
        with torch.no_grad():
            return float(((quantized.eval()(feats) - reference) ** 2).sum(dim=-1).mean())

    return measure


def bench_allocation(quick: bool) -> list[dict]:
    """Time exact allocation on resnet34 (random init) with HAWQ-style costs."""
    model = build("resnet34").eval()
    seed_everything(0)
    started = time.perf_counter()
    errors = quantization_errors(model, CHOICES, method="uniform")
    errors_seconds = time.perf_counter() - started
    started = time.perf_counter()
    sensitivity = model_hessian_sensitivity(
        model, torch.randn(2, 100, 80), CHOICES, n_samples=1 if quick else 4, method="uniform"
    )
    hessian_seconds = time.perf_counter() - started
    del errors
    params = sum(p.numel() for p in model.parameters())
    smallest, largest = model_size(model, 1), model_size(model, 8)
    rows = []
    for average in (1.5, 2, 3, 4, 6) if not quick else (2, 4):
        size = smallest + (largest - smallest) * (average - 1) / 7
        times = []
        for _ in range(3):
            started = time.perf_counter()
            plan = plan_bits(model, sensitivity, size, CHOICES)
            times.append(time.perf_counter() - started)
        rows.append(
            {
                "model": "resnet34",
                "params": params,
                "layers": len(plan),
                "target_avg_bits": average,
                "size_bytes": model_size(model, plan),
                "budget_bytes": int(size),
                "allocate_seconds": min(times),
                "bit_counts": {b: sum(v == b for v in plan.values()) for b in CHOICES},
                "uniform_errors_seconds": errors_seconds,
                "hessian_seconds": hessian_seconds,
            }
        )
    return rows


def score(eval_set: EvalSet, model: torch.nn.Module) -> float:
    return float(eval_set.score(model)["eer"])


def finite_scores(eval_set: EvalSet, model: torch.nn.Module) -> np.ndarray | None:
    """The trial scores, or None where they are not finite (a diverged binary model)."""
    try:
        return eval_set.score(model)["scores"]
    except ValueError as error:
        if "NaN or infinite" not in str(error):
            raise
        return None


def compared(eval_set: EvalSet, scores: dict, control: str, **keys) -> list[dict]:
    """`svlab.comparison.compare` of ``scores`` against ``control``, as JSON rows with ``keys``;
    printed as a table."""
    table = compare(scores, eval_set.labels, eval_set.pairs, control=control)
    print(table[["system", "EER", "vs control"]].to_string(index=False))
    return table.assign(**keys).to_dict(orient="records")


def make_tuner(path: Path, args, root: Path, out_dir: Path, lr: float, seed: int):
    """A ``fine_tuner`` for the checkpoint at ``path``: the bench's batch and crops, ``seed``
    (crops and their order), at ``lr``, starting from the checkpoint's trained AAM head."""
    return fine_tuner(
        args.profile, data_root=root, lr=lr, batch_size=args.batch_size,
        crop_frames=args.crop_frames, seed=seed, out_dir=out_dir,
        head=checkpoint.load_head(path),
    )


def bench_model(path: Path, args, eval_set: EvalSet, root: Path, workdir: str) -> dict:
    name = path.stem
    model = checkpoint.load_model(path).eval()
    out: dict = {"checkpoint": str(path), "weights": len(quantizable_names(model))}
    out["fp32"] = {"eer": score(eval_set, model), "size_bytes": model_size(model)}
    feats = calibration_batch(root, args, 16 if args.quick else 32)

    seed_everything(args.seed)
    started = time.perf_counter()
    hessian = model_hessian_sensitivity(model, feats, CHOICES, n_samples=args.hutchinson)
    hessian_seconds = time.perf_counter() - started
    started = time.perf_counter()
    measured = measured_sensitivity(
        model, distortion_fn(model, feats), CHOICES, metric="distortion"
    )
    measured_seconds = time.perf_counter() - started
    keys = [(layer, b) for layer in hessian for b in CHOICES]
    out["sensitivity"] = {
        "hessian_seconds": hessian_seconds,
        "measured_seconds": measured_seconds,
        "spearman": rank_correlation(
            [hessian[k][b] for k, b in keys], [measured[k][b] for k, b in keys]
        ),
        "hessian": hessian,
        "measured": measured,
    }

    widths = (2, 3, 4) if args.quick else CHOICES
    smallest, largest = model_size(model, 1), model_size(model, 4)
    between = [] if args.quick else [smallest + (largest - smallest) * f for f in (0.15, 0.4)]
    curve = mixed_vs_uniform(model, hessian, eval_set.score, widths, extra_sizes=between)
    for row in curve:
        row["sensitivity"] = "hessian" if row["scheme"] == "mixed" else "-"
    sizes = [row["size_bytes"] for row in curve if row["scheme"] == "uniform"] + between
    for size in sizes:
        plan = plan_bits(model, measured, size, CHOICES)
        quantized = quantize_model(model, plan)
        curve.append(
            {
                "scheme": "mixed",
                "sensitivity": "measured",
                "bits": average_bits(model, plan),
                "size_bytes": model_size(quantized),
                "eer": score(eval_set, quantized),
                "bit_map": plan,
            }
        )
    out["curve"] = curve
    print(f"-- {name}: Hessian-guided mixed vs uniform at each uniform width's size, no tuning")
    out["mixed_vs_uniform"] = []
    for width in widths:
        uniform = quantize_model(model, width)
        plan = plan_bits(model, hessian, model_size(uniform), CHOICES)
        scores = {f"uniform {width}-bit": eval_set.score(uniform)["scores"],
                  f"mixed at {width}-bit size": eval_set.score(quantize_model(model, plan))[
                      "scores"]}  # fmt: skip
        out["mixed_vs_uniform"] += compared(eval_set, scores, f"uniform {width}-bit", bits=width)

    target = model_size(model, args.msft_bits)
    plan = plan_bits(model, hessian, target, CHOICES)
    out["msft"] = {"bit_map": plan, "target_bytes": int(target), "steps": args.steps, "seeds": []}
    out["binary"] = {"steps": args.binary_steps, "lr": args.binary_lr, "seeds": []}
    for seed in args.seeds:
        tuner = make_tuner(path, args, root, Path(workdir) / f"{name}-{seed}", args.lr, seed)
        out["msft"]["seeds"].append(bench_msft(path, model, plan, hessian, args, eval_set, tuner,
                                               seed))  # fmt: skip
        binary_tuner = make_tuner(
            path, args, root, Path(workdir) / f"{name}-binary-{seed}", args.binary_lr, seed
        )
        out["binary"]["seeds"].append(bench_binary(model, args, eval_set, binary_tuner, seed))
    for part in ("msft", "binary"):
        tables = [pd.DataFrame(run["vs_fp32"]) for run in out[part]["seeds"]]
        out[part]["summary"] = across_seeds(tables).to_dict(orient="records")
    tables = [pd.DataFrame(run["vs_oneshot"]) for run in out["msft"]["seeds"]]
    out["msft"]["summary_vs_oneshot"] = across_seeds(tables).to_dict(orient="records")
    tables = [pd.DataFrame(run["adaptive_vs_static"]) for run in out["binary"]["seeds"]
              if run["adaptive_vs_static"]]  # fmt: skip
    out["binary"]["summary_adaptive_vs_static"] = (
        across_seeds(tables).to_dict(orient="records") if tables else []
    )
    return {name: out}


def bench_msft(path: Path, model, plan, hessian, args, eval_set, tuner, seed: int) -> dict:
    """One seed of: fp32 fine-tuned (the control), uniform and mixed one-shot, and MSFT in
    several orders, all for the same ``--steps``; each against the control and each MSFT run
    against mixed one-shot, paired on the same trials."""
    steps = args.steps
    seed_everything(seed)
    scores = {"fp32 fine-tuned": eval_set.score(tuner(steps, checkpoint.load_model(path)))[
        "scores"]}  # fmt: skip
    seed_everything(seed)
    uniform = tuner(steps, quantize_model(model, args.msft_bits))
    scores[f"uniform {args.msft_bits}-bit one-shot"] = eval_set.score(uniform)["scores"]
    seed_everything(seed)
    oneshot = quantize_model(model, plan)
    before = score(eval_set, oneshot)
    scores["mixed one-shot"] = eval_set.score(tuner(steps, oneshot))["scores"]
    orders = ("shallow_to_deep", "sensitive_first") if args.quick else (
        "shallow_to_deep", "deep_to_shallow", "sensitive_first", "sensitive_last"
    )
    n_stages = min(4, len(plan))
    stages = {}
    for order, freeze in [(order, True) for order in orders] + [("shallow_to_deep", False)]:
        seed_everything(seed)
        tuned, history = msft(
            model, plan, order, steps // n_stages, n_stages=n_stages, sensitivity=hessian,
            trainer=tuner, freeze_quantized=freeze,
        )
        label = f"MSFT {order}" + ("" if freeze else " (STE)")
        scores[label] = eval_set.score(tuned)["scores"]
        stages[label] = [h["layers"] for h in history]
    print(f"-- {path.stem}, seed {seed}: {steps} fine-tuning steps each, mixed at "
          f"{args.msft_bits}-bit size (before tuning {100 * before:.2f}%)")  # fmt: skip
    vs_fp32 = compared(eval_set, scores, "fp32 fine-tuned", seed=seed)
    print("   MSFT against mixed one-shot:")
    contrast = {k: v for k, v in scores.items() if k == "mixed one-shot" or k.startswith("MSFT")}
    vs_oneshot = compared(eval_set, contrast, "mixed one-shot", seed=seed)
    return {"seed": seed, "mixed_before_tuning": before, "stages": stages,
            "vs_fp32": vs_fp32, "vs_oneshot": vs_oneshot}  # fmt: skip


def bench_binary(model: torch.nn.Module, args, eval_set: EvalSet, tuner, seed: int) -> dict:
    """One seed of each 1-bit scheme (and 1-bit k-means) before and after ``--binary-steps`` of
    fine-tuning, beside the fp32 model fine-tuned the same way (the control), paired on the
    same trials; and adaptive against static."""
    steps = args.binary_steps
    seed_everything(seed)
    scores = {"fp32 fine-tuned": eval_set.score(tuner(steps, copy.deepcopy(model)))["scores"]}
    details = []
    for scheme in ("sign", "static", "adaptive", "kmeans"):
        seed_everything(seed)
        if scheme == "kmeans":
            quantized = quantize_model(model, 1)
            size = model_size(quantized)
        else:
            quantized = binarize(model, scheme)
            size = binary_size(quantized)["total"]
        ptq = finite_scores(eval_set, quantized)
        detail = {"scheme": scheme, "size_bytes": size,
                  "eer_ptq": None if ptq is None else eer(ptq, eval_set.labels)[0]}  # fmt: skip
        if scheme == "adaptive":
            detail["learned_before"] = scale_threshold(quantized)
        # fine-tuned even when its embeddings overflow: in training, BatchNorm normalises with
        # batch statistics, and the running ones it ends with fit the binary weights
        try:
            tuned = tuner(steps, quantized)
        except TrainingError as error:
            detail["note"] = f"fine-tuning failed: {error}"
        else:
            tuned_scores = finite_scores(eval_set, tuned)
            if tuned_scores is None:
                detail["note"] = "non-finite embeddings after fine-tuning"
            else:
                scores[f"{scheme} 1-bit"] = tuned_scores
            if scheme == "adaptive":
                detail["learned_after"] = scale_threshold(tuned)
        details.append(detail)
    print(f"-- 1-bit, seed {seed}: {steps} fine-tuning steps at lr {args.binary_lr}")
    vs_fp32 = compared(eval_set, scores, "fp32 fine-tuned", seed=seed)
    both = {k: scores[k] for k in ("static 1-bit", "adaptive 1-bit") if k in scores}
    adaptive_vs_static = (
        compared(eval_set, both, "static 1-bit", seed=seed) if len(both) == 2 else []
    )
    return {"seed": seed, "schemes": details, "vs_fp32": vs_fp32,
            "adaptive_vs_static": adaptive_vs_static}  # fmt: skip


def average_bits(model: torch.nn.Module, plan: dict[str, int]) -> float:
    weights = dict(model.named_parameters())
    total = sum(weights[n].numel() for n in plan)
    return sum(b * weights[n].numel() for n, b in plan.items()) / total


def scale_threshold(model: torch.nn.Module) -> dict[str, float]:
    """Mean |scale| and mean |threshold| / scale over the adaptive binarizers."""
    found = binarizers(model).values()
    scales = torch.cat([b.magnitudes().reshape(-1) for b in found])
    ratios = torch.cat([b.threshold.detach().abs().reshape(-1) for b in found])
    return {"mean_scale": float(scales.mean()), "mean_threshold_over_scale": float(ratios.mean())}


def print_summary(results: dict) -> None:
    print("\nallocation time, resnet34 (exact multiple-choice knapsack, choices 1,2,3,4,6,8)")
    print(f"{'avg bits':>8} {'layers':>6} {'budget KB':>10} {'size KB':>9} {'seconds':>8}  bits")
    for r in results["allocation"]:
        used = ",".join(f"{b}:{n}" for b, n in r["bit_counts"].items() if n)
        print(f"{r['target_avg_bits']:>8} {r['layers']:>6} {r['budget_bytes'] / 1024:>10.1f} "
              f"{r['size_bytes'] / 1024:>9.1f} {r['allocate_seconds']:>8.3f}  {used}")
    columns = ["system", "seeds", "eer_mean", "eer_sd", "difference_mean", "difference_sd",
               "resolved"]  # fmt: skip
    for name, m in results["models"].items():
        s = m["sensitivity"]
        print(f"\n== {name}: fp32 EER {100 * m['fp32']['eer']:.2f}%, "
              f"{m['fp32']['size_bytes'] / 1024:.1f} KB, {m['weights']} quantized weights; "
              f"sensitivity: Hessian {s['hessian_seconds']:.1f} s, measured "
              f"{s['measured_seconds']:.1f} s, Spearman rho {s['spearman']:.3f}")
        for title, rows in [
            ("fine-tuned vs fp32 fine-tuned", m["msft"]["summary"]),
            ("MSFT vs mixed one-shot", m["msft"]["summary_vs_oneshot"]),
            ("1-bit vs fp32 fine-tuned", m["binary"]["summary"]),
            ("adaptive vs static 1-bit", m["binary"]["summary_adaptive_vs_static"]),
        ]:
            if rows:
                print(f"{title}, over seeds (EER and difference as fractions):")
                print(pd.DataFrame(rows)[columns].round(4).to_string(index=False))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.steps = args.steps or (24 if args.quick else 60)
    args.binary_steps = args.binary_steps or (24 if args.quick else 240)
    torch.set_num_threads(1)
    seed_everything(args.seed)
    profile = get_profile(args.profile)
    root = profile.ensure_corpus()
    paths = [Path(p) for p in args.checkpoints] if args.checkpoints else sorted(
        (REPO_ROOT / "checkpoints").glob("tutorial_*.pt")
    )
    if not paths:
        print("no checkpoints/tutorial_*.pt: run `make checkpoints` first", file=sys.stderr)
        return 1
    if args.quick and not args.checkpoints:
        paths = paths[:1]
    args.seeds = list(range(1 if args.quick else args.seeds))
    eval_set = EvalSet.from_corpus(
        root, args.trials, max_seconds=3.0 if args.quick else None
    )
    results: dict = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "allocation": bench_allocation(args.quick),
        "models": {},
    }
    with tempfile.TemporaryDirectory() as workdir:
        for path in paths:
            results["models"].update(bench_model(path, args, eval_set, root, workdir))
    print_summary(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1, default=str) + "\n")
    tmp.replace(args.out)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
