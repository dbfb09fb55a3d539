"""Time and memory of EER + minDCF from one sort and of speaker-bootstrap intervals; coverage."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd

from svlab.metrics import eer, min_dcf
from svlab.metrics.intervals import (
    eer_difference_interval,
    eer_interval,
    min_dcf_difference_interval,
    min_dcf_interval,
    simulate_trials,
    weighted_eer,
)
from svlab.profiles import seed_everything

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


def interval_timing(resamples: int) -> list[dict]:
    """Each interval function on 100,000 simulated trials of 250 speakers x 20 utterances."""
    sim = simulate_trials(250, 20, nontarget_trials=52_500, seed=0)
    trials = sim.labels, sim.enroll_speakers, sim.test_speakers
    calls = {
        "eer_interval": lambda: eer_interval(sim.scores_a, *trials, resamples=resamples),
        "eer_difference_interval": lambda: eer_difference_interval(
            sim.scores_a, sim.scores_b, *trials, resamples=resamples),
        "min_dcf_interval": lambda: min_dcf_interval(sim.scores_a, *trials, resamples=resamples),
        "min_dcf_difference_interval": lambda: min_dcf_difference_interval(
            sim.scores_a, sim.scores_b, *trials, resamples=resamples),
    }
    rows = []
    for name, call in calls.items():
        (estimate, low, high), seconds, peak = measure(call)
        rows.append({"function": name, "trials": int(sim.labels.size), "speakers": 250,
                     "resamples": resamples, "estimate": estimate, "low": low, "high": high,
                     "seconds": seconds, "peak_MB": peak / 2**20})
    return rows


def trial_interval(sim, resamples: int, seed: int) -> tuple[float, float]:
    """The naive baseline: resample trials as if they were independent."""
    n = sim.labels.size
    weights = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=resamples)
    low, high = np.quantile(weighted_eer(sim.scores_a, sim.labels, weights), [0.025, 0.975])
    return float(low), float(high)


def coverage(speakers: int, utterances: int, nontargets: int, sets: int, resamples: int,
             p_target: float = 0.05) -> list[dict]:
    """How often each 95% interval holds the population value, over simulated test sets."""
    first = simulate_trials(speakers, utterances, nontarget_trials=nontargets, seed=0)
    truth = {"eer": (first.eer_a, first.eer_b),
             "min_dcf": tuple(first.population_min_dcf(s, p_target) for s in "ab")}
    hits, widths = {}, {}
    for k in range(sets):
        sim = simulate_trials(speakers, utterances, nontarget_trials=nontargets, seed=1 + k)
        trials = sim.labels, sim.enroll_speakers, sim.test_speakers
        options = {"resamples": resamples, "seed": k}
        dcf = {"p_target": p_target, **options}
        intervals = {
            ("EER a", "speaker"): (eer_interval(sim.scores_a, *trials, **options)[1:],
                                   truth["eer"][0]),
            ("EER a", "trial"): (trial_interval(sim, resamples, k), truth["eer"][0]),
            ("EER b", "speaker"): (eer_interval(sim.scores_b, *trials, **options)[1:],
                                   truth["eer"][1]),
            ("EER b - a", "speaker, paired"): (
                eer_difference_interval(sim.scores_a, sim.scores_b, *trials, **options)[1:],
                truth["eer"][1] - truth["eer"][0]),
            (f"minDCF({p_target}) a", "speaker"): (
                min_dcf_interval(sim.scores_a, *trials, **dcf)[1:], truth["min_dcf"][0]),
            (f"minDCF({p_target}) b - a", "speaker, paired"): (
                min_dcf_difference_interval(sim.scores_a, sim.scores_b, *trials, **dcf)[1:],
                truth["min_dcf"][1] - truth["min_dcf"][0]),
        }
        for key, ((low, high), true) in intervals.items():
            hits[key] = hits.get(key, 0) + int(low <= true <= high)
            widths.setdefault(key, []).append(high - low)
    truths = {key: true for key, (_, true) in intervals.items()}
    return [{"design": f"{speakers} spk x {utterances} utt", "trials": int(first.labels.size),
             "quantity": quantity, "bootstrap": unit, "truth": truths[(quantity, unit)],
             "coverage": hits[(quantity, unit)] / sets,
             "mean_width": float(np.mean(widths[(quantity, unit)])), "sets": sets,
             "resamples": resamples}
            for quantity, unit in hits]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="stop at 1e6 trials")
    args = parser.parse_args()
    seed_everything(0)
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
    timing = interval_timing(resamples=1000)
    print("\nSpeaker-bootstrap intervals, 1,000 resamples, numpy, 1 process")
    print(pd.DataFrame(timing).to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    designs = [(30, 8, 2000)] + ([] if args.quick else [(60, 8, 4000)])
    sets, resamples = (50, 200) if args.quick else (200, 500)
    cover = [row for design in designs for row in coverage(*design, sets, resamples)]
    print(f"\n95% intervals on {sets} simulated test sets per design: how often they hold the "
          "population value (simulate_trials: speaker + utterance effects, shift 0.3)")
    print(pd.DataFrame(cover).drop(columns=["sets", "resamples"]).to_string(
        index=False, float_format=lambda x: f"{x:.3g}"))
    RESULTS.parent.mkdir(exist_ok=True)
    result = {"machine": platform.processor() or platform.machine(), "rows": rows,
              "interval_timing": timing, "coverage": cover,
              "settings": {"quick": args.quick, "level": 0.95, "coverage_sets": sets,
                           "coverage_resamples": resamples, "min_dcf_p_target": 0.05,
                           "simulate_trials": {"shift": 0.3, "spread": [0.5, 0.4, 0.5]}}}
    temporary = RESULTS.with_suffix(".json.tmp")
    with open(temporary, "w") as file:
        file.write(json.dumps(result, indent=2) + "\n")
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, RESULTS)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
