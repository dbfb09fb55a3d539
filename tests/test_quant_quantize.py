"""quantize_model: any module keeps its forward, weights become codebook values, STE trains."""

import pytest
import torch
from torch import nn

from svlab.quant import (
    bit_map,
    clone_model,
    dequantize,
    kmeans_1d,
    latent_weight,
    quantize_model,
    quantizers,
    requantize,
)

torch.set_num_threads(1)


class Mixed(nn.Module):
    """Conv1d, Conv2d, BatchNorm, LSTM, GRU and Linear in one model."""

    def __init__(self) -> None:
        super().__init__()
        self.conv2d = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv1d = nn.Conv1d(4 * 6, 8, 3, padding=1)
        self.lstm = nn.LSTM(8, 6, num_layers=2, batch_first=True, bidirectional=True)
        self.gru = nn.GRU(12, 5, batch_first=True)
        self.fc = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, T, 6]
        h = self.bn(self.conv2d(x.unsqueeze(1)))  # [B, 4, T, 6]
        h = self.conv1d(h.permute(0, 1, 3, 2).flatten(1, 2))  # [B, 8, T]
        h, _ = self.lstm(h.transpose(1, 2))
        h, _ = self.gru(h)
        return self.fc(h.mean(1))


def _reference(model: nn.Module, bits: int, granularity: str) -> nn.Module:
    """The model with each weight replaced by nearest centroids, computed with kmeans_1d."""
    ref = clone_model(model)
    with torch.no_grad():
        for name in bit_map(model, bits):
            w = ref.get_parameter(name)
            rows = w.reshape(w.shape[0] if granularity == "channel" else 1, -1)
            for row in rows:
                k = min(2**bits, len(row.unique()))
                centroids, assign = kmeans_1d(row.double(), k, method="dp")
                row.copy_(centroids[assign].float())
    return ref


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_quantized_model_equals_weights_replaced_by_centroids(granularity):
    torch.manual_seed(0)
    model = Mixed().eval()
    x = torch.randn(2, 7, 6)
    quantized = quantize_model(model, 2, granularity=granularity, kmeans_method="dp").eval()
    reference = _reference(model, 2, granularity).eval()
    names = bit_map(model, 2)
    assert set(quantizers(quantized)) == set(names)
    assert "bn.weight" not in names and "fc.bias" not in names
    for name in names:
        torch.testing.assert_close(
            _value(quantized, name),
            reference.get_parameter(name),
            rtol=0,
            atol=1e-6,
        )
    torch.testing.assert_close(quantized(x), reference(x), rtol=1e-5, atol=1e-6)
    # biases and BatchNorm untouched, original model untouched
    assert quantized.fc.bias.equal(model.fc.bias) and quantized.bn.weight.equal(model.bn.weight)
    assert not quantizers(model)


def _value(model: nn.Module, name: str) -> torch.Tensor:
    module_name, _, attr = name.rpartition(".")
    return getattr(model.get_submodule(module_name), attr)


def test_each_row_has_its_own_codebook_per_channel():
    torch.manual_seed(0)
    layer = nn.Linear(50, 6)
    q = quantize_model(layer, 2, granularity="channel")
    assert quantizers(q)["weight"].codebook.shape == (6, 4)
    for row in q.weight:
        assert len(row.unique()) <= 4
    assert len(q.weight.unique()) > 4


def test_ste_gradients_reach_latent_weight_and_codebook():
    torch.manual_seed(0)
    model = quantize_model(Mixed(), 3)
    loss = model(torch.randn(2, 5, 6)).square().sum()
    loss.backward()
    for name, quantizer in quantizers(model).items():
        assert latent_weight(model, name).grad is not None, name
        assert quantizer.codebook.grad is not None, name
    # codebook gradient = mean of the weight gradients per centroid
    lin = quantize_model(nn.Linear(20, 1, bias=False), 1)
    x = torch.randn(4, 20)
    lin(x).sum().backward()
    q = quantizers(lin)["weight"]
    idx = q.indices(lin.parametrizations.weight.original)[0]
    weight_grad = x.sum(0)
    counts = torch.zeros(2).index_add_(0, idx, torch.ones(20))
    expected = torch.zeros(2).index_add_(0, idx, weight_grad) / counts
    torch.testing.assert_close(q.codebook.grad[0], expected)
    torch.testing.assert_close(lin.parametrizations.weight.original.grad[0], weight_grad)


