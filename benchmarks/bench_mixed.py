"""Mixed vs uniform precision at equal size, one-shot vs MSFT, 1-bit schemes; allocation time.

On the tutorial checkpoints (``checkpoints/tutorial_*.pt``) scored on the profile's trial list:

1. sensitivity: Hessian-trace (HAWQ-v2, Hutchinson) beside one-layer-at-a-time measurement of
   the same embedding-distortion loss; their rank correlation and cost;
2. size vs EER: uniform k-means at each width, and the mixed bit map at that same size (and at
   sizes in between), chosen by exact allocation from each sensitivity; no fine-tuning;
3. one-shot vs MSFT at one mixed bit map: quantize everything then fine-tune, or quantize in
   stages (several orders) fine-tuning between stages, for the same total number of steps;
   MSFT with the quantized layers frozen (the paper's) and trained on through the STE ("(STE)");
4. 1-bit: sign, static, adaptive (and 1-bit k-means), before and after the same fine-tuning
   (at ``--binary-lr``);
5. the time to allocate bits for a resnet34-sized model (6.6 M weights, 37 layers).

Fine-tuning is ``svlab.train.train`` (AAM-softmax, starting from the checkpoint's trained head)
for ``--steps`` steps; the fp32 model fine-tuned the same way is the control. Prints tables,
writes benchmarks/results/mixed.json.
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
import torch

from svlab import checkpoint
from svlab.evaluate import EvalSet
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
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, help="fine-tuning steps (default 60, quick 24)")
    parser.add_argument("--lr", type=float, default=3e-4, help="fine-tuning learning rate (Adam)")
    parser.add_argument(
        "--binary-lr", type=float, default=2e-3,
        help="learning rate for 1-bit models, whose latent weights must move far enough to flip",
    )
    parser.add_argument(
        "--binary-steps", type=int, help="fine-tuning steps of 1-bit models (default 240, quick 24)"
    )
    parser.add_argument(
        "--only-binary", action="store_true",
        help="rerun only the 1-bit comparison, replacing it in an existing --out file",
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


def finite_score(eval_set: EvalSet, model: torch.nn.Module) -> float | None:
    """The EER, or None where the model's scores are not finite (a diverged binary model)."""
    try:
        return score(eval_set, model)
    except ValueError as error:
        if "NaN or infinite" not in str(error):
            raise
        return None


def make_tuner(path: Path, args, root: Path, out_dir: Path, lr: float):
    """A ``fine_tuner`` for the checkpoint at ``path``: the bench's batch, crops and seed, at
    ``lr``, starting from the checkpoint's trained AAM head."""
    return fine_tuner(
        args.profile, data_root=root, lr=lr, batch_size=args.batch_size,
        crop_frames=args.crop_frames, seed=args.seed, out_dir=out_dir,
        head=checkpoint.load_head(path),
    )


def bench_model(path: Path, args, eval_set: EvalSet, root: Path, workdir: str) -> dict:
    name = path.stem
    model = checkpoint.load_model(path).eval()
    tuner = make_tuner(path, args, root, Path(workdir) / name, args.lr)
    binary_tuner = make_tuner(path, args, root, Path(workdir) / f"{name}-binary", args.binary_lr)
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

    eval_fn = eval_set.score
    widths = (2, 3, 4) if args.quick else CHOICES
    smallest, largest = model_size(model, 1), model_size(model, 4)
    between = [] if args.quick else [smallest + (largest - smallest) * f for f in (0.15, 0.4)]
    curve = mixed_vs_uniform(model, hessian, eval_fn, widths, extra_sizes=between)
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

    steps = args.steps
    target = model_size(model, args.msft_bits)
    plan = plan_bits(model, hessian, target, CHOICES)
    runs = []

    def record(method: str, tuned: torch.nn.Module, before: float | None, **extra) -> None:
        runs.append(
            {
                "method": method,
                "size_bytes": model_size(tuned),
                "eer_before": before,
                "eer": score(eval_set, tuned),
                "steps": steps,
                **extra,
            }
        )

    control = tuner(steps, checkpoint.load_model(path))
    record("fp32 fine-tuned (control)", control, out["fp32"]["eer"])
    uniform = quantize_model(model, args.msft_bits)
    before_uniform = score(eval_set, uniform)
    record(f"uniform {args.msft_bits}-bit one-shot", tuner(steps, uniform), before_uniform)
    oneshot = quantize_model(model, plan)
    before = score(eval_set, oneshot)
    record("mixed one-shot", tuner(steps, oneshot), before)
    orders = ("shallow_to_deep", "sensitive_first") if args.quick else (
        "shallow_to_deep", "deep_to_shallow", "sensitive_first", "sensitive_last"
    )
    n_stages = min(4, len(plan))
    variants = [(order, True) for order in orders] + [
        (order, False) for order in ("shallow_to_deep", "sensitive_first")
    ]
    for order, freeze in variants:
        tuned, history = msft(
            model, plan, order, steps // n_stages, n_stages=n_stages, sensitivity=hessian,
            trainer=tuner, freeze_quantized=freeze,
            eval_fn=None if args.quick else (lambda m: score(eval_set, m)),
        )
        label = f"mixed MSFT {order}" + ("" if freeze else " (STE)")
        record(label, tuned, before, stages=[h["layers"] for h in history],
               stage_eer=[h.get("eval") for h in history], freeze_quantized=freeze)
    out["msft"] = {"bit_map": plan, "target_bytes": int(target), "runs": runs}

    out["binary"] = bench_binary(model, args, eval_set, binary_tuner)
    return {name: out}


