"""Workbench interactivity: seconds from one layer's bits change to new EER, cold and cached.

For each quantizable layer of the tutorial model, one at a time: set it to 4 bits (k-means
fitted now: "cold"), back to fp32, and to 4 bits again (codebook cached: "warm"). Each change is
what a slider does: swap the layer's weight, re-embed from the first changed block on
(PrefixCache), re-score every trial. Beside it, the same re-scoring by a full forward
(EvalSet.score of the whole model), measured in the same run. Trial list: workbench_trials
(4 utterances per test speaker, first 2 s, every pair), a subset of the corpus's utterances.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from svlab.checkpoint import load_model
from svlab.evaluate import EvalSet
from svlab.models import build
from svlab.profiles import REPO_ROOT, get_profile, seed_everything
from svlab.workbench.engine import LiveQuantizer, workbench_trials

RESULTS = Path(__file__).parent / "results" / "widgets.json"
CHECKPOINT = REPO_ROOT / "checkpoints" / "tutorial_resnet.pt"
TUTORIAL_ARGS = {"base_width": 8, "depths": [1, 1, 1, 1], "strides": [2, 2, 2, 2], "embed_dim": 64}


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="every 3rd layer only")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--per-speaker", type=int, default=4)
    parser.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seed_everything(0)
    root = get_profile("ci").ensure_corpus()
    if args.checkpoint.is_file():
        model, model_name = load_model(args.checkpoint), args.checkpoint.name
    else:  # no checkpoint yet: configs/tutorial_resnet.toml's architecture, untrained weights
        model = build("resnet18", **TUTORIAL_ARGS)
        model_name = "tutorial resnet architecture, untrained (no checkpoint found)"
    trials = workbench_trials(root, per_speaker=args.per_speaker)
    evalset = EvalSet.from_trials(trials, root / "wav", max_seconds=2.0)
    live = LiveQuantizer(model, evalset)
    layers = live.layers[::3] if args.quick else live.layers
    rows = []
    for layer in layers:
        cold = timed(lambda layer=layer: live.set_bits(layer, 4))
        back = timed(lambda layer=layer: live.set_bits(layer, None))
        warm = timed(lambda layer=layer: live.set_bits(layer, 4))
        recomputed = len(live.cache.last_recomputed)
        live.set_bits(layer, None)
        rows.append({"layer": layer, "cold_s": cold, "fp32_s": back, "warm_s": warm,
                     "blocks_recomputed": recomputed})
    full = [timed(lambda: evalset.score(live.model)) for _ in range(3)]
    summary = {
        "model": model_name,
        "threads": args.threads,
        "utterances": len(evalset.keys),
        "trials": len(trials),
        "layers_measured": len(rows),
        "median_cold_s": statistics.median(r["cold_s"] for r in rows),
        "median_warm_s": statistics.median(r["warm_s"] for r in rows),
        "median_full_forward_rescore_s": statistics.median(full),
        "cache_mb": live.cache.cached_bytes() / 2**20,
        "load_average_1min": os.getloadavg()[0],  # other processes sharing the cores
    }
    print(f"{'layer':32s} {'cold s':>7s} {'fp32 s':>7s} {'warm s':>7s} {'blocks':>6s}")
    for r in rows:
        print(f"{r['layer']:32s} {r['cold_s']:7.3f} {r['fp32_s']:7.3f} {r['warm_s']:7.3f} "
              f"{r['blocks_recomputed']:6d}")
    for key, value in summary.items():
        print(f"{key:32s} {value:.3f}" if isinstance(value, float) else f"{key:32s} {value}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"summary": summary, "layers": rows}, indent=1))
    tmp.replace(RESULTS)


if __name__ == "__main__":
    main()
