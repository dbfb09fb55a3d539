"""Training speed (steps/s) and peak memory per model, at the ci and the gpu input sizes.

ci size: the tutorial models (configs/tutorial_*.toml) on batches of 32 x 150 frames, Adam,
60 speakers. gpu size: the published models on batches of 128 x 200 frames, SGD, 5,994 speakers
(VoxCeleb2-dev). Each setting runs in a fresh process; peak memory is CUDA's peak allocation,
or on the CPU the growth of the process's peak resident memory over what it held before the
first step. ``--quick`` times 3 steps at the ci size only (the gpu size on a CPU is minutes).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import time
import tomllib
from pathlib import Path

import torch

from svlab.losses import AAMSoftmax
from svlab.models import build, count_parameters
from svlab.optim import make_optimizer
from svlab.profiles import REPO_ROOT, seed_everything
from svlab.train import SpeakerClassifier

RESULTS = Path(__file__).parent / "results" / "bench_train.json"


def settings(quick: bool) -> list[dict]:
    """Every (size, model) pair to measure."""
    rows = []
    for name in ("resnet", "dfresnet", "ecapa"):
        recipe = tomllib.loads((REPO_ROOT / "configs" / f"tutorial_{name}.toml").read_text())
        rows.append(dict(size="ci", label=f"tutorial_{name}", model=recipe["model"],
                         overrides=recipe["model_args"], batch=32, frames=150, speakers=60,
                         optimizer="adam"))  # fmt: skip
    if not quick or torch.cuda.is_available():
        for model in ("resnet34", "dfresnet56", "dfresnet233", "ecapa_c512", "ecapa_c1024"):
            rows.append(dict(size="gpu", label=model, model=model, overrides={}, batch=128,
                             frames=200, speakers=5994, optimizer="sgd"))  # fmt: skip
    return rows


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(setting: dict, steps: int, device: str) -> dict:
    """Time ``steps`` training steps (after one warm-up step) of one setting."""
    seed_everything(0)
    model = build(setting["model"], **setting["overrides"])
    net = SpeakerClassifier(model, AAMSoftmax(model.embed_dim, setting["speakers"])).to(device)
    optimizer = make_optimizer(net.parameters(), setting["optimizer"], 1e-3)
    feats = torch.randn(setting["batch"], setting["frames"], 80, device=device)
    labels = torch.randint(0, setting["speakers"], (setting["batch"],), device=device)
    rss_before = _peak_rss_bytes()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for step in range(steps + 1):
        if step == 1:
            if device == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
        loss, _ = net(feats, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _peak_rss_bytes() - rss_before
    seconds = (time.perf_counter() - started) / steps
    return {**setting, "device": device, "threads": torch.get_num_threads(),
            "parameters": count_parameters(model), "steps_per_s": 1 / seconds,
            "peak_mib": peak / 2**20}  # fmt: skip


def _child(setting: dict, steps: int, device: str, queue: multiprocessing.Queue) -> None:
    queue.put(measure(setting, steps, device))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 steps, ci size only on a CPU")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per setting")
    args = parser.parse_args(argv)
    steps = args.steps or (3 if args.quick else 10)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    context = multiprocessing.get_context("spawn")
    rows = []
    print(f"{'size':4} {'model':18} {'params':>9} {'batch x frames':>14} {'optimizer':>9} "
          f"{'steps/s':>8} {'peak MiB':>9}  ({device}, {steps} steps)")  # fmt: skip
    for setting in settings(args.quick):
        queue = context.Queue()
        child = context.Process(target=_child, args=(setting, steps, device, queue))
        child.start()
        row = queue.get()
        child.join()
        rows.append(row)
        print(f"{row['size']:4} {row['label']:18} {row['parameters']:>9,} "
              f"{row['batch']:>6} x {row['frames']:<5} {row['optimizer']:>9} "
              f"{row['steps_per_s']:>8.2f} {row['peak_mib']:>9.0f}")  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"steps": steps, "quick": args.quick, "rows": rows}, indent=1))
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
