"""Train the tutorial models on the ci corpus; write checkpoints/tutorial_<name>.pt, results.json.

Run by ``make checkpoints``: ``python scripts/make_checkpoints.py [--only resnet] [--out DIR]``;
``--check-epochs N`` trains only the first N epochs and writes their learning curves (the
test suite compares them with the recorded ones).
Each model is trained by ``svlab.train`` from ``configs/tutorial_<name>.toml`` (profile ci), then
scored on the corpus's trials next to the same architecture untrained and a baseline that
needs no training (each utterance's mean fbank vector, cosine-scored).

Convergence is checked, not assumed: the run stops after three quarters of its steps, the model
is scored on ``trials/large.txt``, the run resumes to the end (``svlab.train`` resumes
exactly) and the final model is compared with it on the same trials. The paired difference of
the last quarter, with its interval, goes to ``results.json`` beside the learning curve (the
validation EER every few epochs).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from svlab import checkpoint
from svlab.comparison import compare
from svlab.data import SpeakerCrops
from svlab.data.pairs import LARGE_TRIALS
from svlab.evaluate import EvalSet
from svlab.models import build, count_parameters
from svlab.profiles import REPO_ROOT, get_profile, seed_everything
from svlab.train import TrainConfig, train

TUTORIAL_MODELS = ("resnet", "dfresnet", "ecapa", "rev_resnet")


def recipe(name: str, run_dir: Path) -> tuple[TrainConfig, int]:
    """``configs/tutorial_<name>.toml`` in the ci profile, writing to ``run_dir``; its steps."""
    cfg = TrainConfig.from_toml(
        REPO_ROOT / "configs" / f"tutorial_{name}.toml", "ci", [f"out_dir='{run_dir}'"]
    )
    root = get_profile("ci").ensure_corpus()
    crops = SpeakerCrops.from_corpus(root, cfg.crop_frames)
    return cfg, cfg.epochs * crops.batches_per_epoch(cfg.batch_size)


def early_curve(name: str, epochs: int, run_dir: Path) -> dict:
    """The learning curve of the first ``epochs`` epochs of the recipe, its schedule unchanged
    (the run stops as if interrupted): a cheap check that the recipe still reproduces."""
    cfg, steps = recipe(name, run_dir)
    cut = dataclasses.replace(cfg, stop_after_steps=steps * epochs // cfg.epochs)
    return train(cut, progress=False).evaluations[["epoch", "eer", "min_dcf"]].to_dict("list")


def make_checkpoint(name: str, out: Path, progress: bool = True) -> dict:
    """Train ``configs/tutorial_<name>.toml`` in the ci profile; save and score the model."""
    cfg, steps = recipe(name, REPO_ROOT / "runs" / f"tutorial_{name}")
    root = get_profile("ci").data_root
    large = EvalSet.from_corpus(root, LARGE_TRIALS)
    started = time.perf_counter()
    early = train(dataclasses.replace(cfg, stop_after_steps=3 * steps // 4), progress=progress)
    early_scores = large.score(early.model)["scores"]
    result = train(cfg, resume=True, progress=progress)
    seconds = time.perf_counter() - started
    last_quarter = compare(
        {"3/4 of the steps": early_scores, "all steps": large.score(result.model)["scores"]},
        large.labels, large.pairs, control="3/4 of the steps",
    ).iloc[1]
    evalset = EvalSet.from_corpus(root, cfg.eval_trials)
    trained = evalset.score(result.model)
    seed_everything(cfg.seed)
    untrained = evalset.score(build(cfg.model, **cfg.model_args))
    summary = {
        "model": cfg.model,
        "overrides": cfg.model_args,
        "parameters": count_parameters(result.model),
        "eer": trained["eer"],
        "min_dcf": trained["min_dcf"],
        "untrained_eer": untrained["eer"],
        "untrained_min_dcf": untrained["min_dcf"],
        "train_seconds": round(seconds, 1),
        "steps": int(result.history["step"].max()),
        "threads": torch.get_num_threads(),
        "learning_curve": result.evaluations[["epoch", "eer", "min_dcf"]].to_dict(orient="list"),
        "last_quarter": {
            "trials": LARGE_TRIALS,
            "from_step": 3 * steps // 4,
            "eer_before": float(last_quarter["eer"] - last_quarter["difference"]),
            "eer": float(last_quarter["eer"]),
            "difference": [float(last_quarter[k]) for k in
                           ("difference", "difference_low", "difference_high")],
            "verdict": last_quarter["verdict"],
        },
    }
    checkpoint.save_model(
        out / f"tutorial_{name}.pt", result.model, cfg.model, cfg.model_args, head=result.head,
        eer=trained["eer"], min_dcf=trained["min_dcf"], config=f"configs/tutorial_{name}.toml",
    )  # fmt: skip
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=TUTORIAL_MODELS, action="append", help="train only these")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "checkpoints")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--check-epochs", type=int, metavar="N",
        help="train only the first N epochs; write their learning curves to OUT/early.json",
    )
    args = parser.parse_args(argv)
    root = get_profile("ci").ensure_corpus()
    if args.check_epochs:
        curves = {name: early_curve(name, args.check_epochs, args.out / f"run-{name}")
                  for name in args.only or TUTORIAL_MODELS}  # fmt: skip
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "early.json").write_text(json.dumps(curves, indent=1) + "\n")
        print(json.dumps(curves))
        return 0
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    for name in args.only or TUTORIAL_MODELS:
        results[name] = make_checkpoint(name, args.out, progress=not args.quiet)
        late = results[name]["last_quarter"]
        print(f"{name}: EER {100 * results[name]['eer']:.2f}% "
              f"(untrained {100 * results[name]['untrained_eer']:.2f}%) "
              f"in {results[name]['train_seconds']:.0f} s; last quarter of training on "
              f"{LARGE_TRIALS}: {100 * late['difference'][0]:+.2f} points "
              f"[{100 * late['difference'][1]:+.2f}, {100 * late['difference'][2]:+.2f}], "
              f"{late['verdict']}")  # fmt: skip
    baseline = EvalSet.from_corpus(root).score_mean_fbank()
    results["mean_fbank_baseline"] = {"eer": baseline["eer"], "min_dcf": baseline["min_dcf"]}
    print(f"mean-fbank baseline: EER {100 * baseline['eer']:.2f}%")
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = results_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    tmp.replace(results_path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
