"""What augmentation buys: the tutorial ResNet trained with and without it, paired on the same
trials, on the clean test audio and on the same audio with stand-in noise and rooms added."""

from __future__ import annotations

import argparse
import json
import platform
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from svlab.checkpoint import load_model
from svlab.comparison import compare
from svlab.data.augment import Augmentation, Augmenter
from svlab.data.pairs import LARGE_TRIALS
from svlab.evaluate import EvalSet
from svlab.profiles import REPO_ROOT, get_profile, seed_everything
from svlab.train import TrainConfig, train

RESULTS = Path(__file__).parent / "results" / "augment_eer.json"
RECIPE = REPO_ROOT / "configs" / "tutorial_resnet.toml"
AUGMENT = {"speeds": [1.0, 0.9, 1.1], "reverb_prob": 0.2, "noise_prob": 0.2, "music_prob": 0.2,
           "babble_prob": 0.2}  # resnet34_vox2.toml's mix


def corrupted_copy(corpus: Path, keys: list[str], out: Path, musan: Path, rirs: Path) -> Path:
    """The corpus's test audio, each file reverberated by a stand-in room, then mixed with
    stand-in noise at 5 dB SNR: a test set in the conditions augmentation trains for."""
    corrupt = Augmenter(Augmentation(reverb_prob=1.0, noise_prob=1.0, noise_snr=(5.0, 5.0)),
                        musan, rirs)
    for i, key in enumerate(sorted(keys)):
        target = out / "wav" / key
        if target.is_file():
            continue
        wave, rate = sf.read(corpus / "wav" / key, dtype="float32")
        wave = torch.from_numpy(wave)
        noisy, _ = corrupt.audio(lambda n, w=wave: w[:n], len(wave),
                                 torch.Generator().manual_seed(i))
        target.parent.mkdir(parents=True, exist_ok=True)
        sf.write(target, noisy.numpy(), rate)
    (out / "trials").mkdir(parents=True, exist_ok=True)
    (out / "trials" / LARGE_TRIALS).write_text((corpus / "trials" / LARGE_TRIALS).read_text())
    return out


def _train(cfg: TrainConfig) -> None:
    torch.set_num_threads(1)
    train(cfg, progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="4 epochs")
    parser.add_argument("--epochs", type=int, default=None,
                        help="the recipe's schedule over this many epochs (default: its own, 60)")
    parser.add_argument("--runs", type=Path, default=REPO_ROOT / "runs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seed_everything(0)
    profile = get_profile("ci")
    corpus = profile.ensure_corpus()
    musan, rirs = profile.ensure_augment_sets()
    base = TrainConfig.from_toml(RECIPE, "ci")
    epochs = 4 if args.quick else args.epochs or base.epochs
    runs = {name: replace(base, name=f"bench-augment-{tag}", epochs=epochs, augment=augment,
                          precompute_features=False, data_root=str(corpus),
                          out_dir=str(args.runs / f"bench_augment_{tag}"))
            for name, tag, augment in (("clean crops", "off", {}),
                                       ("augmented crops", "on", AUGMENT))}
    with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:  # one core each
        list(pool.map(_train, runs.values()))
    models = {name: load_model(Path(cfg.out_dir) / "model.pt") for name, cfg in runs.items()}
    clean = EvalSet.from_corpus(corpus, LARGE_TRIALS)
    noisy = corrupted_copy(corpus, clean.keys, args.runs / "bench_augment_noisy_test", musan,
                           rirs)
    results = {"setting": {"recipe": str(RECIPE.relative_to(REPO_ROOT)), "epochs": epochs,
                           "augment": AUGMENT, "trials": LARGE_TRIALS,
                           "noisy test": "each test file reverberated (a stand-in room), then "
                           "stand-in MUSAN noise at 5 dB SNR",
                           "interval": "95% speaker bootstrap, paired on the same trials"},
               "quick": args.quick, "machine": platform.platform(), "torch": torch.__version__}
    for condition, evalset in (("clean test", clean),
                               ("noisy test", EvalSet.from_corpus(noisy, LARGE_TRIALS))):
        scores = {name: evalset.score(model)["scores"] for name, model in models.items()}
        table = compare(scores, np.asarray(evalset.labels), evalset.pairs, control="clean crops")
        print(f"\n## {condition}\n{table.to_string(index=False)}")
        results[condition] = table.to_dict(orient="records")
    RESULTS.write_text(json.dumps(results, indent=2, default=str))
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
