"""Time and peak memory of `svlab evaluate` on lists of VoxCeleb1-E's size: store vs in memory.

The lists are synthetic: utterance keys ``<speaker>g<group>/<session>/<utt>.wav`` are symbolic
links onto the ci corpus's 480 test files (group ``g`` is one more copy of every test speaker),
so a list of 145,160 keys names 480 distinct files. The store path extracts each distinct file
once and writes one row per file; every key still has its row. What is measured is therefore
the per-key work (list, index, scoring, intervals) at full size plus extraction of 480 files;
extraction of 145,160 distinct files is projected from the measured rate per file.

Each run is `svlab evaluate` in a fresh process; its peak resident memory (``ru_maxrss``) is read
there, for the process itself and for the largest of its children: the DataLoader workers, and a
helper process that importing torch starts (about 430 MiB). A forked child counts the pages it
shares with its parent at the fork, so the children's peak is not memory added to the parent's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from svlab.checkpoint import load_model
from svlab.data.voxceleb import read_trials
from svlab.embedding_store import EmbeddingStore
from svlab.profiles import seed_everything

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "evaluate.json"
CI = REPO / "data" / "corpus-ci"
CHECKPOINT = REPO / "checkpoints" / "tutorial_resnet.pt"
VOX1_E = (145_160, 579_818)  # utterances, trials of VoxCeleb1-E (cleaned)
MODERATE = (20_000, 80_000)  # both paths, side by side
QUICK = (5_000, 20_000)
RUNNER = """
import json, resource, sys
import svlab.evaluate
from svlab.cli import main
if sys.argv[1] == "in-memory":
    svlab.evaluate.LARGE_LIST_KEYS = 10**12
