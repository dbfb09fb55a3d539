"""Tests of the Hutchinson Hessian-trace sensitivity against exact Hessians."""

import math

import pytest
import torch
from torch import nn

from svlab.models import ResNet
from svlab.models.campplus import CAMPPlus
from svlab.quant import quantizable_names, quantize_model
from svlab.quant.hessian import (
    embedding_distortion_loss,
    gauss_newton_trace,
    hessian_sensitivity,
    hutchinson_trace,
    measured_sensitivity,
    model_hessian_sensitivity,
    quantization_errors,
)


def symmetric(n, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=g, dtype=torch.float64)
    return (a + a.T) / 2


def tolerance(block, n_samples):
    """Five standard errors of Hutchinson's mean: Var(v^T A v) = 2 * sum_{i != j} A_ij^2."""
    off_diagonal = (block**2).sum() - (torch.diagonal(block) ** 2).sum()
    return 5 * math.sqrt(2 * float(off_diagonal) / n_samples) + 1e-9


def test_quadratic_with_coupled_layers_matches_exact_trace():
    a, b = symmetric(6, 0), symmetric(4, 1)
    coupling = torch.randn(6, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    w1 = torch.randn(6, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)

    def loss():
        x2 = w2.reshape(-1)
        return w1 @ a @ w1 / 2 + x2 @ b @ x2 / 2 + w1 @ coupling @ x2

    n = 3000
    got = hutchinson_trace(loss, {"w1": w1, "w2": w2}, n_samples=n, seed=5)
    assert abs(got["w1"] - float(torch.trace(a))) < tolerance(a, n)
    assert abs(got["w2"] - float(torch.trace(b))) < tolerance(b, n)


def test_linear_regression_trace_is_known():
    """MSE of a linear layer: the Hessian of row k is 2 X^T X / N, its trace 2 ||X||^2 / N."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, 7, generator=g), torch.randn(50, 3, generator=g)
    layer = nn.Linear(7, 3, bias=False)
    got = hutchinson_trace(
        lambda: ((layer(x) - y) ** 2).sum(dim=1).mean(), {"weight": layer.weight}, n_samples=400
    )
    exact = 3 * 2 * float((x**2).sum()) / 50
    hessian_block = 2 * x.T.double() @ x.double() / 50
    assert abs(got["weight"] - exact) < tolerance(hessian_block, 400) * math.sqrt(3)


def test_small_network_matches_autograd_hessian():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x = torch.randn(8, 3, dtype=torch.float64)
    with torch.no_grad():
        reference = net(x)
    loss_fn = embedding_distortion_loss(net, x)
    with torch.no_grad():  # move away from w0 so the loss has curvature beyond Gauss-Newton
        net[0].weight.add_(0.3)
    params = {"0.weight": net[0].weight, "2.weight": net[2].weight}
    n = 4000
    got = hutchinson_trace(loss_fn, params, n_samples=n, seed=1)
    for name, weight in params.items():

        def loss_of(w, name=name):
            out = torch.func.functional_call(net, {name: w}, (x,))
            return ((out - reference) ** 2).sum(dim=-1).mean()

        block = torch.autograd.functional.hessian(loss_of, weight.detach().clone())
        block = block.reshape(weight.numel(), weight.numel())
        assert abs(got[name] - float(torch.trace(block))) < tolerance(block, n)


def test_embedding_distortion_trace_is_gauss_newton_and_positive():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv1d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 4))
    x = torch.randn(5, 2, 6)
    n = 2000
    traces = hutchinson_trace(
        embedding_distortion_loss(net, x), {"conv": net[0].weight, "fc": net[3].weight}, n
    )
    # Gauss-Newton block of the last (linear) layer: 2 / B * H^T H for each of its 4 rows
    with torch.no_grad():
        hidden = net[2](net[1](net[0](x))).double()
    block = torch.kron(torch.eye(4, dtype=torch.float64), 2 / 5 * hidden.T @ hidden)
    assert abs(traces["fc"] - float(torch.trace(block))) < tolerance(block, n)
    assert traces["conv"] > 0


def test_gauss_newton_traces_equal_the_double_backward_ones():
    torch.manual_seed(0)
    net = ResNet([1, 1], 4, feat_dim=16, embed_dim=8, strides=(1, 2)).eval()
    x = torch.randn(3, 20, 16)
    params = {name: p for name, p in net.named_parameters() if name in quantizable_names(net)}
    slow = hutchinson_trace(embedding_distortion_loss(net, x), params, n_samples=3, seed=4)
    fast = gauss_newton_trace(net, x, params, n_samples=3, seed=4, chunk=3)
    assert list(fast) == list(slow)
    for name in params:
        assert fast[name] == pytest.approx(slow[name], rel=1e-4, abs=1e-9), name


def test_gauss_newton_traces_stay_finite_through_a_constant_pooled_channel():
    """A channel that ReLU zeroes everywhere has standard deviation 0 over time: the
    double-backward of CAM++'s mean-and-std pooling is NaN there, the Gauss-Newton form is not."""
    torch.manual_seed(0)
    net = CAMPPlus(feat_dim=16, embed_dim=8, head_width=4, init_channels=16, growth_rate=4,
                   dense_layers=(1, 1, 1)).eval()  # fmt: skip
    with torch.no_grad():
        net.xvector.out_nonlinear.batchnorm.bias[0] = -1e3  # channel 0 is dead after the ReLU
    x = torch.randn(2, 40, 16)
    params = {"late": net.xvector.dense.linear.weight, "early": net.head.conv1.weight}
    slow = hutchinson_trace(embedding_distortion_loss(net, x), params, n_samples=2)
    fast = gauss_newton_trace(net, x, params, n_samples=2)
    assert math.isnan(slow["early"])
    assert all(math.isfinite(v) and v > 0 for v in fast.values())
    table = model_hessian_sensitivity(net, x, (2, 4), n_samples=2)
    assert all(math.isfinite(v) for row in table.values() for v in row.values())


def test_sensitivity_is_trace_per_weight_times_error():
    w = torch.tensor([[0.1, -0.4], [0.25, 0.9]])
    table = hessian_sensitivity(
        {"w": w}, {"w": 8.0}, lambda t, bits: (t * 2**bits).round() / 2**bits, (1, 2, 8)
    )
    for bits in (1, 2, 8):
        q = (w * 2**bits).round() / 2**bits
        assert table["w"][bits] == pytest.approx(8.0 / 4 * float(((q - w) ** 2).sum()))
    assert table["w"][1] > table["w"][2] > table["w"][8]


def test_bad_input():
    w = torch.ones(2, requires_grad=True)
    with pytest.raises(ValueError, match="n_samples"):
        hutchinson_trace(lambda: (w**2).sum(), {"w": w}, n_samples=0)
    with pytest.raises(ValueError, match="no parameters"):
        hutchinson_trace(lambda: (w**2).sum(), {})
    with pytest.raises(ValueError, match=r"\['frozen'\] do not require grad"):
        hutchinson_trace(lambda: (w**2).sum(), {"frozen": torch.ones(2)})
    other = torch.ones(2, requires_grad=True)
    with pytest.raises(ValueError, match=r"does not depend on parameters \['other'\]"):
        hutchinson_trace(lambda: (w**2).sum(), {"w": w, "other": other})
    with pytest.raises(ValueError, match="scalar"):
        hutchinson_trace(lambda: w**2, {"w": w})
    with pytest.raises(ValueError, match="no Hessian trace for layer 'w'"):
        hessian_sensitivity({"w": w}, {}, lambda t, b: t, (2,))


def test_quantization_errors_match_quantize_model():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv1d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))
    errors = quantization_errors(net, (1, 3), granularity="channel")
    for bits in (1, 3):
        q = quantize_model(net, bits, granularity="channel")
        for i, name in [(0, "0.weight"), (3, "3.weight")]:
            want = float(((q[i].weight - net[i].weight) ** 2).sum().detach())
            assert errors[name][bits] == pytest.approx(want)
    assert errors["0.weight"][1] > errors["0.weight"][3]


