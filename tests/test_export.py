"""ONNX export: onnxruntime against svlab's own forward pass, file sizes, bad input, the CLI."""

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper
from torch import nn
from torch.nn.utils import parametrize

from svlab.checkpoint import save_model
from svlab.cli import main
from svlab.export import onnx_session, to_onnx
from svlab.models import build, load_pretrained
from svlab.quant import (
    binarize,
    binarizers,
    latent_weight,
    quantize_model,
    quantizers,
    save_binary,
    save_packed,
)

TOLERANCE = 1e-5
SMALL = {
    "resnet": ("resnet34", {"base_width": 4, "embed_dim": 16}),
    "ecapa": (
        "ecapa_c512",
        {"channels": 16, "scale": 4, "se_channels": 8, "mfa_channels": 24,
         "attention_channels": 8, "embed_dim": 16},
    ),
    "dfresnet": ("dfresnet56", {"base_width": 4, "depths": (1, 1, 2, 1), "embed_dim": 16}),
}
MIXED = {
    "resnet": {"stem*": 8, "stages.0*": 2, "stages.1*": 3, "*": 5},
    "ecapa": {"stem*": 8, "blocks.0*": 2, "blocks.1*": 3, "*": 4},
    "dfresnet": {"stem*": 8, "stages.0*": 1, "stages.2*": 7, "*": 6},
}


def small_model(kind: str) -> nn.Module:
    """A tiny model with random BatchNorm statistics and affine parameters, in eval mode."""
    torch.manual_seed(0)
    name, overrides = SMALL[kind]
    model = build(name, **overrides)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
    return model.eval()


