"""Time to generate the synthetic corpus, its size on disk and its counts, per profile."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd

from svlab.data import synthesize_corpus
from svlab.profiles import get_profile, seed_everything

RESULTS = Path(__file__).parent / "results" / "corpus.json"


def measure(profile_name: str, workers: int, scratch: Path) -> dict:
    """Generate the profile's corpus under ``scratch`` and describe it; then delete it."""
    profile = get_profile(profile_name)
    root = scratch / f"corpus-{profile_name}-{workers}"
    start = time.perf_counter()
    synthesize_corpus(root, seed=profile.seed, workers=workers, **profile.synth)
    seconds = time.perf_counter() - start
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    counts = json.loads((root / "meta.json").read_text())["counts"]
    shutil.rmtree(root)
    return {
        "profile": profile_name,
        "workers": workers,
        "seconds": round(seconds, 2),
        "MB": round(size / 2**20, 1),
        **counts,
        "synth": profile.synth,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="the ci corpus only")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    seed_everything(0)
    profiles = ["ci"] if args.quick else ["ci", "laptop"]
    with tempfile.TemporaryDirectory() as scratch:
        rows = [measure(p, w, Path(scratch)) for p in profiles for w in args.workers]
    table = pd.DataFrame(rows).drop(columns="synth")
    print(
        f"synthesize_corpus(seed=0, **profile.synth), {os.cpu_count()} CPUs, "
        f"load average at end {os.getloadavg()[0]:.1f}"
    )
    print(table.to_string(index=False))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "machine": platform.processor() or platform.machine(),
                "cpus": os.cpu_count(),
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
