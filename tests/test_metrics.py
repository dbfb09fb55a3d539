"""EER, minDCF and DET against brute-force and scikit-learn computations."""

import tracemalloc

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_curve

from svlab.metrics import cosine_scores, det_curve, eer, error_rates, min_dcf


def brute_force_rates(scores, labels):
    """Sweep every candidate threshold and count by hand: O(thresholds x trials)."""
    thresholds = np.append(np.unique(scores), np.inf)
    targets, nontargets = scores[labels == 1], scores[labels == 0]
    frr = np.array([(targets < t).mean() for t in thresholds])
    far = np.array([(nontargets >= t).mean() for t in thresholds])
    return frr, far, thresholds


def random_trials(seed, n, ties):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    labels[:2] = [0, 1]
    scores = rng.normal(labels * 1.5, 1.0)
    if ties:
        scores = np.round(scores, 1)
    return scores, labels


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("ties", [False, True])
def test_rates_match_brute_force(seed, ties):
    scores, labels = random_trials(seed, 300, ties)
    expected = brute_force_rates(scores, labels)
    for fast, slow in zip(error_rates(scores, labels), expected, strict=True):
        np.testing.assert_allclose(fast, slow)


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("ties", [False, True])
def test_min_dcf_matches_brute_force(seed, ties):
    scores, labels = random_trials(seed, 300, ties)
    frr, far, _ = brute_force_rates(scores, labels)
    for p_target in (0.01, 0.05):
        cost = (p_target * frr + (1 - p_target) * far) / p_target
        assert min_dcf(scores, labels, p_target)[0] == pytest.approx(cost.min())


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("ties", [False, True])
def test_eer_matches_sklearn_roc(seed, ties):
    scores, labels = random_trials(seed, 500, ties)
    fpr, tpr, _ = roc_curve(labels, scores)
    fnr = 1 - tpr
    i = int(np.argmax(fnr <= fpr))  # roc_curve sweeps thresholds downward
    a, b = fpr[i - 1] - fnr[i - 1], fpr[i] - fnr[i]
    alpha = a / (a - b)
    expected = fnr[i - 1] + alpha * (fnr[i] - fnr[i - 1])
    assert eer(scores, labels)[0] == pytest.approx(expected, abs=1e-12)


def test_eer_threshold_separates_at_that_rate():
    scores, labels = random_trials(0, 20000, ties=False)
    rate, threshold = eer(scores, labels)
    frr = (scores[labels == 1] < threshold).mean()
    far = (scores[labels == 0] >= threshold).mean()
    assert frr == pytest.approx(rate, abs=2e-3) and far == pytest.approx(rate, abs=2e-3)


def test_perfect_and_inverted_systems():
    assert eer([0.0, 1.0], [0, 1])[0] == 0.0
    assert eer([1.0, 0.0], [0, 1])[0] == 1.0
    assert min_dcf([1.0, 0.0], [0, 1])[0] == pytest.approx(1.0)


def test_ten_million_trials_in_linear_memory():
    scores, labels = random_trials(1, 10_000_000, ties=False)
    tracemalloc.start()
    rate, _ = eer(scores, labels)
    cost, _ = min_dcf(scores, labels)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert 0.2 < rate < 0.3 and 0 < cost <= 1
    assert peak < 60 * scores.nbytes  # a thresholds x trials matrix would need ~1e7 times more


@pytest.mark.parametrize(
    "scores, labels, message",
    [
        ([0.1, np.nan], [0, 1], "NaN or infinite"),
        ([0.1, np.inf], [0, 1], "NaN or infinite"),
        ([0.1, 0.2], [1, 1], "all 2 trials are target"),
        ([0.1, 0.2], [0, 0], "all 2 trials are non-target"),
        ([0.1, 0.2], [0, 2], "labels must be 0"),
        ([0.1], [0, 1], "1 scores but 2 labels"),
        ([], [], "no trials"),
    ],
)
def test_bad_input_is_named(scores, labels, message):
    with pytest.raises(ValueError, match=message):
        eer(scores, labels)


def test_det_curve_is_monotone_and_thinned():
    scores, labels = random_trials(3, 50000, ties=False)
    far, frr = det_curve(scores, labels, max_points=500)
    assert len(far) <= 500
    assert (np.diff(far) <= 0).all() and (np.diff(frr) >= 0).all()


def test_cosine_scores_match_torch_and_name_missing_keys():
    g = torch.Generator().manual_seed(0)
    emb = {f"u{i}": torch.randn(16, generator=g) for i in range(5)}
    pairs = [("u0", "u1"), ("u2", "u4"), ("u3", "u3")]
    expected = [torch.cosine_similarity(emb[a], emb[b], dim=0).item() for a, b in pairs]
    np.testing.assert_allclose(cosine_scores(emb, pairs), expected, atol=1e-6)
    with pytest.raises(ValueError, match="u9"):
        cosine_scores(emb, [("u0", "u9")])