def calibrate_batchnorm(model: nn.Module) -> None:
    """BatchNorm statistics of one batch, so that +-1 weights do not overflow 34 layers."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    with torch.no_grad():
        model.train()(fbank(8, 100))
    model.eval()


def fbank(batch: int = 3, frames: int = 137) -> torch.Tensor:
    """Frames other than the 100 the export traces with, to exercise the dynamic axes."""
    return torch.randn(batch, frames, 80, generator=torch.Generator().manual_seed(1))


def assert_same_embeddings(model: nn.Module, path) -> None:
    x = fbank()
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    got = onnx_session(path).run(None, {"fbank": x.numpy()})[0]
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= TOLERANCE * np.abs(expected).max()


def rebuilt_weights(path, names) -> dict[str, np.ndarray]:
    """The weights the graph rebuilds, read back as extra graph outputs by onnxruntime."""
    proto = onnx.load(path)
    for name in names:
        proto.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    extended = path.with_suffix(".outputs.onnx")
    onnx.save(proto, extended)
    outputs = onnx_session(extended).run(list(names), {"fbank": fbank(1, 5).numpy()})
    return dict(zip(names, outputs, strict=True))


@pytest.mark.parametrize(
    "kind, method, granularity, bits",
    [
        ("resnet", "kmeans", "tensor", 4),
        ("resnet", "uniform", "channel", "mixed"),
        ("ecapa", "kmeans", "channel", "mixed"),
        ("ecapa", "uniform", "tensor", 3),
        ("dfresnet", "kmeans", "tensor", "mixed"),
        ("dfresnet", "uniform", "channel", 2),
    ],
)
def test_quantized_models_match_svlab(tmp_path, kind, method, granularity, bits):
    plan = MIXED[kind] if bits == "mixed" else bits
    model = quantize_model(small_model(kind), plan, method=method, granularity=granularity)
    path = to_onnx(model, tmp_path / "m.onnx")
    assert_same_embeddings(model, path)
    initializers = {init.name: init for init in onnx.load(path).graph.initializer}
    for name, quantizer in quantizers(model).items():
        assert name not in initializers  # stored as packed indices, not as fp32 values
        count = latent_weight(model, name).numel()
        expected = count if quantizer.bits == 8 else math.ceil(count / 8) * quantizer.bits
        assert initializers[f"{name}::packed"].data_type == onnx.TensorProto.UINT8
        assert math.prod(initializers[f"{name}::packed"].dims) == expected


@pytest.mark.parametrize(
    "scheme, granularity", [("sign", "tensor"), ("static", "channel"), ("adaptive", "channel")]
)
def test_binary_models_match_svlab(tmp_path, scheme, granularity):
    model = binarize(small_model("resnet"), scheme, granularity=granularity)
    if scheme == "adaptive":  # learned scales and thresholds away from their starting values
        with torch.no_grad():
            for binarizer in binarizers(model).values():
                binarizer.log_scale.add_(torch.randn_like(binarizer.log_scale) * 0.3)
                binarizer.threshold.normal_(0, 0.5)
    calibrate_batchnorm(model)
    path = to_onnx(model, tmp_path / "b.onnx")
    assert_same_embeddings(model, path)
    names = list(binarizers(model))
    modules = {name: name.rpartition(".")[0] for name in names}
    for name, got in rebuilt_weights(path, names).items():
        weight = model.get_submodule(modules[name]).weight.detach().numpy()
        assert np.array_equal(got, weight)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("method, granularity", [("kmeans", "channel"), ("uniform", "tensor")])
def test_every_width_rebuilds_the_weights_exactly(tmp_path, bits, method, granularity):
    torch.manual_seed(bits)
    net = nn.Sequential(nn.Linear(80, 37), nn.ReLU(), nn.Linear(37, 11))
    model = quantize_model(net, {"0": bits, "2": 9 - bits}, method=method, granularity=granularity)
    path = to_onnx(model, tmp_path / "m.onnx")
    for name, got in rebuilt_weights(path, ["0.weight", "2.weight"]).items():
        assert np.array_equal(got, model.get_submodule(name[0]).weight.detach().numpy())


def test_quantized_file_is_near_the_packed_size(tmp_path):
    torch.manual_seed(0)
    fp32 = build("resnet18", base_width=16, embed_dim=32)
    model = quantize_model(fp32, 4)
    quantized = to_onnx(model, tmp_path / "q.onnx").stat().st_size
    packed = save_packed(model, tmp_path / "q.svq").stat().st_size
    with pytest.warns(UserWarning):
        full = to_onnx(fp32, tmp_path / "f.onnx").stat().st_size
    assert quantized <= 1.15 * packed
    assert full >= 6 * quantized


def test_fp32_export_warns_and_matches(tmp_path):
    model = small_model("ecapa")
    with pytest.warns(UserWarning, match="nothing is compressed"):
        path = to_onnx(model, tmp_path / "f.onnx")
    assert_same_embeddings(model, path)


def test_export_leaves_the_model_unchanged(tmp_path):
    model = quantize_model(small_model("resnet"), 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    to_onnx(model, tmp_path / "m.onnx")
    assert list(quantizers(model)) and model.state_dict().keys() == before.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_nan_weights_name_the_layer_and_write_nothing(tmp_path):
    model = quantize_model(small_model("resnet"), 4)
    with torch.no_grad():
        latent_weight(model, "stages.1.0.branch.0.0.weight")[0, 0, 0, 0] = float("nan")
    path = tmp_path / "m.onnx"
    path.write_bytes(b"previous")
    with pytest.raises(ValueError, match=r"stages\.1\.0\.branch\.0\.0\.weight \(latent\)"):
        to_onnx(model, path)
    assert path.read_bytes() == b"previous"
    fp32 = small_model("ecapa")
    fp32.bn.running_var[3] = float("inf")
    with pytest.raises(ValueError, match=r"bn\.running_var"):
        to_onnx(fp32, tmp_path / "f.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


class RecurrentModel(nn.Module):
    """fbank -> LSTM -> mean over time: a quantized LSTM weight ONNX lays out anew."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(80, 8, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lstm(x)[0].mean(dim=1)


class Doubled(nn.Module):
    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return 2 * weight


