"""svlab.optim checked against bitsandbytes, brute force and torch's fp32 optimizers."""

import copy
import warnings

import bitsandbytes as bnb
import bitsandbytes.functional as bnbf
import pytest
import torch

from svlab import checkpoint
from svlab.optim import (
    Adam8bit,
    NonFiniteGradientError,
    OptimizerStateError,
    QuantizationError,
    SGD8bit,
    adam_update_error,
    dequantize_blockwise,
    dynamic_map,
    linear_map,
    make_optimizer,
    nearest_code,
    quantize_blockwise,
    state_breakdown,
    state_bytes,
)

torch.set_num_threads(1)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def brute_force_nearest(scaled: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    return torch.cat([(c[:, None] - code[None]).abs().argmin(1) for c in scaled.split(50_000)])


@pytest.mark.parametrize("signed", [True, False])
def test_dynamic_map_equals_bitsandbytes(signed):
    assert torch.equal(dynamic_map(signed), bnbf.create_dynamic_map(signed=signed))


def test_dynamic_map_structure():
    signed, unsigned = dynamic_map(True), dynamic_map(False)
    assert (signed > 0).sum() == 128 and (signed < 0).sum() == 127 and (signed == 0).sum() == 1
    assert torch.equal(signed[signed > 0][:-1], -signed[signed < 0].flip(0))
    # each decade holds twice the codes of the one below; unsigned has twice signed's
    for bits, decade in enumerate(range(-7, 0)):
        in_decade = (signed > 10.0**decade) & (signed < 10.0 ** (decade + 1))
        assert in_decade.sum() == 2**bits
        assert ((unsigned > 10.0**decade) & (unsigned < 10.0 ** (decade + 1))).sum() == 2 ** (
            bits + 1
        )


@pytest.mark.parametrize("signed", [True, False])
def test_codes_agree_with_bitsandbytes_and_are_nearest(signed):
    torch.manual_seed(0)
    x = torch.randn(100_003)
    x = x if signed else x.abs()
    code = dynamic_map(signed)
    q, absmax = quantize_blockwise(x, code, blocksize=256)
    q_bnb, state = bnbf.quantize_blockwise(x, code=code.clone(), blocksize=256)
    assert torch.equal(absmax, state.absmax)
    assert (q == q_bnb).float().mean() > 0.99
    scaled = x / absmax.repeat_interleave(256)[: x.numel()]
    nearest = brute_force_nearest(scaled, code)
    assert (q.long() == nearest).float().mean() > 0.9999
    # where svlab and bitsandbytes disagree, svlab's code is the nearer one
    mine = (code[q.long()] - scaled).abs()
    theirs = (code[q_bnb.long()] - scaled).abs()
    assert (mine <= theirs + 1e-7).all()
    # same codes dequantize to the same values
    expected = bnbf.dequantize_blockwise(q_bnb, state)
    assert torch.equal(dequantize_blockwise(q_bnb, state.absmax, code, 256), expected)


@pytest.mark.parametrize(
    "code",
    [dynamic_map(True), dynamic_map(False), linear_map(True), torch.linspace(0.5, 0.51, 200)],
    ids=["dynamic", "udynamic", "linear", "fine-falls-back"],
)
def test_nearest_code_is_a_binary_search_over_midpoints(code):
    torch.manual_seed(3)
    n = 200_000
    x = (torch.rand(n) * 2 - 1) * torch.logspace(-9, 0, n)[torch.randperm(n)]
    midpoints = (code[1:] + code[:-1]) / 2
    edges = torch.tensor([0.0, -0.0, 1.0, -1.0, 1e-30, -1e-30])
    x = torch.cat([x, code, midpoints, edges, midpoints.nextafter(torch.tensor(2.0))])
    expected = torch.searchsorted(midpoints, x)
    assert torch.equal(nearest_code(x, code).long(), expected)
    chosen = (code[expected] - x).abs()
    best = (code[brute_force_nearest(x, code)] - x).abs()
    assert (chosen <= best + 1e-7).all()  # nearest, up to rounding of the midpoints


@pytest.mark.parametrize("blocksize", [1, 7, 64, 256, 2048])
def test_round_trip_error_is_bounded_by_half_a_code_gap(blocksize):
    torch.manual_seed(1)
    x = torch.randn(3, 1001) * torch.logspace(-6, 0, 1001)
    code = dynamic_map(True)
    q, absmax = quantize_blockwise(x, code, blocksize)
    y = dequantize_blockwise(q, absmax, code, blocksize)
    assert y.shape == x.shape and q.shape == x.shape
    assert absmax.numel() == -(-x.numel() // blocksize)
    scale = absmax.repeat_interleave(blocksize)[: x.numel()].view_as(x)
    gap = torch.cat([code.diff(), code.diff()[-1:]]).max()
    assert ((y - x).abs() <= gap / 2 * scale + 1e-7).all()
    assert ((y - x).abs() / scale).mean() < 0.01


def test_dynamic_keeps_small_values_that_linear_flushes_to_zero():
    torch.manual_seed(2)
    v = torch.randn(65_536).pow(2) * torch.logspace(-8, -2, 65_536)[torch.randperm(65_536)]
    for code, flushed_max, flushed_min in (
        (dynamic_map(False), 0.1, 0.0),
        (linear_map(False), 1.0, 0.5),
    ):
        q, absmax = quantize_blockwise(v, code)
        flushed = ((dequantize_blockwise(q, absmax, code) == 0) & (v > 0)).float().mean()
        assert flushed_min <= flushed <= flushed_max


def test_adam_update_survives_dynamic_but_not_linear_states():
    torch.manual_seed(4)
    # gradient scales over 2 decades, mixed within blocks; moments of 10 steps
    scale = torch.logspace(-2, 0, 8).repeat_interleave(4096)[torch.randperm(8 * 4096)]
    grads = torch.randn(10, scale.numel()) * scale
    m, v = 0.1 * grads.mean(0), 0.001 * grads.pow(2).mean(0)
    dynamic = adam_update_error(m, v, dynamic_map(True), dynamic_map(False))
    linear = adam_update_error(m, v, linear_map(True), linear_map(False))
    assert dynamic["rel_err"] < 0.1 and dynamic["max_ratio"] < 1.5
    assert linear["max_ratio"] > 100


def test_linear_map_is_uniform():
    assert torch.allclose(linear_map(True).diff(), torch.full((254,), 1 / 127))
    assert torch.allclose(linear_map(False).diff(), torch.full((255,), 1 / 255))


def test_quantize_bad_input():
    with pytest.raises(QuantizationError, match="positive"):
        quantize_blockwise(torch.ones(4), blocksize=0)
    with pytest.raises(QuantizationError, match="positive"):
        quantize_blockwise(torch.ones(4), blocksize=-3)
    with pytest.raises(QuantizationError, match="floating-point"):
        quantize_blockwise(torch.ones(4, dtype=torch.int64))
    with pytest.raises(QuantizationError, match="empty"):
        quantize_blockwise(torch.ones(0))
    with pytest.raises(QuantizationError, match="NaN"):
        quantize_blockwise(torch.tensor([1.0, float("nan")]))
    with pytest.raises(QuantizationError, match="sorted"):
        quantize_blockwise(torch.ones(4), code=torch.tensor([1.0, 0.0]))
    with pytest.raises(QuantizationError, match="uint8"):
        dequantize_blockwise(torch.ones(4), torch.ones(1))


def quadratic_gradients(steps, n=6000, seed=0):
    """The same gradient sequence for every optimizer (open loop: no chaotic amplification)."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.logspace(-4, 0, n)
    return [torch.randn(n, generator=g) * scale for _ in range(steps)]


def run_open_loop(optimizer_factory, grads, device="cpu"):
    w = torch.nn.Parameter(torch.linspace(-1, 1, grads[0].numel(), device=device))
    opt = optimizer_factory([w])
    for grad in grads:
        w.grad = grad.to(device)
        opt.step()
    return w.detach().cpu()


@pytest.mark.parametrize("family", ["sgd", "adam"])
def test_open_loop_steps_match_bitsandbytes_and_fp32(family):
    grads = quadratic_gradients(120)
    lr = 0.01 if family == "sgd" else 1e-3
    if family == "sgd":
        ours = run_open_loop(lambda p: SGD8bit(p, lr, 0.9, weight_decay=1e-4), grads)
        theirs = run_open_loop(lambda p: bnb.optim.SGD8bit(p, lr, 0.9, weight_decay=1e-4), grads)
        fp32 = run_open_loop(lambda p: torch.optim.SGD(p, lr, 0.9, weight_decay=1e-4), grads)
    else:
        ours = run_open_loop(lambda p: Adam8bit(p, lr, weight_decay=1e-4), grads)
        theirs = run_open_loop(lambda p: bnb.optim.Adam8bit(p, lr, weight_decay=1e-4), grads)
        fp32 = run_open_loop(lambda p: torch.optim.AdamW(p, lr, weight_decay=1e-4), grads)
    start = torch.linspace(-1, 1, 6000)
    moved = (fp32 - start).abs().max()
    assert (ours - theirs).abs().max() < 0.02 * moved
    assert (ours - fp32).abs().max() < 0.05 * moved
    assert (theirs - fp32).abs().max() < 0.05 * moved


@pytest.mark.parametrize("device", DEVICES)
def test_small_tensors_keep_fp32_state_and_match_torch_exactly(device):
    grads = [g[:1000] for g in quadratic_gradients(20)]
    ours = run_open_loop(lambda p: Adam8bit(p, 1e-2), grads, device)
    fp32 = run_open_loop(lambda p: torch.optim.AdamW(p, 1e-2, weight_decay=0.0), grads, device)
    assert torch.allclose(ours, fp32, atol=1e-6)
    ours = run_open_loop(lambda p: SGD8bit(p, 1e-2, nesterov=True), grads, device)
    fp32 = run_open_loop(lambda p: torch.optim.SGD(p, 1e-2, 0.9, nesterov=True), grads, device)
    assert torch.allclose(ours, fp32, atol=1e-6)


def train(name, backend, steps, seed=0, lr=None, nesterov=False, model=None, opt=None):
    torch.manual_seed(seed)
    x, y = torch.randn(256, 32), torch.randint(0, 8, (256,))
    if model is None:
        torch.manual_seed(123)
        model = torch.nn.Sequential(
            torch.nn.Linear(32, 160), torch.nn.ReLU(), torch.nn.Linear(160, 8)
        )
    if opt is None:
        opt = make_optimizer(model.parameters(), name, lr, nesterov=nesterov, backend=backend)
    losses = []
    for step in range(steps):
        batch = torch.arange(step * 32, step * 32 + 32) % 256
        loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model, opt, losses


@pytest.mark.parametrize("family,lr", [("sgd", 0.05), ("adam", 2e-3)])
def test_training_100_steps_close_to_bitsandbytes_and_fp32(family, lr):
    params = {}
    for key, name, backend in (
        ("fp32", family, "svlab"),
        ("svlab", family + "8bit", "svlab"),
        ("bnb", family + "8bit", "bitsandbytes"),
    ):
        model, _, losses = train(name, backend, 100, lr=lr)
        params[key] = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        assert losses[-1] < 0.8 * losses[0]
    norm = params["fp32"].norm()
    assert (params["svlab"] - params["bnb"]).norm() < 0.05 * norm
    assert (params["svlab"] - params["fp32"]).norm() < 0.05 * norm


@pytest.mark.parametrize("optimizer", ["sgd8bit", "adam8bit"])
def test_state_dict_round_trip_resumes_identically(optimizer, tmp_path):
    model, opt, _ = train(optimizer, "svlab", 10, lr=0.01)
    path = checkpoint.save(
        tmp_path / "state.pt", {"model": model.state_dict(), "opt": opt.state_dict()}
    )
    _, _, continued = train(optimizer, "svlab", 10, seed=5, model=model, opt=opt)

    saved = checkpoint.load(path)
    torch.manual_seed(0)
    resumed_model = copy.deepcopy(model)
    resumed_model.load_state_dict(saved["model"])
    resumed_opt = make_optimizer(resumed_model.parameters(), optimizer, 0.01, nesterov=False)
    resumed_opt.load_state_dict(saved["opt"])
    assert (
        resumed_opt.state[resumed_model[0].weight][resumed_opt._state_names[0]].dtype == torch.uint8
    )
    _, _, resumed = train(optimizer, "svlab", 10, seed=5, model=resumed_model, opt=resumed_opt)
    assert resumed == continued
    for a, b in zip(model.parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_loading_a_state_of_another_shape_fails_clearly():
    _, opt, _ = train("adam8bit", "svlab", 2, lr=0.01)
    other = torch.nn.Sequential(torch.nn.Linear(32, 100), torch.nn.ReLU(), torch.nn.Linear(100, 8))
    fresh = make_optimizer(other.parameters(), "adam8bit", 0.01)
    with pytest.raises(OptimizerStateError, match="parameter 0"):
        fresh.load_state_dict(opt.state_dict())
    assert len(fresh.state) == 0
    fewer = make_optimizer(list(other.parameters())[:2], "adam8bit", 0.01)
    with pytest.raises(OptimizerStateError, match="sizes"):
        fewer.load_state_dict(opt.state_dict())


@pytest.mark.parametrize("cls", [SGD8bit, Adam8bit])
def test_nonfinite_gradient_skips_the_step_and_keeps_state(cls):
    w = torch.nn.Parameter(torch.randn(5000))
    opt = cls([w], lr=0.01)
    w.grad = torch.randn(5000)
    opt.step()
    before = copy.deepcopy(opt.state[w]), w.detach().clone()
    for bad in (float("nan"), float("inf")):
        w.grad[7] = bad
        with pytest.warns(RuntimeWarning, match="parameter 0 has a NaN or Inf gradient"):
            opt.step()
    assert opt.skipped_steps == 2
    assert torch.equal(w, before[1])
    for key, value in before[0].items():
        assert torch.equal(torch.as_tensor(opt.state[w][key]), torch.as_tensor(value))
    strict = cls([w], lr=0.01, on_nonfinite="raise")
    with pytest.raises(NonFiniteGradientError), warnings.catch_warnings():
        warnings.simplefilter("error")
        strict.step()
    assert torch.equal(w, before[1]) and len(strict.state) == 0


@pytest.mark.parametrize("cls", [SGD8bit, Adam8bit])
def test_optimizer_bad_input(cls):
    with pytest.raises(ValueError, match="floating-point"):
        cls([torch.nn.Parameter(torch.ones(3)), torch.zeros(3, dtype=torch.int64)], lr=0.1)
    with pytest.raises(ValueError, match="empty parameter 0"):
        cls([torch.nn.Parameter(torch.ones(0))], lr=0.1)
    for blocksize in (0, -256):
        with pytest.raises(ValueError, match="blocksize"):
            cls([torch.nn.Parameter(torch.ones(3))], lr=0.1, blocksize=blocksize)
    with pytest.raises(ValueError, match="on_nonfinite"):
        cls([torch.nn.Parameter(torch.ones(3))], lr=0.1, on_nonfinite="ignore")


def test_make_optimizer_choices():
    w = [torch.nn.Parameter(torch.ones(3))]
    assert isinstance(make_optimizer(w, "sgd", 0.1), torch.optim.SGD)
    assert isinstance(make_optimizer(w, "adam", 0.1), torch.optim.AdamW)
    assert isinstance(make_optimizer(w, "sgd8bit", 0.1), SGD8bit)
    assert isinstance(
        make_optimizer(w, "adam8bit", 0.1, backend="bitsandbytes"), bnb.optim.Adam8bit
    )
    bnb_sgd = make_optimizer(w, "sgd8bit", 0.1, nesterov=False, backend="bitsandbytes")
    assert isinstance(bnb_sgd, bnb.optim.SGD8bit)
    with pytest.raises(ValueError, match="Nesterov"):
        make_optimizer(w, "sgd8bit", 0.1, backend="bitsandbytes")
    with pytest.raises(ValueError, match="backend"):
        make_optimizer(w, "sgd8bit", 0.1, backend="apex")


def test_state_bytes_counts_real_storage():
    sizes = (10_000, 300_000, 1000)  # the last stays fp32 (< 4096 elements)
    counts = {}
    for key, factory in (
        ("torch", lambda p: torch.optim.AdamW(p)),
        ("svlab", lambda p: Adam8bit(p)),
        ("bnb", lambda p: bnb.optim.Adam8bit(p)),
    ):
        params = [torch.nn.Parameter(torch.zeros(n)) for n in sizes]
        opt = factory(params)
        for p in params:
            p.grad = torch.ones_like(p)
        opt.step()
        counts[key] = state_breakdown(opt)
    n_8bit = sizes[0] + sizes[1]
    blocks = -(-sizes[0] // 256) + -(-sizes[1] // 256)
    assert counts["svlab"] == {
        "codes": 2 * n_8bit,
        "absmax": 2 * 4 * blocks,
        "fp32": 2 * 4 * sizes[2],
        "other": 0,
    }
    for kind in ("codes", "absmax", "fp32"):
        assert counts["bnb"][kind] == counts["svlab"][kind]
    assert counts["torch"]["fp32"] == 2 * 4 * sum(sizes)
    ratio = sum(counts["svlab"].values()) / sum(counts["torch"].values())
    assert 0.25 < ratio < 0.27
    assert state_bytes(opt) == sum(counts["bnb"].values())
