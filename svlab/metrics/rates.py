"""Verification metrics: EER, minDCF and the DET curve from one sort, plus cosine scoring."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import torch


def _check(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if scores.shape != labels.shape:
        raise ValueError(f"{scores.size} scores but {labels.size} labels")
    if scores.size == 0:
        raise ValueError("no trials to score")
    if not np.isin(labels, (0, 1)).all():
        bad = labels[~np.isin(labels, (0, 1))][0]
        raise ValueError(f"labels must be 0 (non-target) or 1 (target), found {bad!r}")
    labels = labels.astype(bool)
    if labels.all() or not labels.any():
        kind = "target" if labels.all() else "non-target"
        raise ValueError(f"all {labels.size} trials are {kind}: need both kinds for EER/minDCF")
    bad = ~np.isfinite(scores)
    if bad.any():
        raise ValueError(
            f"{int(bad.sum())} scores are NaN or infinite (first at trial {int(np.argmax(bad))})"
        )
    return scores, labels


def error_rates(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Miss and false-alarm rates at every distinct threshold, from a single sort.

    A trial is accepted when its score is ``>= threshold``. The thresholds are the distinct
    scores in increasing order followed by ``+inf`` (accept nothing), so ``frr`` rises from 0
    to 1 and ``far`` falls from 1 to 0. Time O(n log n), memory O(n): no thresholds x trials
    matrix.

    >>> frr, far, thr = error_rates([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    >>> frr.tolist(), far.tolist(), thr.tolist()
    ([0.0, 0.0, 0.5, 0.5, 1.0], [1.0, 0.5, 0.5, 0.0, 0.0], [0.1, 0.35, 0.4, 0.8, inf])
    """
    scores, labels = _check(scores, labels)
    order = np.argsort(scores, kind="stable")
    sorted_scores, sorted_labels = scores[order], labels[order]
    n_target = int(sorted_labels.sum())
    n_nontarget = sorted_labels.size - n_target
    thresholds, first = np.unique(sorted_scores, return_index=True)
    targets_below = np.concatenate(([0], np.cumsum(sorted_labels)))[first]
    nontargets_below = first - targets_below
    frr = np.append(targets_below / n_target, 1.0)
    far = np.append((n_nontarget - nontargets_below) / n_nontarget, 0.0)
    return frr, far, np.append(thresholds, np.inf)


def eer(scores, labels) -> tuple[float, float]:
    """Equal error rate and its threshold, interpolated where miss and false-alarm rates cross.

    >>> eer([0.1, 0.2, 0.3, 0.9], [0, 1, 0, 1])
    (0.5, 0.3)
    >>> eer([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1])[0]
    0.0
    """
    frr, far, thresholds = error_rates(scores, labels)
    rate, i, alpha = _eer_crossing(frr, far)
    i, alpha = int(i), float(alpha)
    if np.isinf(thresholds[i]):
        threshold = thresholds[i - 1]
    else:
        threshold = thresholds[i - 1] + alpha * (thresholds[i] - thresholds[i - 1])
    return float(rate), float(threshold)


def _eer_crossing(frr: np.ndarray, far: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EER, crossing index and interpolation weight along the last axis of rate curves.

    The first threshold ``i`` where ``frr >= far``; ``i >= 1`` because ``far[0] == 1 > frr[0]``.
    Works on one curve ``[T]`` or a batch ``[R, T]`` (the weighted curves of
    :mod:`svlab.metrics.intervals`).
    """
    i = np.argmax(frr >= far, axis=-1)[..., None]
    frr_before, frr_at = np.take_along_axis(frr, i - 1, -1), np.take_along_axis(frr, i, -1)
    gap_before = np.take_along_axis(far, i - 1, -1) - frr_before
    gap_after = np.take_along_axis(far, i, -1) - frr_at
    alpha = gap_before / (gap_before - gap_after)
    rate = frr_before + alpha * (frr_at - frr_before)
    return rate[..., 0], i[..., 0], alpha[..., 0]


def _detection_cost(frr, far, p_target: float, c_miss: float, c_fa: float) -> np.ndarray:
    """Normalized detection cost at every threshold of rate curves ``[T]`` or ``[R, T]``."""
    if not 0.0 < p_target < 1.0:
        raise ValueError(f"p_target must lie in (0, 1), got {p_target}")
    cost = c_miss * p_target * frr + c_fa * (1.0 - p_target) * far
    return cost / min(c_miss * p_target, c_fa * (1.0 - p_target))


def min_dcf(
    scores, labels, p_target: float = 0.01, c_miss: float = 1.0, c_fa: float = 1.0
) -> tuple[float, float]:
    """Minimum normalized detection cost and the threshold that reaches it.

    ``DCF = c_miss * p_target * P_miss + c_fa * (1 - p_target) * P_fa``, divided by the cost
    of the best trivial system, ``min(c_miss * p_target, c_fa * (1 - p_target))``.

    >>> min_dcf([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1])
    (0.0, 0.8)
    """
    frr, far, thresholds = error_rates(scores, labels)
    cost = _detection_cost(frr, far, p_target, c_miss, c_fa)
    best = int(np.argmin(cost))
    return float(cost[best]), float(thresholds[best])


def verification_result(scores, labels) -> dict:
    """What an evaluation reports for scored trials: ``eer``, ``min_dcf`` (p_target 0.01),
    and the ``scores`` and ``labels`` themselves.

    >>> result = verification_result(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1]))
    >>> result["eer"], result["min_dcf"]
    (0.0, 0.0)
    """
    return {
        "eer": eer(scores, labels)[0],
        "min_dcf": min_dcf(scores, labels, p_target=0.01)[0],
        "scores": scores,
        "labels": labels,
    }


def det_curve(scores, labels, max_points: int | None = 2000) -> tuple[np.ndarray, np.ndarray]:
    """False-alarm and miss rates along the threshold sweep, thinned to ``max_points`` for plots.

    >>> far, frr = det_curve([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    >>> far.tolist(), frr.tolist()
    ([1.0, 0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5, 1.0])
    """
    frr, far, _ = error_rates(scores, labels)
    if max_points is not None and frr.size > max_points:
        keep = np.unique(np.linspace(0, frr.size - 1, max_points).round().astype(int))
        frr, far = frr[keep], far[keep]
    return far, frr


def cosine_scores(
    embeddings: Mapping[str, torch.Tensor], pairs: Iterable[tuple[str, str]]
) -> np.ndarray:
    """Cosine similarity of each (enroll, test) pair of utterance keys.

    >>> emb = {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([1.0, 1.0])}
    >>> cosine_scores(emb, [("a", "b"), ("a", "a")]).round(4).tolist()
    [0.7071, 1.0]
    """
    pairs = list(pairs)
    keys = sorted({key for pair in pairs for key in pair})
    missing = [key for key in keys if key not in embeddings]
    if missing:
        raise ValueError(f"no embedding for {len(missing)} trial utterances, e.g. {missing[0]!r}")
    index = {key: i for i, key in enumerate(keys)}
    matrix = torch.stack([embeddings[key].reshape(-1).double() for key in keys])
    matrix = torch.nn.functional.normalize(matrix, dim=1)
    enroll = torch.tensor([index[a] for a, _ in pairs], dtype=torch.long)
    test = torch.tensor([index[b] for _, b in pairs], dtype=torch.long)
    return (matrix[enroll] * matrix[test]).sum(dim=1).numpy()
