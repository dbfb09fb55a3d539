"""compare / across_seeds against the interval functions they wrap and against numpy."""

from __future__ import annotations

import numpy as np
import pytest

from svlab.comparison import across_seeds, compare, trial_speakers
from svlab.metrics import eer, eer_difference_interval, eer_interval, simulate_trials


@pytest.fixture(scope="module")
def simulated():
    sim = simulate_trials(20, 6, seed=3)
    pairs = [(f"{e}/s/1.wav", f"{t}/s/2.wav")
             for e, t in zip(sim.enroll_speakers, sim.test_speakers, strict=True)]  # fmt: skip
    return sim, pairs


def test_rows_are_the_interval_functions_results(simulated):
    sim, pairs = simulated
    scores = {"control": sim.scores_a, "method": sim.scores_b, "copy": sim.scores_a.copy()}
    table = compare(scores, sim.labels, pairs, control="control", resamples=300, seed=4)
    enroll, test = trial_speakers(pairs)
    assert list(table["system"]) == ["control", "method", "copy"]
    for row, values in zip(table.itertuples(), scores.values(), strict=True):
        expected = eer_interval(values, sim.labels, enroll, test, resamples=300, seed=4)
        assert (row.eer, row.eer_low, row.eer_high) == pytest.approx(expected)
        assert row.eer == eer(values, sim.labels)[0]
    method = eer_difference_interval(sim.scores_a, sim.scores_b, sim.labels, enroll, test,
                                     resamples=300, seed=4)  # fmt: skip
    assert tuple(table.loc[1, ["difference", "difference_low", "difference_high"]]) == (
        pytest.approx(method)
    )
    assert table.loc[0, "verdict"] == "control" and np.isnan(table.loc[0, "difference"])
    assert table.loc[2, "difference"] == 0.0 and table.loc[2, "verdict"] == "not resolved"
    assert table.loc[2, "vs control"].endswith("not resolved")


def test_bad_input_is_named(simulated):
    sim, pairs = simulated
    with pytest.raises(ValueError, match="control 'fp32' is not among"):
        compare({"a": sim.scores_a}, sim.labels, pairs, control="fp32")
    with pytest.raises(ValueError, match="system 'b' has"):
        compare({"a": sim.scores_a, "b": sim.scores_b[:-1]}, sim.labels, pairs, control="a")
    with pytest.raises(ValueError, match="no tables"):
        across_seeds([])


def test_across_seeds_matches_numpy(simulated):
    sim, pairs = simulated
    tables = []
    for seed in range(3):
        noisy = sim.scores_b + np.random.default_rng(seed).normal(0, 0.3, sim.labels.shape)
        tables.append(compare({"a": sim.scores_a, "b": noisy}, sim.labels, pairs, control="a",
                              resamples=100))  # fmt: skip
    summary = across_seeds(tables)
    differences = [t.loc[1, "difference"] for t in tables]
    assert summary.loc[1, "difference_mean"] == pytest.approx(np.mean(differences))
    assert summary.loc[1, "difference_sd"] == pytest.approx(np.std(differences, ddof=1))
    assert summary.loc[0, "eer_sd"] == 0.0 and summary.loc[0, "resolved"] == "control"
    resolved = sum(t.loc[1, "verdict"] == "resolved" for t in tables)
    assert summary.loc[1, "resolved"] == f"{resolved} of 3"
