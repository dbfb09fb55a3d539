"""What augmentation costs in the data loader: milliseconds per crop, by kind, on the ci corpus."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import pandas as pd
import torch

from svlab.data import SpeakerCrops
from svlab.data.augment import Augmentation, Augmenter
from svlab.profiles import get_profile, seed_everything

RESULTS = Path(__file__).parent / "results" / "augment.json"
KINDS = {
    "none (audio crops, fbank)": {},
    "speed 0.9 / 1.0 / 1.1": {"speeds": (1.0, 0.9, 1.1)},
    "reverberation": {"reverb_prob": 1.0},
    "noise": {"noise_prob": 1.0},
    "music": {"music_prob": 1.0},
    "babble (3-7 speakers)": {"babble_prob": 1.0},
    "SpecAugment masks": {"spec_prob": 1.0},
    "resnet34_vox2's mix": {"speeds": (1.0, 0.9, 1.1), "reverb_prob": 0.2, "noise_prob": 0.2,
                            "music_prob": 0.2, "babble_prob": 0.2},  # fmt: skip
}


def measure(name: str, settings: dict, musan: Path, rirs: Path, batches: int) -> dict:
    """Batches of 32 crops of 200 frames (fbank included), timed after one warm-up batch."""
    root = get_profile("ci").ensure_corpus()
    augment = Augmenter(Augmentation(**settings), musan, rirs) if settings else None
    crops = SpeakerCrops.from_corpus(root, 200, precompute=False, dither=1.0, augment=augment)
    crops.batch(0, 0, batch_size=32)
    start = time.perf_counter()
    for b in range(1, batches + 1):
        crops.batch(0, b, batch_size=32)
    ms = 1000 * (time.perf_counter() - start) / (32 * batches)
    return {"augmentation": name, "ms_per_crop": round(ms, 2), "settings": settings}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="3 batches per kind, not 10")
    args = parser.parse_args()
    seed_everything(0)
    torch.set_num_threads(1)
    musan, rirs = get_profile("ci").ensure_augment_sets()
    batches = 3 if args.quick else 10
    rows = [measure(name, kind, musan, rirs, batches) for name, kind in KINDS.items()]
    base = rows[0]["ms_per_crop"]
    for row in rows:
        row["extra_ms_per_crop"] = round(row["ms_per_crop"] - base, 2)
    print(f"one torch thread, batches of 32 crops of 200 frames, {batches} timed batches each; "
          "the ci corpus and its stand-ins (preloaded speech, noise read from disk)")  # fmt: skip
    print(pd.DataFrame(rows).drop(columns="settings").to_string(index=False))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({
        "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "load_average": round(os.getloadavg()[0], 1), "batches": batches, "rows": rows,
    }, indent=2) + "\n")  # fmt: skip
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
