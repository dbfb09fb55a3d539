"""Speaker-bootstrap intervals: weighted metrics against repeated trials; coverage by simulation."""


import numpy as np
import pytest

from svlab.metrics import eer, min_dcf
from svlab.metrics.intervals import (
    eer_difference_interval,
    eer_interval,
    min_dcf_difference_interval,
    min_dcf_interval,
    simulate_trials,
    weighted_eer,
    weighted_min_dcf,
)


def random_trials(seed, n=400, ties=False):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    labels[:2] = [0, 1]
    scores = rng.normal(labels * 1.5, 1.0)
    return (np.round(scores, 1) if ties else scores), labels


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("ties", [False, True])
def test_unit_weights_give_exactly_eer_and_min_dcf(seed, ties):
    scores, labels = random_trials(seed, ties=ties)
    ones = np.ones(labels.size)
    assert weighted_eer(scores, labels, ones) == eer(scores, labels)[0]
    assert weighted_min_dcf(scores, labels, ones, 0.05) == min_dcf(scores, labels, 0.05)[0]
    batch = weighted_eer(scores, labels, np.ones((3, labels.size)))
    assert batch.tolist() == [eer(scores, labels)[0]] * 3


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("ties", [False, True])
def test_integer_weights_equal_repeated_trials(seed, ties):
    scores, labels = random_trials(seed, ties=ties)
    weights = np.random.default_rng(100 + seed).integers(0, 4, (4, labels.size))
    weights[:, :2] = 1  # keep both kinds of trial
    for row, got_eer, got_dcf in zip(
        weights, weighted_eer(scores, labels, weights), weighted_min_dcf(scores, labels, weights),
        strict=True,
    ):
        repeated = np.repeat(scores, row), np.repeat(labels, row)
        assert got_eer == pytest.approx(eer(*repeated)[0], abs=1e-12)
        assert got_dcf == pytest.approx(min_dcf(*repeated)[0], abs=1e-12)


def test_weights_without_a_kind_of_trial_give_nan():
    scores, labels = random_trials(0)
    assert np.isnan(weighted_eer(scores, labels, labels.astype(float)))
    with pytest.raises(ValueError, match="non-negative"):
        weighted_eer(scores, labels, -np.ones(labels.size))
    with pytest.raises(ValueError, match="shape"):
        weighted_eer(scores, labels, np.ones(labels.size + 1))


def speaker_trials(seed, n_speakers=12, utterances=5):
    sim = simulate_trials(n_speakers, utterances, nontarget_trials=300, seed=seed)
    return sim, (sim.labels, sim.enroll_speakers, sim.test_speakers)


def test_one_resample_is_the_eer_of_the_rebuilt_trial_list():
    """Rebuild the resampled test set by hand: every copy of a drawn speaker keeps its target
    trials, and every copy of one speaker meets every copy of another in their non-targets."""
    sim, (labels, enroll, test) = speaker_trials(3)
    speakers = np.unique(np.concatenate((enroll, test)))
    for seed in range(5):
        counts = np.random.default_rng(seed).multinomial(
            speakers.size, np.full(speakers.size, 1.0 / speakers.size)
        )
        copies = dict(zip(speakers.tolist(), counts.tolist(), strict=True))
        scores, kinds = [], []
        for score, label, e, t in zip(sim.scores_a, labels, enroll, test, strict=True):
            times = copies[e] if label else copies[e] * copies[t]
            scores += [score] * times
            kinds += [label] * times
        _, low, high = eer_interval(sim.scores_a, labels, enroll, test, resamples=1, seed=seed)
        assert low == high == pytest.approx(eer(scores, kinds)[0], abs=1e-12)
        _, low, _ = min_dcf_interval(
            sim.scores_a, labels, enroll, test, p_target=0.1, resamples=1, seed=seed
        )
        assert low == pytest.approx(min_dcf(scores, kinds, 0.1)[0], abs=1e-12)


def test_estimates_are_the_plain_metrics_and_seeds_repeat():
    sim, trials = speaker_trials(1)
    a, b = sim.scores_a, sim.scores_b
    first = eer_interval(a, *trials, resamples=50, seed=7)
    assert first == eer_interval(a, *trials, resamples=50, seed=7)
    assert first != eer_interval(a, *trials, resamples=50, seed=8)
    assert first[0] == eer(a, trials[0])[0] and first[1] <= first[2]
    diff = eer_difference_interval(a, b, *trials, resamples=50)
    assert diff[0] == eer(b, trials[0])[0] - eer(a, trials[0])[0]
    cost = min_dcf_interval(a, *trials, p_target=0.1, resamples=50)
    assert cost[0] == min_dcf(a, trials[0], 0.1)[0]
    dcf_diff = min_dcf_difference_interval(a, b, *trials, p_target=0.1, c_fa=2.0, resamples=50)
    assert dcf_diff[0] == (
        min_dcf(b, trials[0], 0.1, c_fa=2.0)[0] - min_dcf(a, trials[0], 0.1, c_fa=2.0)[0]
    )
    assert eer_difference_interval(a, a, *trials, resamples=50) == (0.0, 0.0, 0.0)


