"""Time to generate the synthetic corpus, its size on disk and its counts, per profile."""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd

from svlab.data import synthesize_corpus
from svlab.profiles import get_profile, seed_everything

RESULTS = Path(__file__).parent / "results" / "corpus.json"


def cpu_seconds() -> float:
    """CPU time used by this process and its finished children (worker processes)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(profile_name: str, workers: int, scratch: Path) -> dict:
    """Generate the profile's corpus under ``scratch`` and describe it; then delete it."""
    profile = get_profile(profile_name)
    root = scratch / f"corpus-{profile_name}-{workers}"
    start, cpu_start = time.perf_counter(), cpu_seconds()
    synthesize_corpus(root, seed=profile.seed, workers=workers, **profile.synth)
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    counts = json.loads((root / "meta.json").read_text())["counts"]
    shutil.rmtree(root)
    return {
        "profile": profile_name,
        "workers": workers,
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu, 2),
        "load_average": round(os.getloadavg()[0], 1),
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
        f"synthesize_corpus(seed=0, **profile.synth) on {os.cpu_count()} CPUs; cpu_seconds counts "
        "the worker processes too; a load average above the CPU count means shared CPUs"
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