def test_model_hessian_sensitivity_leaves_the_model_alone():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv1d(2, 4, 3), nn.BatchNorm1d(4), nn.Flatten(), nn.Linear(8, 3))
    net[0].weight.requires_grad_(False)
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(6, 2, 4)
    table = model_hessian_sensitivity(net, x, (1, 2, 4), n_samples=8, exclude="3")
    assert list(table) == ["0.weight"] and table["0.weight"][1] > table["0.weight"][4] > 0
    assert net.training and not net[0].weight.requires_grad
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_measured_sensitivity_quantizes_one_layer_at_a_time():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2))
    x = torch.randn(20, 3)
    with torch.no_grad():
        y = net(x)

    def drift(m):
        with torch.no_grad():
            return float(((m(x) - y) ** 2).mean())

    table = measured_sensitivity(net, drift, (1, 2), metric="drift")
    for bits in (1, 2):
        for name in ("0.weight", "2.weight"):
            alone = quantize_model(net, {name: bits})
            assert table[name][bits] == pytest.approx(drift(alone) - drift(net))


def test_blockwise_is_exact_for_diagonal_blocks_despite_coupling():
    """Diagonal blocks + strong coupling: blockwise samples are exact, joint ones are not."""
    d1, d2 = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([4.0, 5.0])
    w1 = torch.randn(3, requires_grad=True)
    w2 = torch.randn(2, requires_grad=True)

    def loss():
        return (d1 * w1**2).sum() / 2 + (d2 * w2**2).sum() / 2 + 10 * w1.sum() * w2.sum()

    params = {"w1": w1, "w2": w2}
    assert hutchinson_trace(loss, params, n_samples=3) == {"w1": 6.0, "w2": 9.0}
    joint = hutchinson_trace(loss, params, n_samples=3, blockwise=False)
    assert joint != {"w1": 6.0, "w2": 9.0}


