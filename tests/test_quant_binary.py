"""Tests of 1-bit weights: forward values, straight-through gradients, packed storage."""

import pytest
import torch
from torch import nn

from svlab import checkpoint
from svlab.quant.binarize import (
    binarize,
    binarizers,
    binary_size,
    load_binary,
    save_binary,
    track_binary,
)


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv1d(3, 5, 3), nn.BatchNorm1d(5), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 6, 4)
    )


def hand_sign(w):
    return torch.where(w >= 0, torch.ones_like(w), -torch.ones_like(w))


def test_sign_forward():
    net = small_net()
    b = binarize(net, "sign")
    assert torch.equal(b[0].weight, hand_sign(net[0].weight))
    assert torch.equal(b[4].weight, hand_sign(net[4].weight))
    assert torch.equal(b[0].bias, net[0].bias)


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_static_forward(granularity):
    net = small_net()
    b = binarize(net, "static", granularity=granularity)
    for i in (0, 4):
        w = net[i].weight.detach()
        rows = w.reshape(w.shape[0] if granularity == "channel" else 1, -1)
        scale = rows.abs().mean(dim=1, keepdim=True)
        want = (scale * hand_sign(rows)).reshape(w.shape)
        assert torch.allclose(b[i].weight, want, rtol=0, atol=1e-7)


def test_static_scale_is_fixed_during_training():
    b = binarize(small_net(), "static")
    before = b[0].weight.detach().abs().unique()
    with torch.no_grad():
        b[0].parametrizations.weight.original.mul_(3)  # latent weights move, scale stays
    assert torch.equal(b[0].weight.detach().abs().unique(), before)


def test_adaptive_forward_with_set_scale_and_threshold():
    net = small_net()
    b = binarize(net, "adaptive")
    binarizer = binarizers(b)["4.weight"]
    scale = torch.linspace(0.5, 2.0, 4)[:, None]
    relative = torch.tensor([[-0.1], [0.0], [0.05], [0.2]])
    with torch.no_grad():
        binarizer.log_scale.copy_(scale.log())
        binarizer.threshold.copy_(relative)
    w = net[4].weight.detach()
    want = scale * hand_sign(w - relative * scale)
    torch.testing.assert_close(b[4].weight, want)
    torch.testing.assert_close(binarizer.magnitudes(), scale)


def test_adaptive_starts_as_static():
    net = small_net()
    adaptive, static = binarize(net, "adaptive")[0].weight, binarize(net, "static")[0].weight
    assert torch.equal(adaptive.sign(), static.sign())
    torch.testing.assert_close(adaptive, static, rtol=1e-6, atol=0)  # exp(log(a)): within an ulp


def test_sign_and_static_ste_gradients():
    net = nn.Sequential(nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[0.5, -1.5, 0.0, 2.0], [-0.2, 0.9, 1.1, -0.7]]))
    upstream = torch.arange(8.0).reshape(2, 4) - 3
    inside = (net[0].weight.detach().abs() <= 1).float()
    for scheme, factor in [("sign", torch.ones(2, 1)), ("static", None)]:
        b = binarize(net, scheme)
        if factor is None:
            factor = net[0].weight.detach().abs().mean(dim=1, keepdim=True)
        (b[0].weight * upstream).sum().backward()
        latent = b[0].parametrizations.weight.original
        assert torch.allclose(latent.grad, upstream * inside * factor)


def test_adaptive_ste_gradients():
    """By hand: w_b = a sign(w - a r), a = exp(s); the latent gradient is clipped where
    |w - t| > 1 as for the other schemes; s and r get their sums times 1/sqrt(n)."""
    net = nn.Sequential(nn.Linear(3, 2, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[0.3, -0.9, 1.5], [1.2, -0.1, 0.4]]))
    b = binarize(net, "adaptive")
    binarizer = binarizers(b)["0.weight"]
    a, r = torch.tensor([[0.5], [0.6]]), torch.tensor([[0.2], [-0.3]])
    with torch.no_grad():
        binarizer.log_scale.copy_(a.log())
        binarizer.threshold.copy_(r)
    upstream = torch.tensor([[1.0, -2.0, 0.5], [3.0, 1.5, -1.0]])
    (b[0].weight * upstream).sum().backward()
    w = net[0].weight.detach()
    t = a * r
    inside = ((w - t).abs() <= 1).float()
    latent = b[0].parametrizations.weight.original
    factor = 3**-0.5  # learned-step-size gradient scale: 1 / sqrt(weights per channel)
    torch.testing.assert_close(latent.grad, upstream * a * inside)
    # d/dr: a * (-a) * inside; d/ds: a * sign + a * (-a r) * inside (t = a r moves with a)
    threshold_grad = (upstream * -a * a * inside).sum(1, keepdim=True) * factor
    torch.testing.assert_close(binarizer.threshold.grad, threshold_grad)
    scale_grad = (upstream * a * (hand_sign(w - t) - t * inside)).sum(1, keepdim=True) * factor
    torch.testing.assert_close(binarizer.log_scale.grad, scale_grad)