def bench_binary(model: torch.nn.Module, args, eval_set: EvalSet, tuner) -> list[dict]:
    """Each 1-bit scheme (and 1-bit k-means) before and after ``--binary-steps`` of fine-tuning,
    beside the fp32 model fine-tuned the same way (the tutorial models are not trained to
    convergence, so the same extra training improves fp32 too)."""
    steps = args.binary_steps
    seed_everything(args.seed)
    control = tuner(steps, copy.deepcopy(model))
    binary = [{"scheme": "fp32 (control)", "size_bytes": model_size(model),
               "eer_ptq": score(eval_set, model), "eer": score(eval_set, control), "steps": steps}]
    for scheme in ("sign", "static", "adaptive", "kmeans"):
        seed_everything(args.seed)
        if scheme == "kmeans":
            quantized = quantize_model(model, 1)
            size = model_size(quantized)
        else:
            quantized = binarize(model, scheme)
            size = binary_size(quantized)["total"]
        ptq = finite_score(eval_set, quantized)
        learned = {}
        if scheme == "adaptive":
            learned["before"] = scale_threshold(quantized)
        # fine-tuned even when its embeddings overflow: in training, BatchNorm normalises with
        # batch statistics, and the running ones it ends with fit the binary weights
        note = "" if ptq is not None else "non-finite embeddings before fine-tuning"
        try:
            tuned = tuner(steps, quantized)
        except TrainingError as error:
            eer, note = None, f"fine-tuning failed: {error}"
        else:
            eer = finite_score(eval_set, tuned)
            if scheme == "adaptive":
                learned["after"] = scale_threshold(tuned)
        binary.append(
            {"scheme": scheme, "size_bytes": size, "eer_ptq": ptq, "eer": eer, "steps": steps,
             **({"note": note} if note else {}), **({"learned": learned} if learned else {})}
        )
    return binary


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


def percent(eer: float | None) -> str:
    return "n/a" if eer is None else f"{100 * eer:.2f}"


def print_tables(results: dict) -> None:
    print("\nallocation time, resnet34 (exact multiple-choice knapsack, choices 1,2,3,4,6,8)")
    print(f"{'avg bits':>8} {'layers':>6} {'budget KB':>10} {'size KB':>9} {'seconds':>8}  bits")
    for r in results["allocation"]:
        used = ",".join(f"{b}:{n}" for b, n in r["bit_counts"].items() if n)
        print(f"{r['target_avg_bits']:>8} {r['layers']:>6} {r['budget_bytes'] / 1024:>10.1f} "
              f"{r['size_bytes'] / 1024:>9.1f} {r['allocate_seconds']:>8.3f}  {used}")
    for name, m in results["models"].items():
        s = m["sensitivity"]
        print(f"\n== {name}: fp32 EER {100 * m['fp32']['eer']:.2f}%, "
              f"{m['fp32']['size_bytes'] / 1024:.1f} KB, {m['weights']} quantized weights")
        print(f"sensitivity: Hessian {s['hessian_seconds']:.1f} s, measured "
              f"{s['measured_seconds']:.1f} s, Spearman rho {s['spearman']:.3f}")
        print(f"{'scheme':>8} {'sensitivity':>11} {'avg bits':>8} {'size KB':>8} {'EER %':>7}")
        for r in sorted(m["curve"], key=lambda r: (r["size_bytes"], r["scheme"])):
            print(f"{r['scheme']:>8} {r['sensitivity']:>11} {r['bits']:>8.2f} "
                  f"{r['size_bytes'] / 1024:>8.2f} {100 * r['eer']:>7.2f}")
        print(f"one-shot vs MSFT (bit map for {m['msft']['target_bytes'] / 1024:.1f} KB)")
        print(f"{'method':>34} {'size KB':>8} {'EER before':>10} {'EER after':>9}")
        for r in m["msft"]["runs"]:
            print(f"{r['method']:>34} {r['size_bytes'] / 1024:>8.2f} "
                  f"{100 * r['eer_before']:>10.2f} {100 * r['eer']:>9.2f}")
        print(f"{'1-bit scheme':>12} {'size KB':>8} {'EER PTQ':>8} {'EER tuned':>9}")
        for r in m["binary"]:
            print(f"{r['scheme']:>12} {r['size_bytes'] / 1024:>8.2f} {percent(r['eer_ptq']):>8} "
                  f"{percent(r['eer']):>9}  {r.get('note', '')}")


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
    eval_set = EvalSet.from_corpus(root, max_seconds=3.0 if args.quick else None)
    results: dict = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "allocation": [] if args.only_binary else bench_allocation(args.quick),
        "models": {},
    }
    if args.only_binary:
        previous = json.loads(args.out.read_text())
        previous["settings"].update(
            {k: results["settings"][k] for k in ("binary_lr", "binary_steps")}
        )
        results = previous
    with tempfile.TemporaryDirectory() as workdir:
        for path in paths:
            if args.only_binary:
                tuner = make_tuner(path, args, root, Path(workdir) / path.stem, args.binary_lr)
                model = checkpoint.load_model(path).eval()
                binary = bench_binary(model, args, eval_set, tuner)
                results["models"][path.stem]["binary"] = binary
            else:
                results["models"].update(bench_model(path, args, eval_set, root, workdir))
    print_tables(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1, default=str) + "\n")
    tmp.replace(args.out)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
