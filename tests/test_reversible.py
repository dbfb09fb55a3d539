"""Reversible couplings: inverse, gradients vs ordinary autograd, BatchNorm, dropout, memory."""

import copy
import gc
import weakref

import pytest
import torch
from torch import nn

import svlab.checkpoint
import svlab.models
from svlab.memory.saved_tensors import SavedTensorRecorder
from svlab.models.reversible import (
    Coupling,
    ReversibleSequence,
    RevResNet,
    basic_coupling,
    depth_first_coupling,
    set_memory_saving,
)

torch.set_num_threads(1)


def small_sequence(kind: str, n: int = 2, dtype=torch.float64, dropout=0.0, **kwargs):
    torch.manual_seed(0)
    make = {
        "basic": lambda: basic_coupling(4, hidden=3, dropout=dropout),
        "depth_first": lambda: depth_first_coupling(4, expansion=1, dropout=dropout),
    }[kind]
    return ReversibleSequence([make() for _ in range(n)], **kwargs).to(dtype)


def gradients(module: nn.Module, x: torch.Tensor, weight: torch.Tensor, seed: int = 1):
    """Gradients of sum(weight * module(x)) w.r.t. x and the parameters (seeded forward)."""
    x = x.detach().clone().requires_grad_()
    torch.manual_seed(seed)
    (module(x) * weight).sum().backward()
    return [x.grad] + [p.grad for p in module.parameters()]


@pytest.mark.parametrize("kind", ["basic", "depth_first"])
def test_gradcheck_float64(kind):
    seq = small_sequence(kind)
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    params = list(seq.parameters())
    assert torch.autograd.gradcheck(lambda x, *p: seq(x), (x, *params), fast_mode=True)


