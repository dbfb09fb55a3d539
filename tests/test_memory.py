"""Memory breakdown: byte counts vs hand counts, optimizer states vs bitsandbytes, projection."""

import bitsandbytes as bnb
import pytest
import torch
from torch import nn

import svlab.models
from svlab.losses import CosineClassifier
from svlab.memory import (
    breakdown,
    fits,
    project,
    projected_state_bytes,
    unique_bytes,
)
from svlab.memory.figures import long_table, stacked_bar
from svlab.memory.saved_tensors import SavedTensorRecorder, saved_by_module
from svlab.memory.step import CATEGORIES
from svlab.optim import make_optimizer, state_bytes

torch.set_num_threads(1)
SMALL = {"base_width": 4, "embed_dim": 16}


def test_unique_bytes_counts_shared_storage_once():
    w = torch.zeros(100)
    assert unique_bytes([w, w, w[10:20], w.view(10, 10)]) == 400
    assert unique_bytes([w, torch.zeros(3, dtype=torch.float16)]) == 406


def test_recorder_sees_what_conv_bn_relu_save():
    conv, bn = nn.Conv2d(2, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3)
    x = torch.randn(4, 2, 5, 5)
    with SavedTensorRecorder(exclude=[*conv.parameters(), *bn.parameters(), *bn.buffers()]) as rec:
        torch.relu(bn(conv(x)))
    feature_map = 4 * 3 * 5 * 5 * 4
    per_channel = 2 * 3 * 4  # BatchNorm's saved batch mean and inverse std
    # conv input, BN input (conv output), ReLU output, BN statistics
    assert rec.bytes == x.numel() * 4 + 2 * feature_map + per_channel


def test_recorder_ignores_parameters_and_no_grad():
    lin = nn.Linear(8, 8)
    with SavedTensorRecorder(exclude=lin.parameters()) as rec, torch.no_grad():
        lin(torch.ones(2, 8))
    assert rec.bytes == 0


def test_saved_by_module_splits_the_total():
    model = small_model("rev_resnet18")
    fbank = torch.randn(2, 20, 16)
    parts = saved_by_module(model, fbank, depth=3)
    with SavedTensorRecorder(exclude=[*model.parameters(), *model.buffers()]) as rec:
        model(fbank)
    assert parts.sum() == rec.bytes
    # a reversible stage saves only its output; its transition only the conv output for BN
    stage_output = 2 * 8 * 8 * 10 * 4  # batch 2, 8 channels, 16 / 2 bins, 20 / 2 frames
    assert parts["stages.1.1"] == stage_output
    assert parts["stages.1.0"] == stage_output + 2 * 8 * 4  # + BatchNorm's mean and inv std
    assert not any(name.startswith("stages.0.0.") for name in parts.index)


def small_model(name="resnet18"):
    torch.manual_seed(0)
    return svlab.models.build(name, feat_dim=16, **SMALL)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "sgd8bit", "adam8bit"])
def test_breakdown_counts_match_hand_counts(optimizer):
    model = small_model()
    head = CosineClassifier(model.embed_dim, num_classes=7)
    params = [*model.parameters(), *head.parameters()]
    opt = make_optimizer(params, optimizer, lr=0.1)
    batch = (torch.randn(3, 20, 16), torch.tensor([0, 3, 6]))
    breakdown(model, opt, batch, loss_fn=head, restore=False)  # warm-up: the states exist
    before = {k: v.clone() for k, v in model.state_dict().items()}
    table = breakdown(model, opt, batch, loss_fn=head)
    assert table.loc["parameters", "bytes"] == 4 * sum(
        t.numel() for t in [*params, *model.buffers()] if t.is_floating_point()
    ) + 8 * sum(1 for t in model.buffers() if not t.is_floating_point())
    assert 0 <= table.loc["gradients", "bytes"] <= 4 * sum(p.numel() for p in params)
    code_tables = {"sgd8bit": 1, "adam8bit": 2}.get(optimizer, 0)  # 256 float32 each
    assert table.loc["optimizer states", "bytes"] == state_bytes(opt) + code_tables * 1024
    assert table.loc["inputs", "bytes"] == 3 * 20 * 16 * 4 + 3 * 8
    assert table.loc["activations", "bytes"] > 0
    assert table["bytes"].sum() == table.attrs["peak_bytes"]
    # measuring put the model, the optimizer and the gradients back
    assert all(p.grad is not None for p in params)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_breakdown_without_restore_trains():
    model = small_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    weight = model.embedding.weight.detach().clone()
    breakdown(model, opt, torch.randn(2, 20, 16), restore=False)
    assert not torch.equal(weight, model.embedding.weight)


def bnb_state_bytes(numels, optimizer):
    params = [nn.Parameter(torch.randn(n)) for n in numels]
    opt = {"adam8bit": bnb.optim.Adam8bit, "sgd8bit": bnb.optim.SGD8bit}[optimizer](
        params, lr=0.01, **({"momentum": 0.9} if optimizer == "sgd8bit" else {})
    )
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    return state_bytes(opt)


