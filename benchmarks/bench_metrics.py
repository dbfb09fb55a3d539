"""Time and peak memory of EER + minDCF from one sort, beside a thresholds x trials sweep."""

from __future__ import annotations

import argparse
import json
import platform
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd

from svlab.metrics import eer, min_dcf

RESULTS = Path(__file__).parent / "results" / "metrics.json"
SWEEP_MEMORY_LIMIT = 2 * 2**30  # the sweep's boolean matrix is skipped past 2 GiB


def threshold_sweep(scores: np.ndarray, labels: np.ndarray, p_target: float = 0.01):
    """The straightforward way: compare every trial with every distinct threshold at once."""
    thresholds = np.unique(scores)
    accepted = scores[None, :] >= thresholds[:, None]
    frr = (~accepted[:, labels == 1]).mean(axis=1)
    far = accepted[:, labels == 0].mean(axis=1)
    i = int(np.argmin(np.abs(frr - far)))
    cost = (p_target * frr + (1 - p_target) * far) / p_target
    return (frr[i] + far[i]) / 2, cost.min()


def measure(fn, *args) -> tuple[object, float, int]:
    tracemalloc.start()
    start = time.perf_counter()
    result = fn(*args)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result, seconds, peak


def one_sort(scores, labels):
    return eer(scores, labels)[0], min_dcf(scores, labels)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="stop at 1e6 trials")
    args = parser.parse_args()
    sizes = [10**4, 3 * 10**4, 10**5, 10**6] + ([] if args.quick else [10**7])
    rng = np.random.default_rng(0)
    rows = []
    for n in sizes:
        labels = (rng.random(n) < 0.1).astype(np.int64)
        scores = rng.normal(2.0 * labels, 1.0)
        (rate, cost), seconds, peak = measure(one_sort, scores, labels)
        row = {"trials": n, "eer": rate, "min_dcf": cost, "sort_s": seconds,
               "sort_peak_MB": peak / 2**20, "sweep_s": None, "sweep_peak_MB": None}
        if n * n <= SWEEP_MEMORY_LIMIT:
            (sweep_rate, sweep_cost), seconds, peak = measure(threshold_sweep, scores, labels)
            row.update(sweep_s=seconds, sweep_peak_MB=peak / 2**20,
                       sweep_eer_diff=abs(sweep_rate - rate), sweep_dcf_diff=abs(sweep_cost - cost))
        else:
            row["sweep_note"] = f"skipped: needs {n * n / 2**30:.0f} GiB"
        rows.append(row)
    table = pd.DataFrame(rows)
    print("EER + minDCF (p_target 0.01), 10% target trials, scores N(2*label, 1), numpy, 1 process")
    print(table.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(
        {"machine": platform.processor() or platform.machine(), "rows": rows}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