@pytest.mark.parametrize("kind", ["basic", "depth_first"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_gradients_match_ordinary_execution(kind, dtype, tol):
    reversible = small_sequence(kind, n=4, dtype=dtype)
    ordinary = set_memory_saving(copy.deepcopy(reversible), False)
    x = torch.randn(3, 4, 5, 6, dtype=dtype)
    weight = torch.randn(3, 4, 5, 6, dtype=dtype)
    for a, b in zip(gradients(reversible, x, weight), gradients(ordinary, x, weight), strict=True):
        assert (a - b).abs().max() <= tol * (1 + b.abs().max())


def test_outputs_match_ordinary_execution_and_invert():
    seq = small_sequence("basic", n=3)
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    y = seq(x)
    assert y.grad_fn is not None and "Reversible" in type(y.grad_fn).__name__
    with torch.no_grad():
        assert torch.allclose(y, set_memory_saving(copy.deepcopy(seq), False)(x))
        assert torch.allclose(seq.inverse(y), x)


def test_batchnorm_statistics_updated_once():
    reversible = small_sequence("depth_first", n=3, dtype=torch.float32)
    ordinary = set_memory_saving(copy.deepcopy(reversible), False)
    x, weight = torch.randn(4, 4, 5, 5), torch.randn(4, 4, 5, 5)
    gradients(reversible, x, weight)
    gradients(ordinary, x, weight)
    for (name, a), b in zip(reversible.named_buffers(), ordinary.buffers(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name
        if name.endswith("num_batches_tracked"):
            assert a.item() == 1


@pytest.mark.parametrize("kind", ["basic", "depth_first"])
def test_dropout_rng_is_replayed(kind):
    reversible = small_sequence(kind, n=3, dropout=0.5)
    ordinary = set_memory_saving(copy.deepcopy(reversible), False)
    x = torch.randn(2, 4, 4, 4, dtype=torch.float64)
    weight = torch.randn(2, 4, 4, 4, dtype=torch.float64)
    expected = gradients(ordinary, x, weight)
    for a, b in zip(gradients(reversible, x, weight), expected, strict=True):
        assert torch.allclose(a, b, atol=1e-10)
    # without replaying the RNG the recomputed dropout masks differ and so do the gradients
    reversible.preserve_rng_state = False
    replay_off = gradients(reversible, x, weight)
    assert not all(torch.allclose(a, b) for a, b in zip(replay_off, expected, strict=True))


def test_rng_stream_continues_as_without_recomputation():
    seq = small_sequence("basic", dropout=0.5)
    x = torch.randn(2, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(5)
    seq(x).sum().backward()
    after_reversible = torch.rand(3)
    torch.manual_seed(5)
    set_memory_saving(seq, False)(x).sum().backward()
    assert torch.equal(after_reversible, torch.rand(3))


def test_autocast_is_replayed_in_the_recomputation():
    reversible = small_sequence("basic", n=3, dtype=torch.float32)
    ordinary = set_memory_saving(copy.deepcopy(reversible), False)
    x, weight = torch.randn(2, 4, 5, 5), torch.randn(2, 4, 5, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = gradients(ordinary, x, weight)
        got = gradients(reversible, x, weight)
    for a, b in zip(got, expected, strict=True):
        assert (a - b).abs().max() <= 1e-5 * (1 + b.abs().max())


def saved_bytes(module: nn.Module, x: torch.Tensor) -> int:
    with SavedTensorRecorder(exclude=list(module.parameters()) + list(module.buffers())) as rec:
        module(x)
    return rec.bytes


def test_saved_activations_flat_with_depth():
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    output_bytes = x.numel() * 4
    for n in (1, 2, 8):
        seq = small_sequence("basic", n=n, dtype=torch.float32)
        assert saved_bytes(seq, x) == output_bytes  # the last output only
        assert saved_bytes(set_memory_saving(seq, False), x) > 5 * n * output_bytes / 2


def test_inputs_are_freed_and_training_step_works():
    seq = small_sequence("basic", n=3, dtype=torch.float32)
    source = torch.randn(2, 4, 5, 5, requires_grad=True)
    hidden = source * 2  # a non-leaf input that only the sequence could keep alive
    probe = weakref.ref(hidden)
    y = seq(hidden)
    del hidden
    gc.collect()
    assert probe() is None
    y.sum().backward()
    assert source.grad is not None and all(p.grad is not None for p in seq.parameters())


def test_frozen_parameters_get_no_gradient():
    seq = small_sequence("basic", dtype=torch.float32)
    frozen = seq.blocks[0].f[0][0].weight
    frozen.requires_grad_(False)
    x = torch.randn(2, 4, 3, 3, requires_grad=True)
    seq(x).sum().backward()
    assert frozen.grad is None and x.grad is not None
    assert seq.blocks[0].g[0][0].weight.grad is not None


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="even width"):
        basic_coupling(5)
    with pytest.raises(ValueError, match="at least one coupling"):
        ReversibleSequence([])
    with pytest.raises(ValueError, match="block 1 is a Linear"):
        ReversibleSequence([basic_coupling(2), nn.Linear(2, 2)])
    with pytest.raises(ValueError, match="even number of channels"):
        Coupling(nn.Identity(), nn.Identity())(torch.zeros(1, 3, 2, 2))
    with pytest.raises(ValueError, match="needs a transition"):
        svlab.models.reversible.reversible_stage(basic_coupling, 4, 8, 1, 1, transition=False)


@pytest.mark.parametrize(
    "name,twin",
    [
        ("rev_resnet18", "resnet18"),
        ("rev_resnet34", "resnet34"),
        ("rev_dfresnet56", "dfresnet56"),
        ("rev_dfresnet110", "dfresnet110"),
        ("rev_dfresnet233", "dfresnet233"),
    ],
)
def test_registered_models_match_their_twins_parameter_count(name, twin):
    assert name in svlab.models.available()
    with torch.device("meta"):
        ours = svlab.models.count_parameters(svlab.models.build(name))
        theirs = svlab.models.count_parameters(svlab.models.build(twin))
    assert abs(ours / theirs - 1) < 0.05


@pytest.mark.parametrize("name", ["rev_resnet18", "rev_dfresnet56"])
def test_small_reversible_models_train_like_ordinary_execution(name):
    torch.manual_seed(0)
    model = svlab.models.build(name, base_width=4, feat_dim=16, embed_dim=8).double()
    ordinary = set_memory_saving(copy.deepcopy(model), False)
    fbank = torch.randn(3, 20, 16, dtype=torch.float64)
    for net in (model, ordinary):
        net(fbank).square().sum().backward()
    for (pname, a), b in zip(model.named_parameters(), ordinary.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-9), pname


def test_reversible_model_caches_far_less_than_vanilla():
    torch.manual_seed(0)
    fbank = torch.randn(2, 40, 16)
    small = {"base_width": 8, "feat_dim": 16, "embed_dim": 8}
    vanilla = saved_bytes(svlab.models.build("resnet34", **small), fbank)
    reversible = saved_bytes(svlab.models.build("rev_resnet34", **small), fbank)
    assert reversible < vanilla / 4
    assert isinstance(svlab.models.build("rev_resnet18"), RevResNet)


def test_svlab_train_trains_a_reversible_model(tmp_path, training_corpus):
    from svlab.cli import main

    corpus = training_corpus
    recipe = tmp_path / "rev.toml"
    recipe.write_text(
        'model = "rev_resnet18"\n'
        f'data_root = "{corpus}"\n'
        f'out_dir = "{tmp_path / "run"}"\n'
        "crop_frames = 20\nbatch_size = 4\nepochs = 2\nlr = 0.05\neval_every = 2\n"
        "[model_args]\nbase_width = 2\ndepths = [1, 1, 1, 1]\nembed_dim = 8\n"
    )
    assert main(["train", "--config", str(recipe), "--quiet"]) == 0
    model = svlab.checkpoint.load_model(tmp_path / "run" / "model.pt")
    assert isinstance(model, RevResNet)
    assert all(torch.isfinite(p).all() for p in model.parameters())