def test_unsupported_layers_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"lstm\.weight_ih_l0: .*LSTM cannot be exported"):
        to_onnx(quantize_model(RecurrentModel(), 4), tmp_path / "r.onnx")
    net = nn.Sequential(nn.Linear(80, 4))
    parametrize.register_parametrization(net[0], "weight", Doubled())
    with pytest.raises(ValueError, match=r"0\.weight: parametrized by \['Doubled'\]"):
        to_onnx(net, tmp_path / "d.onnx")
    assert not list(tmp_path.iterdir())


def test_unwritable_path_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    model = quantize_model(nn.Sequential(nn.Linear(80, 4)), 2)
    with pytest.raises(ValueError, match=f"cannot write {blocker}/m.onnx"):
        to_onnx(model, blocker / "m.onnx")


def test_a_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"previous")

    def broken_fsync(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("svlab.export.os.fsync", broken_fsync)
    with pytest.raises(ValueError, match="disk full"):
        to_onnx(quantize_model(nn.Sequential(nn.Linear(80, 4)), 2), path)
    assert path.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_cli_exports_packed_files_and_checkpoints(tmp_path, capsys):
    name, overrides = SMALL["dfresnet"]
    model = quantize_model(small_model("dfresnet"), 3, granularity="channel")
    svq = save_packed(model, tmp_path / "m.svq", name=name, overrides=overrides)
    assert main(["export", str(svq), "--onnx", str(tmp_path / "p.onnx")]) == 0
    assert_same_embeddings(model, tmp_path / "p.onnx")
    ckpt = save_model(tmp_path / "m.pt", small_model("dfresnet"), name, overrides)
    args = ["export", str(ckpt), "--onnx", str(tmp_path / "c.onnx"), "--bits", "4", "--check"]
    assert main(args) == 0
    assert "max relative difference" in capsys.readouterr().out
    props = {p.key: p.value for p in onnx.load(tmp_path / "c.onnx").metadata_props}
    assert set(json.loads(props["svlab.bits"]).values()) == {4}
    assert main(["export", str(ckpt), "--onnx", str(tmp_path / "f.onnx")]) == 0
    errors = capsys.readouterr().err
    assert "svlab export: warning: " in errors and "nothing is compressed" in errors
    assert "UserWarning" not in errors and "warnings.warn" not in errors  # one line, no source


def test_cli_refuses_files_it_cannot_export(tmp_path, capsys):
    text = tmp_path / "notes.pt"
    torch.save({"format": "something else"}, text)
    assert main(["export", str(text), "--onnx", str(tmp_path / "x.onnx")]) == 2
    assert f"{text} is neither an svlab model checkpoint" in capsys.readouterr().err
    binary = save_binary(tmp_path / "b.pt", binarize(nn.Sequential(nn.Linear(80, 4)), "sign"))
    assert main(["export", str(binary), "--onnx", str(tmp_path / "x.onnx")]) == 2
    assert "records no architecture" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


FIXTURES = Path(__file__).parent / "fixtures"


def speechbrain_checkpoint(tmp_path) -> Path:
    """A small SpeechBrain ECAPA_TDNN with random weights, saved as embedding_model.ckpt."""
    from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN

    torch.manual_seed(0)
    reference = ECAPA_TDNN(80, channels=[16, 16, 16, 16, 48], lin_neurons=8,
                           attention_channels=8, res2net_scale=4, se_channels=8)
    path = tmp_path / "embedding_model.ckpt"
    torch.save(reference.state_dict(), path)
    return path


@pytest.mark.parametrize("source", ["wespeaker", "speechbrain"])
def test_models_loaded_from_other_toolkits_export(tmp_path, source):
    """A wespeaker ResNet34 layout (the fixture) and a SpeechBrain ECAPA-TDNN (reflection
    padding, its own pooling), loaded, quantized to 4 bits and exported, match svlab."""
    path = (FIXTURES / "wespeaker_resnet34_m4_avg_model.pt" if source == "wespeaker"
            else speechbrain_checkpoint(tmp_path))
    model = load_pretrained(path).eval()
    quantized = quantize_model(model, 4)
    assert_same_embeddings(quantized, to_onnx(quantized, tmp_path / "m.onnx"))