rc = main(sys.argv[2:])
peak = {"rc": rc, "main_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "children_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}
print("PEAK " + json.dumps(peak), file=sys.stderr)
"""


def synthesize_list(folder: Path, n_keys: int, n_trials: int, seed: int = 0) -> tuple[Path, int]:
    """``folder/wav`` of ``n_keys`` links onto the ci test files (and of the ci train speakers,
    the AS-norm cohort) and ``folder/trials.txt``: half target trials (two files of one copied
    speaker), half non-target (two real speakers). Returns the list and its distinct files."""
    files = sorted({p for t in read_trials(CI / "trials" / "test.txt") for p in (t.enroll, t.test)})
    per_speaker = 16  # the ci corpus: 30 test speakers x 16 utterances, sorted by speaker
    speakers = [f.split("/")[0] for f in files]
    assert len(files) % per_speaker == 0 and all(
        len(set(speakers[i : i + per_speaker])) == 1 for i in range(0, len(files), per_speaker)
    )
    names = []
    for k in range(n_keys):
        group, f = divmod(k, len(files))
        speaker, rest = files[f].split("/", 1)
        names.append(f"{speaker}g{group:03d}/{rest}")
        link = folder / "wav" / names[-1]
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(CI / "wav" / files[f])
    for speaker in {line.split()[0] for line in (CI / "train.txt").read_text().splitlines()}:
        (folder / "wav" / speaker).symlink_to(CI / "wav" / speaker)  # the AS-norm cohort
    rng = np.random.default_rng(seed)
    n_target = n_trials // 2
    whole = n_keys // per_speaker * per_speaker  # keys whose speaker copy is complete
    first = rng.integers(0, whole, n_target)
    shift = rng.integers(1, per_speaker, n_target)
    second = first - first % per_speaker + (first % per_speaker + shift) % per_speaker
    a, b = rng.integers(0, n_keys, (2, 2 * (n_trials - n_target)))
    real = lambda k: (k % len(files)) // per_speaker  # noqa: E731
    keep = real(a) != real(b)
    a, b = a[keep][: n_trials - n_target], b[keep][: n_trials - n_target]
    labels = np.concatenate((np.ones(n_target, int), np.zeros(len(a), int)))
    enroll, test = np.concatenate((first, a)), np.concatenate((second, b))
    order = rng.permutation(len(labels))
    path = folder / "trials.txt"
    with path.open("w") as f:
        for i in order:
            f.write(f"{labels[i]} {names[enroll[i]]} {names[test[i]]}\n")
    return path, min(n_keys, len(files))


def run(folder: Path, trials: Path, path: str, extra: list[str]) -> dict:
    """`svlab evaluate` in a fresh process: wall seconds, peak memory, its report."""
    command = [sys.executable, "-c", RUNNER, path, "evaluate", str(CHECKPOINT), "--root",
               str(folder), "--trials", str(trials), *extra]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, check=False)
    seconds = time.perf_counter() - start
    peaks = [line for line in done.stderr.splitlines() if line.startswith("PEAK ")]
    if done.returncode or not peaks or json.loads(peaks[-1][5:])["rc"]:
        raise RuntimeError(f"svlab evaluate failed:\n{done.stderr[-3000:]}")
    peak, report = json.loads(peaks[-1][5:]), json.loads(done.stdout)
    return {
        "seconds": round(seconds, 1),
        "peak_MiB": round(peak["main_kib"] / 1024, 1),
        "children_peak_MiB": round(peak["children_kib"] / 1024, 1),
        "eer_percent": report["eer_percent"],
        "backend": report["backend"],
    }


def measure(scratch: Path, n_keys: int, n_trials: int, in_memory: bool, workers: int) -> list:
    """The store path (extraction, then reuse with AS-norm) and, if asked, the in-memory path."""
    folder = scratch / f"list{n_keys}"
    start = time.perf_counter()
    trials, distinct = synthesize_list(folder, n_keys, n_trials)
    made = time.perf_counter() - start
    common = {"keys": n_keys, "trials": n_trials, "distinct_files": distinct}
    store = ["--store", str(folder / "store"), "--workers", str(workers)]
    asnorm = ["--backend", "asnorm", "--cohort", str(CI / "train.txt"), "--cohort-per-speaker",
              "2", "--top-n", "50"]  # fmt: skip
    rows = [
        {**common, "path": f"store, extract ({workers} workers)", **run(folder, trials, "store",
                                                                        store)},
        {**common, "path": "store, reuse", **run(folder, trials, "store", [*store, *asnorm])},
    ]  # fmt: skip
    if in_memory:
        rows.append({**common, "path": "in memory", **run(folder, trials, "in-memory", [])})
    print(f"{n_keys:,} keys, {n_trials:,} trials: list and links made in {made:.1f} s")
    return rows


def extraction_rate(scratch: Path, workers: int) -> dict:
    """Seconds per distinct file of extracting the ci test files into a store, projected to
    VoxCeleb1-E's 145,160 distinct files (same model, same CPUs; real files run 8 s on average,
    the ci files 4 s, so real ones would take longer)."""
    torch.set_num_threads(1)
    keys = sorted({p for t in read_trials(CI / "trials" / "test.txt") for p in (t.enroll, t.test)})
    start = time.perf_counter()
    EmbeddingStore.extract(scratch / "rate", load_model(CHECKPOINT), keys, CI / "wav",
                           workers=workers)  # fmt: skip
    per_file = (time.perf_counter() - start) / len(keys)
    return {"files": len(keys), "seconds_per_file": round(per_file, 4),
            "projected_hours_for_145160_files": round(per_file * VOX1_E[0] / 3600, 2)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"one list of {QUICK[0]:,} keys / {QUICK[1]:,} trials, both paths")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    args = parser.parse_args()
    seed_everything(0)
    with tempfile.TemporaryDirectory(prefix="bench-evaluate-") as scratch:
        rate = extraction_rate(Path(scratch), args.workers)
        if args.quick:
            rows = measure(Path(scratch), *QUICK, in_memory=True, workers=args.workers)
        else:
            rows = measure(Path(scratch), *VOX1_E, in_memory=False, workers=args.workers)
            rows += measure(Path(scratch), *MODERATE, in_memory=True, workers=args.workers)
    table = pd.DataFrame(rows)
    print(f"svlab evaluate {CHECKPOINT.name} on {os.cpu_count()} CPUs (OMP_NUM_THREADS=1), "
          "each run a fresh process; intervals: 1000 speaker resamples")  # fmt: skip
    print(table.to_string(index=False))
    moderate = table[table["keys"] == (QUICK if args.quick else MODERATE)[0]]
    by_path = moderate.set_index("path")
    extract = by_path.filter(like="extract", axis=0).iloc[0]
    memory = by_path.loc["in memory"]
    ratio = {"peak_memory": round(memory["peak_MiB"] / extract["peak_MiB"], 1),
             "seconds": round(memory["seconds"] / extract["seconds"], 1)}  # fmt: skip
    print(f"in memory / store at {int(memory['keys']):,} keys: {ratio['peak_memory']}x the peak "
          f"memory, {ratio['seconds']}x the time")  # fmt: skip
    print(f"extraction: {rate['seconds_per_file']} s per distinct file ({rate['files']} ci files); "
          f"145,160 distinct files would take about {rate['projected_hours_for_145160_files']} h")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({
        "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "load_average": round(os.getloadavg()[0], 1), "quick": args.quick,
        "model": CHECKPOINT.name, "rows": rows, "in_memory_over_store": ratio,
        "extraction": rate,
    }, indent=2) + "\n")  # fmt: skip
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