@pytest.mark.parametrize("optimizer", ["adam8bit", "sgd8bit"])
def test_projected_8bit_states_match_bitsandbytes(optimizer):
    numels = [100, 4095, 4096, 5000, 70_001]
    assert projected_state_bytes(numels, optimizer) == bnb_state_bytes(numels, optimizer)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "sgd8bit", "adam8bit"])
def test_projected_states_match_svlab_optimizers(optimizer):
    numels = [100, 4095, 4096, 5000, 70_001]
    params = [nn.Parameter(torch.randn(n)) for n in numels]
    opt = make_optimizer(params, optimizer, lr=0.01)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    projected = projected_state_bytes(numels, optimizer)
    if optimizer.endswith("8bit"):  # svlab keeps the two 1 KiB code tables outside the state
        projected -= (2 if optimizer == "adam8bit" else 1) * 1024
    assert projected == state_bytes(opt)


@pytest.mark.parametrize("name", ["resnet18", "rev_resnet18", "dfresnet56", "rev_dfresnet56"])
def test_projection_matches_measurement_on_cpu(name):
    """The meta device's trace is the CPU trace of the same step, category by category."""
    model = small_model(name)
    head = CosineClassifier(model.embed_dim, num_classes=11)
    opt = make_optimizer([*model.parameters(), *head.parameters()], "adam8bit", lr=0.01)
    batch = (torch.randn(4, 24, 16), torch.randint(0, 11, (4,)))
    breakdown(model, opt, batch, loss_fn=head, restore=False)  # warm-up, as project does
    measured = breakdown(model, opt, batch, loss_fn=head)
    projected = project(
        name, batch_size=4, frames=24, optimizer="adam8bit", feat_dim=16, num_classes=11, **SMALL
    )
    assert projected.attrs["peak_bytes"] == pytest.approx(measured.attrs["peak_bytes"], rel=0.01)
    for category in CATEGORIES:
        assert projected.loc[category, "bytes"] == pytest.approx(
            measured.loc[category, "bytes"], rel=0.03, abs=64
        ), category


def test_reversible_projection_is_much_smaller_at_paper_size():
    vanilla = project("resnet34", batch_size=8, optimizer="adam")["bytes"]
    reversible = project("rev_resnet34", batch_size=8, optimizer="adam8bit")["bytes"]
    assert reversible.sum() < vanilla.sum() / 2
    assert reversible["optimizer states"] < 0.3 * vanilla["optimizer states"]
    assert reversible["recomputed"] > 0 == vanilla["recomputed"]


def test_project_rejects_bad_settings():
    with pytest.raises(ValueError, match="unknown optimizer 'lamb'"):
        project("resnet18", optimizer="lamb")
    with pytest.raises(ValueError, match="batch_size and frames must be positive"):
        project("resnet18", batch_size=0)
    with pytest.raises(ValueError, match="unknown model"):
        project("resnet99")


def test_fits_and_plots():
    small = project("resnet18", batch_size=2, frames=50, num_classes=0)
    huge = project("dfresnet233", batch_size=64, frames=200)
    assert fits(small) and not fits(huge)
    tables = {"small": small, "huge": huge}
    data = long_table(tables)
    assert set(data["setting"]) == {"small", "huge"} and len(data) == 2 * len(CATEGORIES)
    fig = stacked_bar(tables)
    assert fig.layout.barmode == "stack" and len(fig.data) == len(CATEGORIES)
    assert fig.layout.shapes[0].y0 == pytest.approx(11.0)
    total = sum(trace.y[1] for trace in fig.data)
    assert total == pytest.approx(huge["bytes"].sum() / 2**30)


@pytest.mark.parametrize("optimizer", ["adam", "adam8bit"])
def test_breakdown_restores_an_optimizer_that_has_state(optimizer):
    model = small_model()
    opt = make_optimizer(model.parameters(), optimizer, lr=0.01)
    fbank = torch.randn(2, 20, 16)
    model(fbank).square().mean().backward()
    opt.step()
    grads = [p.grad.clone() for p in model.parameters()]
    before = [{k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()}
              for s in opt.state_dict()["state"].values()]
    table = breakdown(model, opt, fbank)
    after = list(opt.state_dict()["state"].values())
    for old, new in zip(before, after, strict=True):
        for key, value in old.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(new[key])), key
    for p, g in zip(model.parameters(), grads, strict=True):
        assert torch.equal(p.grad, g)
    code_tables = {"adam8bit": 2}.get(optimizer, 0)  # 256 float32 each, shared by all states
    assert table.loc["optimizer states", "bytes"] == state_bytes(opt) + code_tables * 1024


def test_svlab_memory_command(capsys):
    from svlab.cli import main

    assert main(["memory", "--model", "rev_resnet34", "--optimizer", "adam8bit"]) == 0
    out = capsys.readouterr().out
    assert "rev_resnet34, batch 128 x 200 frames, adam8bit" in out
    assert "fits on an 11 GiB 2080Ti: True" in out
    with pytest.raises(SystemExit):
        main(["memory", "--model", "nope"])
    assert "invalid choice: 'nope'" in capsys.readouterr().err