def test_blockwise_gauss_newton_samples_are_never_negative():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv1d(2, 4, 3), nn.ReLU(), nn.Conv1d(4, 4, 3), nn.Flatten(), nn.Linear(8, 3)
    )
    loss = embedding_distortion_loss(net, torch.randn(4, 2, 6))
    params = {"a": net[0].weight, "b": net[2].weight, "c": net[4].weight}
    for seed in range(5):
        assert all(t >= 0 for t in hutchinson_trace(loss, params, 1, seed).values())


def test_reversible_models_get_true_second_derivatives_or_a_clear_error():
    """A memory-saving reversible block has no double backward: the raw estimator refuses it
    (instead of reading every earlier layer's Hessian block as zero), and
    model_hessian_sensitivity caches through it, matching the plain model's traces."""
    from svlab.models import build
    from svlab.models.reversible import ReversibleSequence, set_memory_saving

    torch.manual_seed(0)
    model = build("rev_resnet18", base_width=4, embed_dim=8).eval()
    assert any(isinstance(m, ReversibleSequence) for m in model.modules())
    feats = torch.randn(2, 40, 80)
    params = {n: p for n, p in model.named_parameters() if n == "stem.0.0.weight"}
    with pytest.raises(ValueError, match="set_memory_saving"):
        hutchinson_trace(embedding_distortion_loss(model, feats), params, n_samples=1)
    table = model_hessian_sensitivity(model, feats, (2,), n_samples=2)
    assert all(m.memory_saving for m in model.modules() if isinstance(m, ReversibleSequence))
    plain = model_hessian_sensitivity(set_memory_saving(model, False), feats, (2,), n_samples=2)
    assert table == plain and min(row[2] for row in table.values()) > 0
