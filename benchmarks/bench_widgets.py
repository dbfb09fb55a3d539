"""Workbench interactivity: seconds per slider move, cold re-score, and re-embedding everything.

Two settings side by side in one run, on the same model, trials and machine:

- ``torch threads``: the re-scoring on torch's default intra-op threads (what the workbench did
  before: all cores);
- ``1 thread``: :class:`svlab.workbench.engine.LiveQuantizer`'s default now.

For each: ``--moves`` slider moves through :class:`svlab.workbench.widgets.Workbench` (the
whole action a learner waits for: re-quantize, re-embed from the changed block on, re-score,
intervals, numbers, both figures sent), over layers and bit-widths drawn with a fixed seed; the cold
re-score of each layer at 4 bits (its k-means codebook fitted in the move) through
:class:`LiveQuantizer`; and a full re-embedding and re-scoring (``EvalSet.score``). The model is
the ci tutorial ResNet (``checkpoints/tutorial_resnet.pt``), the trials ``workbench_trials``
(4 utterances per test speaker, first 2 s, every pair). The load average is recorded: on
shared cores the numbers move a lot; the target (median move under 0.5 s) is for an idle machine.

``--browser`` adds what a learner waits for in JupyterLab (:mod:`svlab.workbench.browser`:
notebook 07 run in headless chromium): seconds from each slider key press, and from the
mixed-precision click, to the last figure drawn in the page.

``--model campplus`` runs the same on 3D-Speaker's real CAM++ (``make weights``; 225 layers,
its own front end, the prefix cache cut at each dense layer) as notebook 09 opens it: 3
utterances per test speaker, first second, 20 moves, every 15th layer re-scored cold, on the
workbench's default one thread only; it writes ``benchmarks/results/widgets_campplus.json``
(target: a move under 2 s on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from svlab.checkpoint import load_model
from svlab.evaluate import EvalSet
from svlab.models import load_pretrained
from svlab.profiles import REPO_ROOT, get_profile, seed_everything
from svlab.storage import atomic_write
from svlab.weights import weights_path
from svlab.workbench.engine import LiveQuantizer, torch_threads, workbench_trials
from svlab.workbench.widgets import BITS_OPTIONS, Workbench

RESULTS = Path(__file__).parent / "results" / "widgets.json"
CHECKPOINT = REPO_ROOT / "checkpoints" / "tutorial_resnet.pt"
NOTEBOOK = REPO_ROOT / "notebooks" / "07_workbench.ipynb"
BROWSER_KEYS = ["Home", *["ArrowRight"] * 7, *["ArrowLeft"] * 7]  # 15 moves of the first layer
MODELS = {  # model: (results file, moves, utterances per speaker, seconds, cold re-score every,
    # thread settings: the comparison on the ResNet, the workbench's default on CAM++)
    "tutorial_resnet": (RESULTS, 40, 4, 2.0, 1, {"torch threads": None, "1 thread": 1}),
    "campplus": (RESULTS.with_name("widgets_campplus.json"), 20, 3, 1.0, 15, {"1 thread": 1}),
}


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def p90(values: list[float]) -> float:
    return float(np.percentile(values, 90))


def measure(
    model, evalset, threads: int | None, moves: list[tuple[str, str]], layers, mixed: bool
) -> dict:
    """One setting: slider moves through the widget, cold re-scores, full re-embeddings, and
    (``mixed``) the first press of the mixed-precision preset."""
    live = LiveQuantizer(model, evalset, threads=threads)
    cold = []
    for layer in layers:
        cold.append(timed(lambda layer=layer: live.set_bits(layer, 4)))
        live.set_bits(layer, None)
    with torch_threads(threads):
        full = [timed(lambda: evalset.score(live.model)) for _ in range(3)]
    wb = Workbench(live)
    seconds = []
    for layer, option in moves:
        slider = wb.layer_sliders[layer]
        if slider.value == option:
            option = "fp32" if option != "fp32" else "4"
        seconds.append(timed(lambda slider=slider, option=option: setattr(slider, "value",
                                                                          option)))
    if mixed:  # the first press: Hessian traces and every layer's codebooks
        seconds_mixed = timed(wb.mixed_button.click)
    return {
        "threads": threads if threads is not None else torch.get_num_threads(),
        "slider_moves": len(seconds),
        "median_move_s": statistics.median(seconds),
        "p90_move_s": p90(seconds),
        "median_cold_rescore_s": statistics.median(cold),
        "p90_cold_rescore_s": p90(cold),
        "median_reembed_all_s": statistics.median(full),
        **({"mixed_precision_s": seconds_mixed} if mixed else {}),
        "move_seconds": seconds,
        "cold_seconds": dict(zip(layers, cold, strict=True)),
    }


def measure_browser() -> dict:
    """Notebook 07 in headless chromium: slider moves and one mixed-precision press, timed from
    the key press or click to the last figure drawn."""
    from playwright.sync_api import sync_playwright

    from svlab.workbench.browser import (
        lab_server,
        open_chromium,
        run_notebook,
        time_mixed_precision,
        time_slider_moves,
    )

    work = Path(tempfile.mkdtemp())
    with sync_playwright() as api, lab_server(NOTEBOOK, work / "lab") as (url, token, _), \
            open_chromium(api, work / "chromium") as context:
        page = context.new_page()
        run_notebook(page, url, token, NOTEBOOK.name)
        moves = time_slider_moves(page, BROWSER_KEYS)
        mixed = time_mixed_precision(page)
    return {"slider_moves": len(moves), "median_move_s": statistics.median(moves),
            "p90_move_s": p90(moves), "mixed_precision_s": mixed, "move_seconds": moves,
            "load_average_1min_after": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10 moves, every 3rd layer cold")
    parser.add_argument("--model", choices=sorted(MODELS), default="tutorial_resnet")
    parser.add_argument("--moves", type=int, help="default: 40 (ResNet), 20 (CAM++)")
    parser.add_argument("--per-speaker", type=int, help="default: 4 (ResNet), 3 (CAM++)")
    parser.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    parser.add_argument("--browser", action="store_true",
                        help="also time notebook 07 in headless chromium (JupyterLab)")
    args = parser.parse_args()
    if args.browser and args.model != "tutorial_resnet":
        parser.error("--browser times notebook 07, which opens the tutorial ResNet")
    seed_everything(0)
    results, moves_n, per_speaker, seconds, cold_every, threads = MODELS[args.model]
    moves_n = 10 if args.quick else args.moves or moves_n
    per_speaker = args.per_speaker or per_speaker
    root = get_profile("ci").ensure_corpus()
    if args.model == "campplus":
        model, name = load_pretrained(weights_path("campplus_cn_en_common.pt")), "campplus"
    elif not args.checkpoint.is_file():
        raise SystemExit(f"{args.checkpoint} is missing: run `make checkpoints` first")
    else:
        model, name = load_model(args.checkpoint), args.checkpoint.name
    trials = workbench_trials(root, per_speaker=per_speaker)
    evalset = EvalSet.from_trials(trials, root / "wav", max_seconds=seconds)
    layers = LiveQuantizer(model, evalset).layers
    rng = np.random.default_rng(0)
    moves = [(layers[rng.integers(len(layers))], BITS_OPTIONS[rng.integers(len(BITS_OPTIONS))])
             for _ in range(moves_n)]
    cold_layers = layers[:: max(cold_every, 3 if args.quick else 1)]
    load_before = os.getloadavg()
    mixed = args.model == "tutorial_resnet"  # CAM++: 225 layers' codebooks, minutes
    settings = {name: measure(model, evalset, n, moves, cold_layers, mixed)
                for name, n in threads.items()}
    if args.browser:
        settings["browser (1 thread)"] = measure_browser()
    summary = {
        "model": name,
        "layers": len(layers),
        "max_seconds": seconds,
        "utterances": len(evalset.keys),
        "trials": len(trials),
        "quick": args.quick,
        "torch_default_threads": torch.get_num_threads(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or '?'}",
        "torch": torch.__version__,
        "load_average_1min_before_after": [load_before[0], os.getloadavg()[0]],
    }
    keys = ["median_move_s", "p90_move_s", "mixed_precision_s", "median_cold_rescore_s",
            "median_reembed_all_s"]
    print(f"{'setting':20s} " + " ".join(f"{k:>22s}" for k in keys))
    for name, row in settings.items():
        print(f"{name:20s} " + " ".join(
            f"{row[k]:22.3f}" if k in row else f"{'':>22s}" for k in keys))
    for key, value in summary.items():
        print(f"{key:32s} {value}")
    text = json.dumps({"summary": summary, "settings": settings, "moves": moves}, indent=1)
    atomic_write(results, lambda f: f.write(text.encode()))


if __name__ == "__main__":
    main()
