"""Score back-ends as wespeaker publishes them: cosine after subtracting a cohort mean, AS-norm."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch

from svlab.metrics import cosine_scores

BACKENDS = ("cosine", "mean", "asnorm")


def speaker_means(embeddings: torch.Tensor, speakers: Sequence[str]) -> torch.Tensor:
    """One mean embedding per speaker (in sorted speaker order): wespeaker's AS-norm cohort.

    >>> speaker_means(torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]]), ["b", "b", "a"])
    tensor([[0., 2.],
            [2., 0.]])
    """
    if len(speakers) != len(embeddings):
        raise ValueError(f"{len(embeddings)} embeddings but {len(speakers)} speaker labels")
    names = sorted(set(speakers))
    index = torch.tensor([names.index(s) for s in speakers])
    sums = torch.zeros(len(names), embeddings.shape[1], dtype=embeddings.dtype)
    sums.index_add_(0, index, embeddings)
    return sums / torch.bincount(index, minlength=len(names)).unsqueeze(1).to(embeddings.dtype)


def mean_cosine_scores(
    embeddings: Mapping[str, torch.Tensor], pairs: Iterable[tuple[str, str]], mean: torch.Tensor
) -> np.ndarray:
    """Cosine scores after subtracting ``mean`` (wespeaker: the mean embedding of VoxCeleb2-dev)
    from every embedding: the back-end of wespeaker's published "cosine" EERs.

    >>> emb = {"a": torch.tensor([2.0, 1.0]), "b": torch.tensor([1.0, 2.0])}
    >>> mean_cosine_scores(emb, [("a", "b")], torch.tensor([1.0, 1.0])).round(4).tolist()
    [0.0]
    """
    mean = mean.double()
    return cosine_scores({key: value.double() - mean for key, value in embeddings.items()}, pairs)


def cohort_statistics(
    embeddings: torch.Tensor, cohort: torch.Tensor, top_n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (population) standard deviation of each embedding's ``top_n`` highest cosine
    scores against the cohort.

    >>> emb = torch.tensor([[1.0, 0.0]])
    >>> cohort = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    >>> cohort_statistics(emb, cohort, top_n=2)
    (tensor([0.5000], dtype=torch.float64), tensor([0.5000], dtype=torch.float64))
    """
    if not 2 <= top_n <= len(cohort):
        raise ValueError(f"top_n must be between 2 and the cohort size {len(cohort)}, got {top_n}")
    a = torch.nn.functional.normalize(embeddings.double(), dim=1)
    b = torch.nn.functional.normalize(cohort.double(), dim=1)
    top = (a @ b.T).topk(top_n, dim=1).values
    return top.mean(dim=1), top.std(dim=1, correction=0)


def as_norm_scores(
    embeddings: Mapping[str, torch.Tensor],
    pairs: Iterable[tuple[str, str]],
    cohort: torch.Tensor,
    top_n: int = 300,
    mean: torch.Tensor | None = None,
) -> np.ndarray:
    """Adaptive symmetric score normalisation (AS-norm), as wespeaker's ``score_norm.py``.

    With ``mean`` subtracted from every embedding and cohort member, a trial's cosine score
    ``s`` becomes ``((s - m_e) / d_e + (s - m_t) / d_t) / 2``, where ``m``, ``d`` are the
    mean and population standard deviation of the enrolment's (``e``) and the test's (``t``)
    ``top_n`` highest cosine scores against the cohort (wespeaker: per-speaker mean
    embeddings of VoxCeleb2-dev, ``top_n`` 300).

    >>> emb = {"a": torch.tensor([1.0, 0.1]), "b": torch.tensor([0.9, 0.3])}
    >>> cohort = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.5], [0.5, 0.5]])
    >>> as_norm_scores(emb, [("a", "b")], cohort, top_n=3).round(4).tolist()
    [0.9095]
    """
    pairs = list(pairs)
    embeddings = {key: value.double() for key, value in embeddings.items()}
    cohort = cohort.double()
    if mean is not None:
        embeddings = {key: value - mean.double() for key, value in embeddings.items()}
        cohort = cohort - mean.double()
    keys = sorted({key for pair in pairs for key in pair})
    raw = cosine_scores(embeddings, pairs)
    means, stds = cohort_statistics(torch.stack([embeddings[k] for k in keys]), cohort, top_n)
    flat = [k for k, d in zip(keys, stds.tolist(), strict=True) if d == 0.0]
    if flat:
        raise ValueError(f"{flat[0]!r} scores the same against its top {top_n} cohort members")
    index = {key: i for i, key in enumerate(keys)}
    e = torch.tensor([index[a] for a, _ in pairs], dtype=torch.long)
    t = torch.tensor([index[b] for _, b in pairs], dtype=torch.long)
    s = torch.from_numpy(raw)
    return (0.5 * ((s - means[e]) / stds[e] + (s - means[t]) / stds[t])).numpy()


def backend_scores(
    embeddings: Mapping[str, torch.Tensor],
    pairs: Iterable[tuple[str, str]],
    backend: str = "cosine",
    cohort: torch.Tensor | None = None,
    top_n: int = 300,
    mean: torch.Tensor | None = None,
) -> np.ndarray:
    """Scores by the back-end named ``backend``: ``"cosine"`` (plain), ``"mean"`` (cosine after
    subtracting ``mean``, by default the cohort's mean embedding) or ``"asnorm"`` (that, then
    AS-norm against the cohort's ``top_n`` nearest); ``cohort`` is ``[N, D]`` for the latter
    two.

    >>> emb = {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([1.0, 1.0])}
    >>> backend_scores(emb, [("a", "b")]).round(4).tolist()
    [0.7071]
    >>> backend_scores(emb, [("a", "b")], "mean")
    Traceback (most recent call last):
    ...
    ValueError: back-end 'mean' needs cohort embeddings
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown back-end {backend!r}; choose one of {BACKENDS}")
    if backend == "cosine":
        return cosine_scores(embeddings, pairs)
    if cohort is None or len(cohort) == 0:
        raise ValueError(f"back-end {backend!r} needs cohort embeddings")
    mean = cohort.mean(dim=0) if mean is None else mean
    if backend == "mean":
        return mean_cosine_scores(embeddings, pairs, mean)
    return as_norm_scores(embeddings, pairs, cohort, top_n, mean)