def test_adaptive_scale_and_threshold_learn():
    b = binarize(small_net(), "adaptive")
    names = {n for n, _ in b.named_parameters()}
    assert "0.parametrizations.weight.0.log_scale" in names
    assert "0.parametrizations.weight.0.threshold" in names
    binarizer = binarizers(b)["4.weight"]
    before = binarizer.magnitudes().clone(), binarizer.threshold.detach().clone()
    optimizer = torch.optim.Adam(b.parameters(), lr=0.01)
    x, target = torch.randn(6, 3, 8), torch.randn(6, 4)
    for _ in range(3):
        optimizer.zero_grad()
        ((b(x) - target) ** 2).mean().backward()
        optimizer.step()
    after = binarizer.magnitudes()
    assert not torch.equal(after, before[0]) and (after > 0).all()
    # Adam's steps of 0.01 change the scale by about 1% each, not by 0.01 in absolute terms
    assert ((after / before[0]).log().abs() <= 0.031).all()
    assert not torch.equal(binarizer.threshold.detach(), before[1])


@pytest.mark.parametrize("scheme", ["sign", "static", "adaptive"])
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_packed_round_trip(tmp_path, scheme, granularity):
    net = small_net()
    b = binarize(net, scheme, granularity=granularity)
    if scheme == "adaptive":  # move threshold and scale so the round trip is not trivial
        for binarizer in binarizers(b).values():
            with torch.no_grad():
                binarizer.threshold.normal_(0, 0.05)
                binarizer.log_scale.add_(0.5)
    b.eval()
    path = save_binary(tmp_path / "b.pt", b)
    loaded = load_binary(path, net).eval()
    x = torch.randn(4, 3, 8)
    for i in (0, 4):
        assert torch.equal(loaded[i].weight, b[i].weight)
    assert torch.equal(loaded(x), b(x))
    assert list(binarizers(loaded)) == ["0.weight", "4.weight"]


def test_real_size_counts_bits_and_scales(tmp_path):
    net = small_net()
    b = binarize(net, "static", granularity="channel")
    n0, n4 = net[0].weight.numel(), net[4].weight.numel()  # 45 and 120 weights
    want_binary = (n0 + 5 * 32 + 7) // 8 + (n4 + 4 * 32 + 7) // 8
    others = sum(
        v.numel() * v.element_size()
        for k, v in net.state_dict().items()
        if k not in ("0.weight", "4.weight")
    )
    assert binary_size(b) == {"binary": want_binary, "fp32": others, "total": want_binary + others}
    assert binary_size(binarize(net, "sign"))["binary"] == (n0 + 7) // 8 + (n4 + 7) // 8


def test_packed_file_is_small(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(512, 512, bias=False))
    fp32 = checkpoint.save(tmp_path / "fp32.pt", net.state_dict()).stat().st_size
    packed = save_binary(tmp_path / "b.pt", binarize(net, "static")).stat().st_size
    assert packed < fp32 / 25  # 32x in the limit; the container adds a little


def test_bad_files(tmp_path):
    net = small_net()
    path = save_binary(tmp_path / "b.pt", binarize(net, "static"))
    saved = checkpoint.load(path)
    saved["layers"]["4.weight"]["packed"] = saved["layers"]["4.weight"]["packed"][:-2]
    checkpoint.save(tmp_path / "cut.pt", saved)
    with pytest.raises(ValueError, match=r"cut.pt: layer 4.weight holds 13 packed bytes"):
        load_binary(tmp_path / "cut.pt", net)
    other = nn.Sequential(nn.Conv1d(3, 5, 3), nn.BatchNorm1d(5), nn.ReLU(), nn.Flatten())
    with pytest.raises(ValueError, match=r"no weights \['4.weight'\]"):
        load_binary(path, other)
    wider = nn.Sequential(
        nn.Conv1d(3, 6, 3), nn.BatchNorm1d(6), nn.ReLU(), nn.Flatten(), nn.Linear(36, 4)
    )
    with pytest.raises(ValueError, match="layer 0.weight has shape"):
        load_binary(path, wider)
    checkpoint.save(tmp_path / "plain.pt", net.state_dict())
    with pytest.raises(ValueError, match="not an svlab binary checkpoint"):
        load_binary(tmp_path / "plain.pt", net)


def test_bad_input():
    net = small_net()
    with pytest.raises(ValueError, match="scheme must be one of"):
        binarize(net, "ternary")
    with pytest.raises(ValueError, match="granularity"):
        binarize(net, "static", granularity="row")
    with pytest.raises(ValueError, match="matches no quantizable weight"):
        binarize(net, "sign", include="nope*")
    with torch.no_grad():
        net[4].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="4.weight: .*NaN"):
        binarize(net, "static")
    with pytest.raises(ValueError, match="no binarized weight"):
        binary_size(net)


def test_track_binary_records_each_training_pass_and_then_stops():
    b = binarize(small_net(), "adaptive")
    x, target = torch.randn(6, 3, 8), torch.randn(6, 4)
    params = [p for p in b.parameters() if p.requires_grad]
    with track_binary(b) as log:
        for _ in range(3):
            grads = torch.autograd.grad(((b(x) - target) ** 2).mean(), params)
            with torch.no_grad():
                for p, g in zip(params, grads, strict=True):
                    p -= 0.5 * g
        b.eval()
        b(x)  # evaluation passes are not training passes
        b.train()
    assert [(r["layer"], r["pass"]) for r in log] == [
        (layer, i) for i in range(3) for layer in ("0.weight", "4.weight")
    ]
    first, last = log[1], log[-1]  # the linear layer before and after two updates
    assert first["threshold"] == 0.0 and last["threshold"] != 0.0
    assert first["scale"] != last["scale"]
    b(x).sum().backward()
    assert len(log) == 6  # hooks are gone after the block
