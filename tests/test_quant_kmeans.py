"""1-D k-means: optimal against brute force and a plain O(k n^2) DP, never worse than sklearn."""

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans

from svlab.models import build
from svlab.quant import kmeans_1d, sse
from svlab.quant.kmeans import cluster_rows

torch.set_num_threads(1)
CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"


def brute_force_sse(x: np.ndarray, k: int) -> float:
    """Least SSE over every split of the sorted values into k runs."""
    xs = np.sort(x)
    best = np.inf
    for cuts in itertools.combinations(range(1, len(xs)), k - 1):
        bounds = [0, *cuts, len(xs)]
        parts = [xs[a:b] for a, b in itertools.pairwise(bounds)]
        best = min(best, sum(((p - p.mean()) ** 2).sum() for p in parts))
    return best


def quadratic_dp_sse(x: np.ndarray, k: int) -> float:
    """The textbook O(k n^2) recurrence on sorted values, without any speed-up."""
    xs = np.sort(x)
    n = len(xs)
    s1 = np.concatenate([[0], np.cumsum(xs)])
    s2 = np.concatenate([[0], np.cumsum(xs**2)])

    def cost(j, i):  # values j..i-1
        return s2[i] - s2[j] - (s1[i] - s1[j]) ** 2 / (i - j)

    d = np.array([cost(0, i) if i else 0.0 for i in range(n + 1)])
    for m in range(2, k + 1):
        new = np.full(n + 1, np.inf)
        for i in range(m, n + 1):
            new[i] = min(d[j] + cost(j, i) for j in range(m - 1, i))
        d = new
    return float(d[n])


def sklearn_sse(x: np.ndarray, k: int) -> float:
    return float(KMeans(n_clusters=k, random_state=0).fit(x.reshape(-1, 1)).inertia_)


def test_dp_is_optimal_against_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(40):
        n, k = int(rng.integers(4, 11)), int(rng.integers(1, 5))
        x = np.round(rng.standard_t(2, n), 1)  # ties included
        if len(np.unique(x)) < k:
            continue
        centroids, assignments = kmeans_1d(torch.tensor(x), k, method="dp")
        assert sse(torch.tensor(x), centroids) == pytest.approx(brute_force_sse(x, k), abs=1e-9)
        assert assignments.shape == (n,) and int(assignments.max()) < k


def test_dp_matches_the_quadratic_recurrence_on_heavy_tailed_data():
    rng = np.random.default_rng(1)
    for k in (2, 5, 16):
        x = rng.standard_t(2, 300) * 0.1
        centroids, _ = kmeans_1d(torch.tensor(x), k, method="dp")
        assert sse(torch.tensor(x), centroids) == pytest.approx(quadratic_dp_sse(x, k), rel=1e-9)


def _real_layers() -> list[tuple[str, np.ndarray]]:
    """Layer weights of a registry model, and of a trained tutorial checkpoint when one exists."""
    torch.manual_seed(0)
    model = build("ecapa_c512", channels=64)
    weights = [(n, p) for n, p in model.named_parameters() if p.dim() > 1][:2]
    for path in sorted(CHECKPOINTS.glob("tutorial_*.pt"))[:1]:
        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
        weights += [(f"{path.name}:{k}", v) for k, v in state.items() if v.dim() > 1][:2]
    return [(n, w.detach().double().reshape(-1).numpy()) for n, w in weights]


@pytest.mark.parametrize("bits", [2, 4])
def test_never_worse_than_sklearn_on_real_and_heavy_tailed_weights(bits):
    rng = np.random.default_rng(2)
    data = _real_layers() + [
        ("student-t(3)", rng.standard_t(3, 5000) * 0.05),
        ("outliers", np.concatenate([rng.normal(0, 1.4, 4000), [60.0, -45.0, 30.0]])),
    ]
    for name, x in data:
        ours = sse(torch.tensor(x), kmeans_1d(torch.tensor(x), 2**bits)[0])
        assert ours <= sklearn_sse(x, 2**bits) * (1 + 1e-9), name


def test_auto_on_a_large_layer_is_near_optimal_and_beats_sklearn():
    rng = np.random.default_rng(3)
    x = rng.standard_t(3, 20_000) * 0.05  # more distinct values than "auto" solves exactly
    exact = sse(torch.tensor(x), kmeans_1d(torch.tensor(x), 16, method="dp")[0])
    auto = sse(torch.tensor(x), kmeans_1d(torch.tensor(x), 16, method="auto")[0])
    lloyd = sse(torch.tensor(x), kmeans_1d(torch.tensor(x), 16, method="lloyd")[0])
    assert exact <= auto <= exact * (1 + 1e-4)
    assert exact <= lloyd
    assert auto <= sklearn_sse(x, 16)


def test_assignments_are_nearest_centroids_in_the_input_dtype():
    x = torch.randn(1000)
    centroids, assignments = kmeans_1d(x, 8)
    assert centroids.dtype == torch.float32 and assignments.dtype == torch.int64
    assert torch.equal(centroids, centroids.sort().values)
    distance = (x[:, None] - centroids[None, :]).abs()
    assert torch.equal(distance.gather(1, assignments[:, None])[:, 0], distance.min(1).values)


def test_rows_are_clustered_independently():
    torch.manual_seed(0)
    rows = torch.randn(5, 200) * torch.arange(1, 6)[:, None]
    together = cluster_rows(rows, 4, "dp")
    for r in range(5):
        alone = kmeans_1d(rows[r].double(), 4, method="dp")[0]
        torch.testing.assert_close(together[r], alone)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="k = 4 is larger than the number of distinct values"):
        kmeans_1d(torch.tensor([1.0, 1.0, 2.0, 3.0]), 4)
    with pytest.raises(ValueError, match="NaN"):
        kmeans_1d(torch.tensor([1.0, float("nan"), 2.0]), 2)
    with pytest.raises(ValueError, match="positive integer"):
        kmeans_1d(torch.tensor([1.0, 2.0]), 0)
    with pytest.raises(ValueError, match="unknown k-means method"):
        kmeans_1d(torch.tensor([1.0, 2.0]), 1, method="kmeans++")
    with pytest.raises(ValueError, match="no values"):
        kmeans_1d(torch.tensor([]), 1)