def test_string_and_integer_speakers_give_the_same_interval():
    sim, (labels, enroll, test) = speaker_trials(2)
    as_int = eer_interval(sim.scores_a, labels, enroll, test, resamples=30)
    names = np.array([f"id{i:03d}" for i in range(enroll.max() + 1)])
    as_str = eer_interval(sim.scores_a, labels, names[enroll], names[test], resamples=30)
    as_obj = eer_interval(
        sim.scores_a, labels, list(names[enroll]), names[test].astype(object), resamples=30
    )
    assert as_int == as_str == as_obj


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s, y, e, t: (s[:-1], y, e, t), "scores but"),
        (lambda s, y, e, t: (np.where(np.arange(s.size) == 5, np.nan, s), y, e, t), "NaN"),
        (lambda s, y, e, t: (s, y * 2, e, t), "labels must be 0"),
        (lambda s, y, e, t: (s, y, e[:-1], t), "enroll_speakers must give one speaker"),
        (lambda s, y, e, t: (s, y, e, t.astype(float)), "test_speakers must be strings"),
        (lambda s, y, e, t: (s, y, np.array([None, *e[1:]], dtype=object), t), "found None"),
        (lambda s, y, e, t: (s, y, e, t.astype(str)), "must both be strings or both"),
        (lambda s, y, e, t: (s, 1 - y, e, t), "trial 0 is labelled non-target"),
    ],
)
def test_bad_input_is_refused(change, message):
    sim, trials = speaker_trials(0)
    scores, labels, enroll, test = change(sim.scores_a, *trials)
    with pytest.raises(ValueError, match=message):
        eer_interval(scores, labels, enroll, test, resamples=5)


def test_a_resample_without_both_kinds_of_trial_is_left_out():
    """Two speakers, targets only from "a": a resample drawing "a" twice has no non-target and
    one drawing "b" twice has no target; with one resample such a draw leaves nothing."""
    labels = np.array([1, 1, 0, 0])
    enroll, test = np.array(["a", "a", "a", "b"]), np.array(["a", "a", "b", "a"])
    scores = np.array([0.9, 0.2, 0.4, 0.1])
    outcomes = []
    for seed in range(20):
        try:
            outcomes.append(eer_interval(scores, labels, enroll, test, resamples=1, seed=seed)[1])
        except ValueError as error:
            assert "no resample drew both" in str(error)
            outcomes.append(None)
    assert None in outcomes and 0.5 in outcomes
    assert eer_interval(scores, labels, enroll, test, resamples=200)[1:] == (0.5, 0.5)


@pytest.mark.parametrize(
    "option, message", [({"level": 1.0}, "level"), ({"resamples": 0}, "resamples")]
)
def test_bad_options_are_refused(option, message):
    sim, trials = speaker_trials(0)
    with pytest.raises(ValueError, match=message):
        eer_difference_interval(sim.scores_a, sim.scores_b, *trials, **option)


def test_metrics_serves_the_intervals():
    from svlab import metrics
    from svlab.metrics import intervals

    assert metrics.eer_interval is intervals.eer_interval
    assert metrics.format_difference is intervals.format_difference


def test_coverage_on_simulated_test_sets():
    """120 simulated test sets of 30 speakers x 8 utterances (840 target, 2,000 non-target
    trials), speaker and utterance effects shared by two systems that differ by a known shift.

    Binomial slack (n = 120): the speaker interval must cover the population EER 102-119 times
    (0.85-0.99). Its coverage measured on 200 other sets is 0.92 (percentile intervals from 30
    clusters run a little short of 95%); at a true 0.91 the count has mean 109.2 and sd 3.1, so
    102 is 2.3 sd below (about 1% one-sided), and at a true 0.95, 119 is 2.4 sd above. The
    trial-level bootstrap of the same scores must cover fewer than 88 times (0.73): measured at
    0.32-0.37, so 88 is over 10 sd away. The paired interval must cover at least 102 times; it
    may cover every time, because with the shared speaker effects cancelled what remains is
    per-trial noise, which the product weights of a crossed (enroll x test) bootstrap count
    about three times over (Owen 2007, the pigeonhole bootstrap): it is conservative, and must
    still be narrower than either system's own interval.
    """
    sets, resamples = 120, 200
    covered = {"speaker": 0, "trial": 0, "paired": 0}
    widths = {"a": [], "b": [], "paired": [], "trial": []}
    for k in range(sets):
        sim = simulate_trials(30, 8, nontarget_trials=2000, shift=0.3, seed=1000 + k)
        trials = sim.labels, sim.enroll_speakers, sim.test_speakers
        _, low, high = eer_interval(sim.scores_a, *trials, resamples=resamples, seed=k)
        covered["speaker"] += low <= sim.eer_a <= high
        widths["a"].append(high - low)
        _, low, high = eer_interval(sim.scores_b, *trials, resamples=resamples, seed=k)
        widths["b"].append(high - low)
        _, low, high = eer_difference_interval(
            sim.scores_a, sim.scores_b, *trials, resamples=resamples, seed=k
        )
        covered["paired"] += low <= sim.eer_b - sim.eer_a <= high
        widths["paired"].append(high - low)
        n = sim.labels.size  # the naive baseline: resample trials as if they were independent
        weights = np.random.default_rng(k).multinomial(n, np.full(n, 1.0 / n), size=resamples)
        low, high = np.quantile(weighted_eer(sim.scores_a, sim.labels, weights), [0.025, 0.975])
        covered["trial"] += low <= sim.eer_a <= high
        widths["trial"].append(high - low)
    assert 102 <= covered["speaker"] <= 119, covered
    assert covered["trial"] < 88, covered
    assert covered["paired"] >= 102, covered
    mean = {key: float(np.mean(value)) for key, value in widths.items()}
    assert mean["paired"] < min(mean["a"], mean["b"]), mean
    assert mean["trial"] < 0.5 * mean["a"], mean
