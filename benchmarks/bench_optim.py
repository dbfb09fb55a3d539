"""8-bit optimizer states: state bytes, step time, agreement with bitsandbytes, training."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import bitsandbytes.functional as bnbf
import pandas as pd
import torch

import svlab.models
from svlab.comparison import across_seeds, compare
from svlab.data.pairs import LARGE_TRIALS
from svlab.evaluate import EvalSet
from svlab.optim import (
    dynamic_map,
    linear_map,
    make_optimizer,
    quantize_blockwise,
    roundtrip_error,
    state_breakdown,
)
from svlab.profiles import REPO_ROOT, get_profile, seed_everything

RESULTS = Path(__file__).parent / "results" / "optim.json"
TUTORIAL_CONFIG = REPO_ROOT / "configs" / "tutorial_resnet.toml"
SGD_LR = 0.1  # the tutorial recipe's lr (3e-3) is for Adam; SGD runs scale lr and final_lr
MODELS = ["resnet34", "dfresnet56", "dfresnet233", "ecapa_c512"]
VARIANTS = [  # (label, optimizer name, backend)
    ("torch fp32", "", "svlab"),
    ("svlab 8-bit", "8bit", "svlab"),
    ("bnb 8-bit", "8bit", "bitsandbytes"),
]
LR = {"sgd": 0.05, "adam": 1e-3}


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def state_and_step_time(model_name: str, family: str, device: str, repeats: int) -> list[dict]:
    """Bytes of state after one step, and the median time of ``repeats`` further steps."""
    rows = []
    template = svlab.models.build(model_name).to(device)
    n_params = sum(p.numel() for p in template.parameters())
    grads = [torch.randn_like(p) for p in template.parameters()]
    for label, suffix, backend in VARIANTS:
        model = copy.deepcopy(template)
        opt = make_optimizer(
            model.parameters(), family + suffix, LR[family], nesterov=False, backend=backend
        )
        for p, g in zip(model.parameters(), grads, strict=True):
            p.grad = g
        opt.step()
        times = []
        for _ in range(repeats):
            synchronize(device)
            start = time.perf_counter()
            opt.step()
            synchronize(device)
            times.append(time.perf_counter() - start)
        rows.append(
            {
                "model": model_name,
                "params": n_params,
                "optimizer": family,
                "variant": label,
                "device": device,
                **state_breakdown(opt),
                "step_ms": 1000 * statistics.median(times),
            }
        )
        del model, opt
    fp32 = sum(rows[0][k] for k in ("codes", "absmax", "fp32", "other"))
    for row in rows:
        row["state_MB"] = sum(row[k] for k in ("codes", "absmax", "fp32", "other")) / 2**20
        row["state_vs_fp32"] = row["state_MB"] * 2**20 / fp32
        row["step_vs_torch"] = row["step_ms"] / rows[0]["step_ms"]
    return rows


def code_agreement(n: int) -> list[dict]:
    """svlab's codes beside bitsandbytes' CPU kernel, and the round-trip error of both maps."""
    rows = []
    g = torch.Generator().manual_seed(0)
    inputs = {
        "randn (signed)": (torch.randn(n, generator=g), True),
        "randn^2 (unsigned)": (torch.randn(n, generator=g).pow(2), False),
        "Adam-v-like, 6 decades (unsigned)": (
            torch.randn(n, generator=g).pow(2)
            * torch.logspace(-8, -2, n)[torch.randperm(n, generator=g)],
            False,
        ),
    }
    for name, (x, signed) in inputs.items():
        code = dynamic_map(signed)
        q, absmax = quantize_blockwise(x, code, 256)
        q_bnb, _ = bnbf.quantize_blockwise(x, code=code.clone(), blocksize=256)
        scale = absmax.repeat_interleave(256)[:n]
        scaled = x / scale
        ours = (code[q.long()] - scaled).abs()
        theirs = (code[q_bnb.long()] - scaled).abs()
        differ = q != q_bnb
        row = {
            "input": name,
            "n": n,
            "agree_pct": 100 * (1 - differ.float().mean().item()),
            "svlab_nearer_where_differ_pct": 100
            * (ours[differ] < theirs[differ]).float().mean().item()
            if differ.any()
            else None,
            "tie_pct": 100 * (differ & (ours == theirs)).float().mean().item(),
        }
        for map_name, m in (("dynamic", code), ("linear", linear_map(signed))):
            for key, value in roundtrip_error(x, m, 256).items():
                row[f"{map_name}_{key}"] = value
        rows.append(row)
    return rows


def trajectory_divergence(steps: int) -> list[dict]:
    """A small MLP trained ``steps`` steps on fixed data: how far 8-bit parameters drift."""
    torch.manual_seed(0)
    x, y = torch.randn(512, 64), torch.randint(0, 10, (512,))
    base = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    rows = []
    for family in ("sgd", "adam"):
        finals = {}
        for label, suffix, backend in VARIANTS:
            model = copy.deepcopy(base)
            opt = make_optimizer(
                model.parameters(), family + suffix, LR[family], nesterov=False, backend=backend
            )
            g = torch.Generator().manual_seed(1)
            for _ in range(steps):
                batch = torch.randint(0, 512, (64,), generator=g)
                loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
                opt.zero_grad()
                loss.backward()
                opt.step()
            finals[label] = (
                torch.cat([p.detach().reshape(-1) for p in model.parameters()]),
                loss.item(),
            )
        fp32, ours, theirs = (finals[label][0] for label, _, _ in VARIANTS)
        rows.append(
            {
                "optimizer": family,
                "steps": steps,
                "param_max_abs": fp32.abs().max().item(),
                "max_svlab_vs_bnb": (ours - theirs).abs().max().item(),
                "max_svlab_vs_fp32": (ours - fp32).abs().max().item(),
                "max_bnb_vs_fp32": (theirs - fp32).abs().max().item(),
                "rel_l2_svlab_vs_bnb": ((ours - theirs).norm() / fp32.norm()).item(),
                "rel_l2_svlab_vs_fp32": ((ours - fp32).norm() / fp32.norm()).item(),
                "rel_l2_bnb_vs_fp32": ((theirs - fp32).norm() / fp32.norm()).item(),
                **{f"final_loss_{label}": finals[label][1] for label, _, _ in VARIANTS},
            }
        )
    return rows


def training_comparison(
    profile: str, epochs: int, seeds: list[int], families: tuple[str, ...] = ("sgd", "adam")
) -> dict:
    """Train the tutorial model with fp32, svlab 8-bit and bitsandbytes 8-bit SGD and Adam.

    Every run uses the tutorial recipe cut to ``epochs`` (same seed, data order and schedule
    within a seed); only the optimizer changes. SGD runs use plain momentum (no Nesterov),
    because bitsandbytes' SGD8bit has none; Adam runs use the recipe's lr, decoupled weight
    decay. Each seed's final models are scored on ``trials/large.txt``: each EER with its
    interval, each 8-bit run against the fp32 run of its family and seed, paired on the same
    trials; the summary gives mean and spread over seeds.
    """
    from svlab.train import TrainConfig, train

    recipe = TrainConfig.from_toml(TUTORIAL_CONFIG, profile)
    scale = epochs / recipe.epochs  # the margin ramps over the same share of the run
    base = dataclasses.replace(
        recipe, epochs=epochs, eval_every=0, threads=1, nesterov=False, checkpoint_every=10**9,
        margin_start_epoch=recipe.margin_start_epoch * scale,
        margin_end_epoch=recipe.margin_end_epoch * scale,
    )
    root = get_profile(profile).ensure_corpus()
    large = EvalSet.from_corpus(root, LARGE_TRIALS)
    runs, compared, summary = [], [], []
    for family in families:
        lr = {"lr": base.lr, "final_lr": base.final_lr}
        if family == "sgd":
            lr = {"lr": SGD_LR, "final_lr": base.final_lr * SGD_LR / base.lr}
        tables = []
        for seed in seeds:
            scores = {}
            for label, suffix, backend in VARIANTS:
                cfg = dataclasses.replace(
                    base,
                    name=f"bench-optim-{family}{suffix}-{backend}-{seed}",
                    optimizer=family + suffix,
                    optimizer_backend=backend,
                    seed=seed,
                    out_dir=tempfile.mkdtemp(prefix="svlab-bench-optim-"),
                    **lr,
                )
                started = time.perf_counter()
                result = train(cfg, progress=False)
                seconds = time.perf_counter() - started
                losses = result.history.dropna(subset=["loss"])
                scores[label] = large.score(result.model)["scores"]
                runs.append({
                    "optimizer": family, "variant": label, "seed": seed,
                    "steps": int(losses["step"].iloc[-1]),
                    "final_loss": float(losses["loss"].iloc[-1]), "seconds": seconds,
                    "loss_curve": {
                        "step": losses["step"].astype(int).tolist(),
                        "loss": [round(v, 5) for v in losses["loss"].tolist()],
                    },
                })  # fmt: skip
            table = compare(scores, large.labels, large.pairs, control="torch fp32")
            print(f"-- {family}, seed {seed}")
            print(table[["system", "EER", "vs control"]].to_string(index=False))
            tables.append(table)
            compared += table.assign(optimizer=family, seed=seed).to_dict(orient="records")
        across = across_seeds(tables)
        summary += across.assign(optimizer=family).to_dict(orient="records")
    recipe = {k: v for k, v in dataclasses.asdict(base).items() if k not in ("out_dir", "name")}
    return {
        "config": str(TUTORIAL_CONFIG.relative_to(REPO_ROOT)),
        "recipe": recipe,
        "sgd_lr": SGD_LR,
        "optimizers": list(families),
        "trials": LARGE_TRIALS,
        "seeds": seeds,
        "runs": runs,
        "compared": compared,
        "summary": summary,
    }


def show(title: str, rows: list[dict]) -> None:
    print(f"\n{title}")
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.4g}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one model, fewer repeats and steps")
    parser.add_argument("--profile", default="ci", help="corpus profile for the training runs")
    parser.add_argument(
        "--skip-training", action="store_true", help="only state bytes, step time, agreement"
    )
    parser.add_argument(
        "--only-training", action="store_true",
        help="rerun only the training comparison, replacing it in the existing results file",
    )
    parser.add_argument("--seeds", type=int, default=3, help="training seeds (quick: 1)")
    parser.add_argument("--epochs", type=int, default=12, help="training epochs (quick: 1)")
    parser.add_argument(
        "--optimizers", nargs="+", choices=("sgd", "adam"), default=["sgd", "adam"],
        help="which optimizer families to train with (default: both)",
    )
    args = parser.parse_args()
    seed_everything(0)
    torch.set_num_threads(1)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    models = ["dfresnet56"] if args.quick else MODELS
    repeats = 2 if args.quick else 5
    results = {
        "machine": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "quick": args.quick,
    }

    if args.only_training:
        results = {**json.loads(RESULTS.read_text()), **results}
    else:
        memory_rows = [
            row
            for device in devices
            for name in models
            for family in ("sgd", "adam")
            for row in state_and_step_time(name, family, device, repeats)
        ]
        show(
            "Optimizer state after one step and step time (median, fake gradients, "
            "1 CPU thread; blocks of 256, tensors < 4096 elements fp32)",
            memory_rows,
        )
        eight_bit = [r for r in memory_rows if r["variant"] != "torch fp32"]
        results["state_bytes_and_step_time"] = memory_rows
        results["max_8bit_state_vs_fp32"] = max(r["state_vs_fp32"] for r in eight_bit)
        print(
            f"largest 8-bit / fp32 state ratio: {results['max_8bit_state_vs_fp32']:.4f} "
            f"(target <= 0.27)"
        )

        results["code_agreement"] = code_agreement(100_000 if args.quick else 1_000_000)
        show(
            "Block-wise codes (block 256) beside bitsandbytes' CPU kernel; round-trip error "
            "of the dynamic vs the linear map",
            results["code_agreement"],
        )

        results["divergence"] = trajectory_divergence(100 if args.quick else 300)
        show(
            "Parameter divergence after training an MLP (64-128-10, batch 64, same data "
            "order; SGD lr 0.05 momentum 0.9, AdamW lr 1e-3; weight decay 1e-4)",
            results["divergence"],
        )

    if not args.skip_training:
        seeds = list(range(1 if args.quick else args.seeds))
        training = training_comparison(
            args.profile, 1 if args.quick else args.epochs, seeds, tuple(args.optimizers)
        )
        results["training"] = training
        show(
            f"Training the tutorial model ({training['config']}, {training['recipe']['epochs']} "
            f"epochs, profile {args.profile}; SGD without Nesterov at lr {SGD_LR}); EER on "
            f"trials/{LARGE_TRIALS}, over seeds {seeds}; difference from fp32 as a fraction",
            training["summary"],
        )

    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
