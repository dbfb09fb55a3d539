"""Tests for svlab.scorenorm against brute-force loops written from wespeaker's score_norm.py."""

import math
import statistics

import numpy as np
import pytest
import torch

from svlab.evaluate import EvalSet
from svlab.scorenorm import (
    as_norm_scores,
    backend_scores,
    cohort_statistics,
    mean_cosine_scores,
    speaker_means,
)


def cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def brute_as_norm(embeddings, pairs, cohort, top_n, mean):
    """One trial at a time: cosine of mean-subtracted vectors, each side's top-N cohort scores,
    their mean and population standard deviation, the symmetric normalised score."""
    sub = lambda v: [x - m for x, m in zip(v.tolist(), mean.tolist(), strict=True)]  # noqa: E731
    members = [sub(c) for c in cohort]

    def stats(v):
        top = sorted((cos(v, c) for c in members), reverse=True)[:top_n]
        return statistics.fmean(top), statistics.pstdev(top)

    out = []
    for a, b in pairs:
        ea, eb = sub(embeddings[a]), sub(embeddings[b])
        s = cos(ea, eb)
        (ma, da), (mb, db) = stats(ea), stats(eb)
        out.append(0.5 * ((s - ma) / da + (s - mb) / db))
    return np.array(out)


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    keys = [f"u{i}" for i in range(12)]
    embeddings = {k: torch.randn(6, generator=g) + 0.5 for k in keys}
    pairs = [(keys[i], keys[j]) for i in range(12) for j in range(i + 1, 12) if (i + j) % 3 == 0]
    cohort = torch.randn(40, 6, generator=g) + 0.5
    return embeddings, pairs, cohort


@pytest.mark.parametrize("top_n", [2, 7, 40])
def test_as_norm_matches_brute_force(data, top_n):
    embeddings, pairs, cohort = data
    mean = cohort.mean(dim=0)
    fast = as_norm_scores(embeddings, pairs, cohort, top_n, mean)
    np.testing.assert_allclose(
        fast, brute_as_norm(embeddings, pairs, cohort, top_n, mean), rtol=1e-9, atol=1e-9
    )
    no_mean = as_norm_scores(embeddings, pairs, cohort, top_n)
    np.testing.assert_allclose(
        no_mean, brute_as_norm(embeddings, pairs, cohort, top_n, torch.zeros(6)), atol=1e-9
    )
    assert not np.allclose(fast, no_mean)


def test_mean_cosine_matches_brute_force(data):
    embeddings, pairs, cohort = data
    mean = cohort.mean(dim=0)
    m = mean.tolist()
    sub = lambda v: [x - y for x, y in zip(v.tolist(), m, strict=True)]  # noqa: E731
    brute = [cos(sub(embeddings[a]), sub(embeddings[b])) for a, b in pairs]
    np.testing.assert_allclose(mean_cosine_scores(embeddings, pairs, mean), brute, atol=1e-12)
    np.testing.assert_allclose(backend_scores(embeddings, pairs, "mean", cohort), brute, atol=1e-12)


def test_cohort_statistics_are_population_statistics():
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    cohort = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [-1.0, 0.0]])
    means, stds = cohort_statistics(emb, cohort, top_n=3)
    top = sorted([1.0, math.sqrt(0.5), 0.0, -1.0], reverse=True)[:3]
    assert means.tolist() == pytest.approx([statistics.fmean(top)] * 2)
    assert stds.tolist() == pytest.approx([statistics.pstdev(top)] * 2)


def test_speaker_means_match_a_loop():
    g = torch.Generator().manual_seed(1)
    emb = torch.randn(7, 3, generator=g)
    speakers = ["s2", "s1", "s2", "s3", "s1", "s2", "s3"]
    expected = [
        torch.stack([emb[i] for i, s in enumerate(speakers) if s == name]).mean(dim=0)
        for name in sorted(set(speakers))
    ]
    assert torch.allclose(speaker_means(emb, speakers), torch.stack(expected))


def test_evalset_scores_with_a_backend(data):
    embeddings, pairs, cohort = data
    labels = np.array([i % 2 for i in range(len(pairs))])
    evalset = EvalSet(
        keys=list(embeddings), batches=[], means=torch.zeros(12, 80), pairs=pairs, labels=labels
    )
    result = evalset.score_embeddings(embeddings, "asnorm", cohort, top_n=5)
    expected = brute_as_norm(embeddings, pairs, cohort, 5, cohort.mean(dim=0))
    np.testing.assert_allclose(result["scores"], expected, atol=1e-9)
    assert 0.0 <= result["eer"] <= 1.0


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda e, p, c: as_norm_scores(e, p, c, top_n=41), "between 2 and the cohort size 40"),
        (lambda e, p, c: as_norm_scores(e, p, c, top_n=1), "between 2 and the cohort size"),
        (lambda e, p, c: backend_scores(e, p, "plda", c), "unknown back-end 'plda'"),
        (lambda e, p, c: backend_scores(e, p, "asnorm"), "needs cohort embeddings"),
        (lambda e, p, c: as_norm_scores(e, p, torch.ones(3, 6), 2), "'u0' scores the same"),
        (lambda e, p, c: speaker_means(c, ["a"]), "40 embeddings but 1 speaker labels"),
    ],
)
def test_bad_input(data, call, message):
    with pytest.raises(ValueError, match=message):
        call(*data)
