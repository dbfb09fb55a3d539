"""Layer-wise sensitivity against a hand-made one-layer quantization; size targets are met."""

import copy

import pytest
import torch
from torch import nn

from svlab.quant import kmeans_1d, quantize_model
from svlab.quant.packed import model_size
from svlab.quant.sensitivity import (
    embedding_drift,
    keep_precise,
    layer_sensitivity,
    plot_sensitivity,
)

torch.set_num_threads(1)


def _setup():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv1d(4, 8, 3), nn.ReLU(), nn.Conv1d(8, 8, 1), nn.Flatten(), nn.Linear(8 * 6, 3)
    )
    x = torch.randn(64, 4, 8)
    y = net(x).detach() + 0.1 * torch.randn(64, 3)

    def mse(model: nn.Module) -> dict:
        with torch.no_grad():
            return {"mse": (model(x) - y).square().mean().item(), "other": 0.0}

    return net, mse


def test_deltas_match_a_hand_quantized_layer():
    net, mse = _setup()
    table = layer_sensitivity(net, mse, bits=2, metric="mse")
    baseline = mse(net)["mse"]
    assert table.attrs["baseline"] == baseline
    assert list(table["layer"]) == ["0.weight", "2.weight", "4.weight"]
    for row in table.itertuples():
        by_hand = copy.deepcopy(net)
        weight = by_hand.get_parameter(row.layer)
        centroids, assign = kmeans_1d(weight.detach().reshape(-1).double(), 4, method="dp")
        with torch.no_grad():
            weight.copy_(centroids[assign].float().reshape(weight.shape))
        assert row.delta_mse == pytest.approx(mse(by_hand)["mse"] - baseline, rel=1e-4, abs=1e-7)
        assert row.bytes_saved == row.params * 4 - (-(-row.params * 2 // 8) + 4 * 4)


def test_keep_precise_meets_the_target_and_keeps_the_most_sensitive():
    net, mse = _setup()
    table = layer_sensitivity(net, mse, bits=2, metric="mse")
    fp32 = model_size(net)
    all_quantized = model_size(net, 2)
    target = (fp32 + all_quantized) // 2
    kept = keep_precise(table, target, fp32)
    mixed = quantize_model(net, 2, exclude=kept)
    assert model_size(mixed) <= target
    assert kept  # the target does not need every layer quantized
    # the kept layers are the ones with the largest harm per byte saved
    ratio = table.set_index("layer")["delta_mse"] / table.set_index("layer")["bytes_saved"]
    assert min(ratio[kept]) >= max(ratio.drop(kept))
    assert keep_precise(table, fp32, fp32) == list(table["layer"])
    with pytest.raises(ValueError, match="below"):
        keep_precise(table, all_quantized - 1, fp32)


def test_metric_key_must_exist_and_plot_marks_kept_layers():
    net, mse = _setup()
    with pytest.raises(ValueError, match="none is 'eer'"):
        layer_sensitivity(net, mse, bits=4)
    table = layer_sensitivity(net, mse, bits=4, metric="mse", include="0")
    assert list(table["layer"]) == ["0.weight"]
    fig = plot_sensitivity(table, kept=["0.weight"])
    assert fig.data[0].marker.color[0] == "#d62728"


def test_embedding_drift_is_the_mean_cosine_distance():
    torch.manual_seed(0)
    net, _ = _setup()
    x = torch.randn(16, 4, 8)
    other = copy.deepcopy(net)
    with torch.no_grad():
        other[0].weight.add_(0.3 * torch.randn_like(other[0].weight))
    expected = 1 - torch.nn.functional.cosine_similarity(other(x), net(x), dim=-1).mean()
    drift = embedding_drift(net, x)
    assert drift(other) == pytest.approx(expected.item(), rel=1e-5)
    assert drift(net) == pytest.approx(0.0, abs=1e-6)
    table = layer_sensitivity(net, drift, bits=1, metric="drift")
    assert (table["delta_drift"] > 0).all()
