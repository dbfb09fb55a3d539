"""Systems compared on the same trials: each EER with its interval, each against its control."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from svlab.metrics import (
    eer_difference_interval,
    eer_interval,
    format_difference,
    format_interval,
    min_dcf,
    resolved,
)


def trial_speakers(pairs: Sequence[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray]:
    """The enrolment and test speaker of each trial: the first part of each path, as in VoxCeleb.

    >>> trial_speakers([("id1/a/1.wav", "id2/b/1.wav"), ("id1/a/1.wav", "id1/c/2.wav")])
    (array(['id1', 'id1'], dtype='<U3'), array(['id2', 'id1'], dtype='<U3'))
    """
    speakers = np.array([[path.split("/")[0] for path in pair] for pair in pairs])
    if speakers.ndim != 2 or speakers.shape[1] != 2:
        raise ValueError(f"pairs must be (enrolment path, test path) tuples, got {len(pairs)}")
    return speakers[:, 0], speakers[:, 1]


def compare(
    scores: Mapping[str, np.ndarray],
    labels: np.ndarray,
    pairs: Sequence[tuple[str, str]],
    control: str,
    *,
    level: float = 0.95,
    resamples: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per system: its EER with a speaker-bootstrap interval, and its paired difference
    from ``control`` (another key of ``scores``) on the same trials.

    ``scores`` maps each system's name to its scores of the trials ``pairs`` (with ``labels``),
    e.g. ``EvalSet.score(model)["scores"]``. The EER intervals come from
    :func:`svlab.metrics.eer_interval`, the differences from
    :func:`svlab.metrics.eer_difference_interval` (``eer(system) - eer(control)``, fractions);
    ``verdict`` is "resolved" when the difference's interval excludes zero, "not resolved" when
    it includes zero (the data cannot tell the two apart), and "control" on the control's row.
    ``EER`` and ``vs control`` hold the same numbers as text, e.g. ``"13.7% [11.0, 17.4]"`` and
    ``"+0.78 points [+0.13, +1.37], resolved"``. All systems share the same resamples.

    >>> from svlab.metrics import simulate_trials
    >>> sim = simulate_trials(30, 8, seed=1)
    >>> pairs = [(f"{e}/s/1.wav", f"{t}/s/2.wav") for e, t in zip(sim.enroll_speakers,
    ...                                                          sim.test_speakers)]
    >>> table = compare({"a": sim.scores_a, "b": sim.scores_b}, sim.labels, pairs, control="a",
    ...                 resamples=200)
    >>> table[["system", "verdict"]].values.tolist()
    [['a', 'control'], ['b', 'resolved']]
    >>> round(float(table.loc[1, "difference"] * 100), 2)
    -3.75
    """
    if control not in scores:
        raise ValueError(f"the control {control!r} is not among the systems {sorted(scores)}")
    labels = np.asarray(labels)
    enroll, test = trial_speakers(pairs)
    for name, values in scores.items():
        if np.shape(values) != labels.shape:
            raise ValueError(
                f"system {name!r} has {np.shape(values)} scores for {labels.shape[0]} trials"
            )
    options = {"level": level, "resamples": resamples, "seed": seed}
    rows = []
    for name, values in scores.items():
        rate, low, high = eer_interval(values, labels, enroll, test, **options)
        row = {
            "system": name, "eer": rate, "eer_low": low, "eer_high": high,
            "min_dcf": min_dcf(values, labels, p_target=0.01)[0],
            "difference": np.nan, "difference_low": np.nan, "difference_high": np.nan,
            "verdict": "control", "EER": format_interval((rate, low, high)), "vs control": "",
        }  # fmt: skip
        if name != control:
            difference = eer_difference_interval(
                scores[control], values, labels, enroll, test, **options
            )
            row.update(
                difference=difference[0], difference_low=difference[1],
                difference_high=difference[2],
                verdict="resolved" if resolved(difference) else "not resolved",
                **{"vs control": format_difference(difference)},
            )  # fmt: skip
        rows.append(row)
    return pd.DataFrame(rows)


def across_seeds(tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Summarise `compare` tables of repeated runs (one per seed): per system, the mean and
    standard deviation of the EER and of the difference from the control, and in how many runs
    the difference was resolved.

    >>> one = pd.DataFrame({"system": ["fp32", "4-bit"], "eer": [0.10, 0.11],
    ...     "difference": [np.nan, 0.01], "verdict": ["control", "resolved"]})
    >>> two = one.assign(eer=[0.12, 0.12], difference=[np.nan, 0.0], verdict=["control",
    ...     "not resolved"])
    >>> across_seeds([one, two])[["system", "seeds", "resolved"]].values.tolist()
    [['fp32', 2, 'control'], ['4-bit', 2, '1 of 2']]
    >>> round(float(across_seeds([one, two]).loc[1, "difference_mean"]), 4)
    0.005
    """
    if not tables:
        raise ValueError("no tables to summarise")
    stacked = pd.concat(tables, ignore_index=True)
    rows = []
    for name in dict.fromkeys(stacked["system"]):
        runs = stacked[stacked["system"] == name]
        control = bool((runs["verdict"] == "control").all())
        rows.append({
            "system": name, "seeds": len(runs),
            "eer_mean": runs["eer"].mean(), "eer_sd": runs["eer"].std(ddof=1),
            "difference_mean": np.nan if control else runs["difference"].mean(),
            "difference_sd": np.nan if control else runs["difference"].std(ddof=1),
            "resolved": "control" if control
            else f"{int((runs['verdict'] == 'resolved').sum())} of {len(runs)}",
        })  # fmt: skip
    return pd.DataFrame(rows)