def test_training_through_the_quantizer_lowers_the_loss_and_stays_on_the_codebook():
    torch.manual_seed(0)
    teacher = nn.Linear(16, 4)
    model = quantize_model(nn.Linear(16, 4), 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x = torch.randn(256, 16)
    y = teacher(x).detach()
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = (model(x) - y).square().mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    levels = quantizers(model)["weight"].levels()
    assert set(model.weight.detach().unique().tolist()) <= set(levels.detach()[0].tolist())
    requantize(model)
    assert len(model.weight.unique()) <= 4


def test_uniform_levels_are_evenly_spaced_and_fixed():
    model = quantize_model(nn.Linear(30, 5), 3, method="uniform")
    q = quantizers(model)["weight"]
    assert not q.codebook.requires_grad
    levels = q.levels()[0]
    steps = levels.diff()
    torch.testing.assert_close(steps, torch.full_like(steps, float(steps[0])))
    w = latent_weight(model, "weight").detach()
    assert float(levels[0]) == float(w.min()) and abs(float(levels[-1] - w.max())) < 1e-6


def test_lstm_clone_and_dequantize_keep_the_original_working():
    torch.manual_seed(0)
    model = quantize_model(nn.LSTM(4, 3), 2)
    x = torch.randn(5, 1, 4)
    out = model(x)[0]
    out.sum().backward()
    copy = clone_model(model)
    plain = dequantize(model)
    assert not quantizers(plain)
    torch.testing.assert_close(plain(x)[0], out)
    torch.testing.assert_close(copy(x)[0], out)
    torch.testing.assert_close(model(x)[0], out)  # the original still has its parametrizations


def test_bits_map_patterns_and_errors():
    model = Mixed()
    plan = bit_map(model, {"lstm": 8, "conv*": 4, "gru.weight_hh_l0": None})
    assert plan["lstm.weight_ih_l0"] == 8 and plan["conv2d.weight"] == 4
    assert "gru.weight_hh_l0" not in plan and "fc.weight" not in plan
    q = quantize_model(model, {"lstm": 8, "*": 2})
    assert quantizers(q)["lstm.weight_ih_l1_reverse"].bits == 8
    assert quantizers(q)["fc.weight"].bits == 2
    with pytest.raises(ValueError, match="'lstmm'"):
        quantize_model(model, {"lstmm": 4})
    with pytest.raises(ValueError, match="'nope'"):
        quantize_model(model, 4, exclude=["nope"])
    for bad in (0, 9, 2.5, True):
        with pytest.raises(ValueError, match="1..8"):
            quantize_model(model, bad)
    with pytest.raises(ValueError, match="granularity"):
        quantize_model(model, 4, granularity="row")
    with pytest.raises(ValueError, match="no Linear, Conv or RNN"):
        quantize_model(nn.BatchNorm1d(3), 4)
    with pytest.raises(ValueError, match="already quantized"):
        quantize_model(quantize_model(model, 4), 4)


def test_nan_weight_is_named():
    model = Mixed()
    with torch.no_grad():
        model.gru.weight_ih_l0[1, 2] = float("nan")
    with pytest.raises(ValueError, match="gru.weight_ih_l0 holds 1 NaN"):
        quantize_model(model, 4)


def test_small_rows_with_fewer_values_than_levels_are_exact():
    layer = nn.Conv1d(1, 3, 2)  # rows of 2 values at 4 bits
    q = quantize_model(layer, 4, granularity="channel")
    assert q.weight.equal(layer.weight)
