"""Unit-wise recomputation: gradients against autograd, chunks, dropout, autocast, peaks."""

import copy

import pytest
import torch
from torch import nn

import svlab.models
import svlab.models.units
from svlab.memory import project
from svlab.models.resnet import conv_bn
from svlab.models.reversible import (
    ReversibleSequence,
    basic_coupling,
    depth_first_coupling,
    set_memory_saving,
    set_recompute,
)
from svlab.models.units import chain_vjp, recomputed, units_of

torch.set_num_threads(1)
REVERSIBLE = [
    "rev_resnet18", "rev_resnet34", "rev_dfresnet56", "rev_dfresnet110", "rev_dfresnet233"
]


def randomise_batchnorms(model: nn.Module) -> nn.Module:
    """Affine weights away from 1 and 0 and running statistics away from 0 and 1, so that a
    wrong formula cannot hide behind an identity."""
    generator = torch.Generator().manual_seed(1)
    for layer in model.modules():
        if isinstance(layer, nn.BatchNorm2d):
            for tensor, low, high in ((layer.weight, 0.5, 1.5), (layer.bias, -0.3, 0.3),
                                      (layer.running_mean, -0.2, 0.2), (layer.running_var, 0.5, 2)):
                tensor.data.copy_(torch.empty_like(tensor).uniform_(low, high, generator=generator))
    return model


def gradients(model: nn.Module, x: torch.Tensor, weight: torch.Tensor, seed: int = 1):
    """d sum(weight * model(x)) / d (x, every parameter), the forward pass seeded."""
    model.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    torch.manual_seed(seed)
    (model(x) * weight).sum().backward()
    return [x.grad] + [p.grad for p in model.parameters()]


def relative_error(got, expected) -> float:
    return max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(got, expected,
                                                                             strict=True))


@pytest.mark.parametrize("name", REVERSIBLE)
@pytest.mark.parametrize("train", [True, False])
def test_every_reversible_model_has_ordinary_autograds_gradients(name, train):
    torch.manual_seed(0)
    model = svlab.models.build(name, base_width=4, feat_dim=16, embed_dim=8).double()
    model = randomise_batchnorms(model).train(train)
    ordinary = set_memory_saving(copy.deepcopy(model), False)
    unit = set_recompute(copy.deepcopy(model), "unit")
    x, weight = torch.randn(3, 20, 16, dtype=torch.float64), torch.randn(3, 8, dtype=torch.float64)
    assert relative_error(gradients(unit, x, weight), gradients(ordinary, x, weight)) < 1e-8
    for (key, a), b in zip(unit.state_dict().items(), ordinary.state_dict().values(),
                           strict=True):
        assert torch.equal(a, b) or torch.allclose(a, b, rtol=1e-12), key  # statistics: once


def test_the_branch_grain_is_still_what_it_was():
    model = svlab.models.build("rev_dfresnet56", base_width=4, feat_dim=16, embed_dim=8)
    assert model.recompute == "branch" and model.stages[0][1].grain == "branch"
    with pytest.raises(ValueError, match="recompute must be one of"):
        set_recompute(model, "layer")


def test_chunks_change_nothing(monkeypatch):
    torch.manual_seed(0)
    layers = nn.Sequential(conv_bn(3, 12), nn.ReLU(), conv_bn(12, 12, groups=12), nn.ReLU(),
                           conv_bn(12, 3, kernel=1)).double()
    randomise_batchnorms(layers)
    x = torch.randn(7, 3, 6, 5, dtype=torch.float64)
    grad = torch.randn(7, 3, 6, 5, dtype=torch.float64)
    whole = chain_vjp(units_of(layers), x, grad)
    sample_bytes = x[0].nbytes * 4  # the widest tensor of one sample
    monkeypatch.setattr(svlab.models.units, "CHUNK_BYTES", 2 * sample_bytes)  # chunks of 2
    chunked = chain_vjp(units_of(layers), x, grad)
    assert torch.allclose(chunked[0], whole[0], rtol=1e-12, atol=1e-12)
    for key, value in whole[1].items():
        assert torch.allclose(chunked[1][key], value, rtol=1e-12, atol=1e-12)
    expected = torch.autograd.grad(layers(x.requires_grad_()), x, grad)[0]
    assert torch.allclose(chunked[0], expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("coupling", [basic_coupling, depth_first_coupling])
def test_dropout_masks_are_replayed(coupling):
    torch.manual_seed(0)
    seq = ReversibleSequence([coupling(4, dropout=0.5) for _ in range(3)]).double()
    ordinary = set_memory_saving(copy.deepcopy(seq), False)
    unit = set_recompute(copy.deepcopy(seq), "unit")
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    weight = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    assert relative_error(gradients(unit, x, weight), gradients(ordinary, x, weight)) < 1e-10
    unit.preserve_rng_state = False  # without the replay the masks differ, and so do gradients
    assert relative_error(gradients(unit, x, weight), gradients(ordinary, x, weight)) > 1e-3


def test_autocast_is_replayed():
    torch.manual_seed(0)
    seq = ReversibleSequence([basic_coupling(8) for _ in range(2)])
    ordinary = set_memory_saving(copy.deepcopy(seq), False)
    unit = set_recompute(copy.deepcopy(seq), "unit")
    conv_types = []
    unit.blocks[0].f[0][0].register_forward_hook(lambda m, i, out: conv_types.append(out.dtype))
    x, weight = torch.randn(16, 8, 6, 6), torch.randn(16, 8, 6, 6)
    exact = gradients(ordinary, x, weight)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, autocast = gradients(unit, x, weight), gradients(ordinary, x, weight)
    assert len(conv_types) > 2 and set(conv_types) == {torch.bfloat16}  # backward too
    # bfloat16 keeps 8 significant bits: ordinary autocast is 0.17 off float32 here, the
    # unit-wise backward (its BatchNorm arithmetic in float32) no further
    assert relative_error(got, exact) <= 1.2 * relative_error(autocast, exact)


def test_frozen_weights_and_an_input_without_grad():
    torch.manual_seed(0)
    model = set_recompute(svlab.models.build("rev_resnet18", base_width=4, feat_dim=16), "unit")
    frozen = [model.stem[0][0].weight, model.stages[0][0].blocks[0].f[0][0].weight]
    for p in frozen:
        p.requires_grad_(False)
    model(torch.randn(2, 20, 16)).sum().backward()
    assert all(p.grad is None for p in frozen)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_layers_that_are_not_units_are_refused():
    with pytest.raises(ValueError, match="found Linear"):
        units_of(nn.Sequential(conv_bn(2, 2), nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="no conv-BatchNorm unit"):
        units_of(nn.Sequential(nn.Conv2d(2, 2, 3)))
    x = torch.randn(1, 2, 4, 4, requires_grad=True)
    with pytest.raises(ValueError, match="found ReLU"):
        recomputed(nn.Sequential(nn.ReLU(), conv_bn(2, 2)), x)


def test_unit_grain_lowers_the_projected_peak_and_stays_flat_in_depth():
    settings = {"batch_size": 16, "frames": 200, "optimizer": "adam8bit"}  # 4 chunks a unit
    branch = project("rev_dfresnet56", **settings).attrs["peak_bytes"]
    unit = {name: project(name, recompute="unit", **settings).attrs["peak_bytes"]
            for name in ("rev_dfresnet56", "rev_dfresnet110")}
    assert unit["rev_dfresnet56"] < 0.6 * branch  # 594 MiB against 1078
    assert max(unit.values()) <= 1.05 * min(unit.values())
