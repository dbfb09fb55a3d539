"""One-dimensional k-means: exact by dynamic programming (as Ckmeans.1d.dp), and a fast Lloyd."""

from __future__ import annotations

import numpy as np
import torch

EXACT_WORK = 2**16  # "auto" solves exactly while k * (distinct values, all rows) is at most this
HISTOGRAM_BINS = 2**10  # otherwise: exact on at most this many equal-count + equal-width bins ...
BINNED_WORK = 2**20  # ... and at most this k * (bins, all rows), then Lloyd on all values
LLOYD_MAX_ITER = 300
METHODS = ("auto", "dp", "lloyd")


def kmeans_1d(
    values: torch.Tensor | np.ndarray, k: int, method: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster scalar ``values`` into ``k`` groups; return sorted centroids and assignments.

    ``method``:

    - ``"dp"``: the optimal clustering (least sum of squared errors), by dynamic programming
      over the sorted distinct values, each weighted by its count. In one dimension every
      optimal cluster is a run of consecutive sorted values, so the best split of the first
      ``i`` values into ``m`` clusters extends a best split into ``m - 1``; the split points
      move right as ``i`` grows, which lets divide and conquer fill each of the ``k`` rows
      in O(n log n) (Ckmeans.1d.dp, Wang and Song 2011; Gronlund et al. 2017).
    - ``"lloyd"``: Lloyd's algorithm from quantile starting points. On sorted values each
      cluster is an interval, so an iteration is ``k`` binary searches and prefix-sum lookups.
    - ``"auto"``: ``"dp"`` while ``k`` times the number of distinct values is at most
      ``EXACT_WORK`` (a fraction of a second); otherwise ``"dp"`` on up to ``HISTOGRAM_BINS``
      equal-count plus as many equal-width bins (the tails keep bins of their own), refined by
      Lloyd on all values. Lloyd never raises the error, so the result is within bin resolution
      of the optimum (in tests, within 1e-4 of it and never worse than scikit-learn's KMeans).

    Returns ``(centroids, assignments)``: ``centroids`` a sorted tensor of ``k`` values (the
    dtype of ``values``), ``assignments`` an int64 tensor shaped like ``values`` holding the
    index of each value's nearest centroid.

    >>> c, a = kmeans_1d(torch.tensor([0.0, 0.1, 0.2, 5.0, 5.2, 9.0]), 3, method="dp")
    >>> [round(v, 2) for v in c.tolist()], a.tolist()
    ([0.1, 5.1, 9.0], [0, 0, 0, 1, 1, 2])
    """
    if method not in METHODS:
        raise ValueError(f"unknown k-means method {method!r}; choose one of {METHODS}")
    tensor = torch.as_tensor(values)
    if not tensor.is_floating_point():
        tensor = tensor.double()
    if tensor.numel() == 0:
        raise ValueError("kmeans_1d got no values")
    flat = tensor.detach().reshape(1, -1).cpu().double()
    check_finite(flat, "kmeans_1d values")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    distinct = int(torch.unique(flat).numel())
    if k > distinct:
        raise ValueError(f"k = {k} is larger than the number of distinct values ({distinct})")
    centroids = cluster_rows(flat, k, method)[0].to(tensor.dtype)
    return centroids, nearest(tensor.detach().cpu(), centroids)


def check_finite(values: torch.Tensor, what: str) -> None:
    """Raise ``ValueError`` naming ``what`` if ``values`` holds NaN or infinity.

    >>> check_finite(torch.tensor([1.0, float("nan")]), "layer1.weight")
    Traceback (most recent call last):
    ...
    ValueError: layer1.weight holds 1 NaN / infinite value(s), e.g. at flat index 1
    """
    bad = ~torch.isfinite(values)
    if bool(bad.any()):
        first = int(bad.reshape(-1).nonzero()[0])
        raise ValueError(
            f"{what} holds {int(bad.sum())} NaN / infinite value(s), e.g. at flat index {first}"
        )


def nearest(values: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest of the sorted ``centroids`` for each of ``values`` (int64).

    >>> nearest(torch.tensor([-1.0, 0.4, 0.6, 3.0]), torch.tensor([0.0, 1.0])).tolist()
    [0, 0, 1, 1]
    """
    midpoints = (centroids[1:] + centroids[:-1]) / 2
    return torch.searchsorted(midpoints.contiguous(), values.contiguous().to(midpoints.dtype))


def sse(values: torch.Tensor, centroids: torch.Tensor) -> float:
    """Sum of squared distances from each value to its nearest centroid (in float64).

    >>> sse(torch.tensor([0.0, 1.0, 4.0]), torch.tensor([0.5, 4.0]))
    0.5
    """
    values = torch.as_tensor(values).detach().reshape(-1).cpu().double()
    centroids = torch.as_tensor(centroids).detach().cpu().double().sort().values
    return float(((values - centroids[nearest(values, centroids)]) ** 2).sum())


def cluster_rows(rows: torch.Tensor, k: int, method: str = "auto") -> torch.Tensor:
    """Sorted centroids ``[R, k]`` (float64) of each row of ``rows`` ``[R, m]``, solved together.

    A row with at most ``k`` distinct values gets them all as centroids, the last one repeated
    to fill ``k`` slots (a quantizer with duplicate levels is still exact on such a row).

    >>> rows = torch.tensor([[0.0, 0.0, 1.0, 9.0], [2.0, 2.0, 2.0, 2.0]])
    >>> cluster_rows(rows, 2).round(decimals=4).tolist()
    [[0.3333, 9.0], [2.0, 2.0]]
    """
    if method not in METHODS:
        raise ValueError(f"unknown k-means method {method!r}; choose one of {METHODS}")
    data = np.sort(rows.detach().cpu().double().numpy(), axis=1)
    n_rows, m = data.shape
    is_new = np.ones_like(data, dtype=bool)
    is_new[:, 1:] = data[:, 1:] != data[:, :-1]
    n_distinct = is_new.sum(axis=1)
    centroids = np.empty((n_rows, k))
    few = n_distinct <= k
    for r in np.flatnonzero(few):
        distinct = data[r][is_new[r]]
        centroids[r] = np.concatenate([distinct, np.full(k - distinct.size, distinct[-1])])
    many = np.flatnonzero(~few)
    if many.size:
        centroids[many] = _cluster_many(data[many], is_new[many], n_distinct[many], k, method)
    return torch.from_numpy(centroids)


def weighted_cluster_rows(rows: torch.Tensor, weights: torch.Tensor, k: int) -> torch.Tensor:
    """Sorted centroids ``[R, k]`` (float64) minimising each row's *weighted* squared error
    ``sum_j weights[r, j] * (rows[r, j] - c)**2``, solved exactly by the same dynamic program.

    Weights must be non-negative and finite; a row whose weights are all zero is clustered
    unweighted. Each weight is floored at 1e-9 of its row's mean, so every value still counts a
    little (a centroid is never left without mass). Rows with at most ``k`` distinct values get
    them all, as in :func:`cluster_rows`.

    >>> rows = torch.tensor([[0.0, 1.0, 2.0, 10.0]])
    >>> weighted_cluster_rows(rows, torch.tensor([[1.0, 1.0, 1.0, 1.0]]), 2).tolist()
    [[1.0, 10.0]]
    >>> weighted_cluster_rows(rows, torch.tensor([[1.0, 1.0, 100.0, 1.0]]), 2).round(
    ...     decimals=3).tolist()
    [[1.971, 10.0]]
    """
    if rows.shape != weights.shape or rows.dim() != 2:
        raise ValueError(f"rows {list(rows.shape)} and weights {list(weights.shape)} must be "
                         "two-dimensional and of one shape")  # fmt: skip
    check_finite(weights, "k-means weights")
    if bool((weights < 0).any()):
        raise ValueError("k-means weights must be non-negative")
    data = rows.detach().cpu().double().numpy()
    mass = weights.detach().cpu().double().numpy()
    order = np.argsort(data, axis=1, kind="stable")
    data, mass = np.take_along_axis(data, order, 1), np.take_along_axis(mass, order, 1)
    mean = mass.mean(axis=1, keepdims=True)
    mass = np.where(mean > 0, np.maximum(mass, 1e-9 * mean), 1.0)
    is_new = np.ones_like(data, dtype=bool)
    is_new[:, 1:] = data[:, 1:] != data[:, :-1]
    few = is_new.sum(axis=1) <= k
    centroids = cluster_rows(rows[torch.from_numpy(few)], k) if few.any() else None
    result = np.empty((data.shape[0], k))
    if centroids is not None:
        result[few] = centroids.numpy()
    many = np.flatnonzero(~few)
    if many.size:
        offsets = np.arange(many.size + 1) * data.shape[1]
        result[many] = _dp(data[many].reshape(-1), mass[many].reshape(-1), offsets, k)
    return torch.from_numpy(result)


def _cluster_many(
    data: np.ndarray, is_new: np.ndarray, n_distinct: np.ndarray, k: int, method: str
) -> np.ndarray:
    """Centroids of sorted rows that each have more than ``k`` distinct values.

    "auto" with too many values for the exact solution, and too many rows to give each at
    least ``2 k`` bins within ``BINNED_WORK`` (e.g. per-row 8-bit codebooks of a large layer),
    falls back to Lloyd from quantile starting points.
    """
    n_rows = data.shape[0]
    bins = min(HISTOGRAM_BINS, BINNED_WORK // (2 * k * n_rows))
    exact = method == "dp" or k * int(n_distinct.sum()) <= EXACT_WORK
    if method == "lloyd" or (not exact and bins < 2 * k):
        start = np.quantile(data, (np.arange(k) + 0.5) / k, axis=1).T
        return _lloyd(data, start)
    if exact:
        return _dp(*_distinct_with_counts(data, is_new), k)
    return _lloyd(data, _dp(*_bins(data, bins), k))


def _distinct_with_counts(
    data: np.ndarray, is_new: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Concatenated distinct values of each sorted row, their counts, and row offsets."""
    flat_new = is_new.reshape(-1)
    starts = np.flatnonzero(flat_new)
    counts = np.diff(np.append(starts, flat_new.size)).astype(np.float64)
    offsets = np.concatenate([[0], np.cumsum(is_new.sum(axis=1))])
    return data.reshape(-1)[starts], counts, offsets


def _bins(data: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each sorted row summarised by the means and counts of equal-count and equal-width bins."""
    n_rows, m = data.shape
    points, weights, offsets = [], [], [0]
    for row in data:
        by_count = np.linspace(0, m, n_bins + 1).astype(np.int64)
        by_width = np.searchsorted(row, np.linspace(row[0], row[-1], n_bins + 1), side="left")
        cuts = np.unique(np.concatenate([by_count, by_width, [m]]))
        cuts = cuts[cuts < m]
        counts = np.diff(np.append(cuts, m)).astype(np.float64)
        points.append(np.add.reduceat(row, cuts) / counts)
        weights.append(counts)
        offsets.append(offsets[-1] + cuts.size)
    return np.concatenate(points), np.concatenate(weights), np.asarray(offsets)


def _dp(points: np.ndarray, weights: np.ndarray, offsets: np.ndarray, k: int) -> np.ndarray:
    """Optimal k-means of each row's sorted weighted points (row r: offsets[r]:offsets[r+1]).

    ``cost[m][i]`` is the least error of ``m + 1`` clusters over a row's points up to ``i``;
    ``start[m][i]`` the first point of the last of them. Every row has more than ``k`` points.
    All rows and all pending divide-and-conquer intervals are evaluated at once, level by level.
    """
    n_rows = offsets.size - 1
    row_of = np.repeat(np.arange(n_rows), np.diff(offsets))
    centred = points - np.repeat(
        np.add.reduceat(points * weights, offsets[:-1]) / np.add.reduceat(weights, offsets[:-1]),
        np.diff(offsets),
    )
    w0 = np.concatenate([[0.0], np.cumsum(weights)])
    w1 = np.concatenate([[0.0], np.cumsum(weights * centred)])
    w2 = np.concatenate([[0.0], np.cumsum(weights * centred**2)])

    def error(first: np.ndarray, last: np.ndarray) -> np.ndarray:
        count = w0[last + 1] - w0[first]
        total = w1[last + 1] - w1[first]
        return np.maximum(w2[last + 1] - w2[first] - total * total / count, 0.0)

    row_start = offsets[:-1][row_of]
    cost = error(row_start, np.arange(points.size))
    start = np.zeros((k, points.size), dtype=np.int64)
    start[0] = row_start
    first_of_row, last_of_row = offsets[:-1], offsets[1:] - 1
    for m in range(1, k):
        new_cost = np.full(points.size, np.inf)
        lo, hi = first_of_row + m, last_of_row.copy()
        opt_lo, opt_hi = first_of_row + m, last_of_row.copy()
        while lo.size:
            mid = (lo + hi) // 2
            top = np.minimum(mid, opt_hi)
            counts = top - opt_lo + 1
            seg = np.repeat(np.arange(lo.size), counts)
            seg_start = np.cumsum(counts) - counts
            first = opt_lo[seg] + np.arange(seg.size) - seg_start[seg]
            candidate = cost[first - 1] + error(first, mid[seg])
            best_value = np.minimum.reduceat(candidate, seg_start)
            hits = np.flatnonzero(candidate <= best_value[seg])
            leftmost = hits[np.concatenate([[True], seg[hits][1:] != seg[hits][:-1]])]
            best = first[leftmost]
            new_cost[mid] = best_value
            start[m, mid] = best
            left, right = lo <= mid - 1, mid + 1 <= hi
            lo = np.concatenate([lo[left], mid[right] + 1])
            hi = np.concatenate([mid[left] - 1, hi[right]])
            opt_lo, opt_hi = (
                np.concatenate([opt_lo[left], best[right]]),
                np.concatenate([best[left], opt_hi[right]]),
            )
        cost = new_cost
    centroids = np.empty((n_rows, k))
    last = last_of_row.copy()
    for m in range(k - 1, -1, -1):
        first = start[m, last]
        centroids[:, m] = (w1[last + 1] - w1[first]) / (w0[last + 1] - w0[first])
        last = first - 1
    return centroids + (points[offsets[:-1]] - centred[offsets[:-1]])[:, None]


def _lloyd(data: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Lloyd's iterations on sorted rows ``[R, m]`` from sorted ``centroids`` ``[R, k]``."""
    rows = torch.from_numpy(np.ascontiguousarray(data))
    n_rows, m = rows.shape
    prefix = torch.cat([torch.zeros(n_rows, 1, dtype=rows.dtype), rows.cumsum(1)], dim=1)
    centroids = torch.from_numpy(centroids).sort(dim=1).values
    previous = None
    for _ in range(LLOYD_MAX_ITER):
        midpoints = (centroids[:, 1:] + centroids[:, :-1]) / 2
        cuts = torch.searchsorted(rows, midpoints.contiguous())
        edges = torch.cat(
            [torch.zeros(n_rows, 1, dtype=cuts.dtype), cuts, torch.full((n_rows, 1), m)], dim=1
        )
        if previous is not None and torch.equal(edges, previous):
            break
        previous = edges
        counts = edges.diff(dim=1)
        sums = prefix.gather(1, edges).diff(dim=1)
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
        centroids = centroids.sort(dim=1).values
    return centroids.numpy()
