"""Packed storage: bit packing, identical weights after a round trip, real bytes, bad files."""

import pytest
import torch
from torch import nn

from svlab import checkpoint
from svlab.models import build
from svlab.profiles import REPO_ROOT
from svlab.quant import quantize_model, quantizers
from svlab.quant.packed import (
    load_packed,
    model_size,
    pack_indices,
    packed_layer_bytes,
    save_packed,
    unpack_indices,
)

torch.set_num_threads(1)


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(6, 16, 3)
        self.bn = nn.BatchNorm1d(16)
        self.lstm = nn.LSTM(16, 8, batch_first=True)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, 6, T]
        h, _ = self.lstm(self.bn(self.conv(x)).transpose(1, 2))
        return self.fc(h[:, -1])


@pytest.mark.parametrize("bits", range(1, 9))
def test_pack_unpack_round_trip_against_a_plain_bit_string(bits):
    g = torch.Generator().manual_seed(bits)
    values = torch.randint(0, 2**bits, (1001,), generator=g)
    packed = pack_indices(values, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-1001 * bits // 8)
    bit_string = "".join(format(int(v), f"0{bits}b") for v in values)
    bit_string += "0" * (-len(bit_string) % 8)
    expected = [int(bit_string[i : i + 8], 2) for i in range(0, len(bit_string), 8)]
    assert packed.tolist() == expected
    assert unpack_indices(packed, bits, 1001).equal(values)


@pytest.mark.parametrize(
    "bits,granularity,method",
    [
        (1, "tensor", "kmeans"),
        (3, "channel", "kmeans"),
        (4, "tensor", "uniform"),
        (5, "channel", "uniform"),
        (8, "tensor", "kmeans"),
    ],
)
def test_round_trip_gives_identical_weights_and_outputs(tmp_path, bits, granularity, method):
    torch.manual_seed(0)
    fp32 = Small()
    with torch.no_grad():  # non-trivial BatchNorm statistics must come back too
        fp32.bn.running_mean.uniform_(-1, 1)
        fp32.bn.running_var.uniform_(0.5, 2)
    model = quantize_model(fp32, bits, granularity=granularity, method=method).eval()
    path = save_packed(model, tmp_path / "m.svq")
    back = load_packed(path, Small()).eval()
    for name, quantizer in quantizers(model).items():
        loaded = quantizers(back)[name]
        assert (loaded.bits, loaded.method, loaded.granularity) == (
            quantizer.bits,
            method,
            granularity,
        )
    for key, tensor in model.state_dict().items():
        if "parametrizations" not in key:
            assert back.state_dict()[key].equal(tensor), key
    for name in quantizers(model):
        module_name, _, attr = name.rpartition(".")
        assert getattr(back.get_submodule(module_name), attr).equal(
            getattr(model.get_submodule(module_name), attr)
        ), name
    x = torch.randn(2, 6, 9)
    assert back(x).equal(model(x))
    # the file holds the packed payload plus a small table
    payload = model_size(model)
    assert payload <= path.stat().st_size <= payload + 8000
    # saving the loaded model again gives the same payload
    assert model_size(back) == payload


def test_model_size_counts_indices_codebooks_and_the_rest():
    fp32 = Small()
    rest = sum(
        t.numel() * t.element_size()
        for k, t in fp32.state_dict().items()
        if k not in ("conv.weight", "lstm.weight_ih_l0", "lstm.weight_hh_l0", "fc.weight")
    )
    expected = rest + sum(packed_layer_bytes(n, 4) for n in (16 * 6 * 3, 32 * 16, 32 * 8, 4 * 8))
    assert model_size(fp32, 4) == expected
    assert model_size(quantize_model(fp32, 4)) == expected
    per_row = model_size(fp32, 4, granularity="channel")
    assert per_row - expected == 16 * 4 * (16 + 32 + 32 + 4 - 4)
    assert model_size(fp32) == sum(t.numel() * t.element_size() for t in fp32.state_dict().values())
    with pytest.raises(ValueError, match="fp32 model"):
        model_size(quantize_model(fp32, 4), 4)


def test_four_bit_file_of_a_registry_model_is_at_most_a_seventh(tmp_path):
    torch.manual_seed(0)
    overrides = {"base_width": 8}
    fp32 = build("resnet34", **overrides)
    fp32_file = checkpoint.save_model(tmp_path / "fp32.pt", fp32, "resnet34", overrides)
    quantized = quantize_model(fp32, 4)
    packed_file = save_packed(quantized, tmp_path / "q.svq", name="resnet34", overrides=overrides)
    ratio = packed_file.stat().st_size / fp32_file.stat().st_size
    assert ratio <= 1 / 7, ratio
    back = load_packed(packed_file, "resnet34")
    for key, tensor in quantized.state_dict().items():
        if key.endswith(".original"):
            continue
        assert back.state_dict()[key].equal(tensor), key
    for name in quantizers(quantized):
        module_name, _, attr = name.rpartition(".")
        assert getattr(back.get_submodule(module_name), attr).equal(
            getattr(quantized.get_submodule(module_name), attr)
        )
    with pytest.raises(ValueError, match="'resnet34' model, not 'ecapa_c512'"):
        load_packed(packed_file, "ecapa_c512")


def test_four_bit_file_of_the_tutorial_resnet_is_at_most_a_seventh(tmp_path):
    """Even at 118 k parameters, where BatchNorm and codebooks are 10% of the packed bytes."""
    path = REPO_ROOT / "checkpoints" / "tutorial_resnet.pt"
    fp32 = checkpoint.load_model(path)
    fp32_file = checkpoint.save(tmp_path / "fp32.pt", fp32.state_dict())  # the encoder alone
    packed_file = save_packed(quantize_model(fp32, 4), tmp_path / "q.svq")
    assert packed_file.stat().st_size <= fp32_file.stat().st_size / 7


def test_bad_files_are_named(tmp_path):
    model = quantize_model(Small(), 4)
    path = save_packed(model, tmp_path / "m.svq")
    data = path.read_bytes()
    truncated = tmp_path / "truncated.svq"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated.svq is not a readable packed model"):
        load_packed(truncated, Small())
    other = nn.Sequential(nn.Conv1d(6, 16, 3), nn.Linear(8, 4))
    with pytest.raises(ValueError, match="m.svq holds another model"):
        load_packed(path, other)
    wider = Small()
    wider.fc = nn.Linear(8, 5)
    with pytest.raises(ValueError, match=r"fc.weight is \(4, 8\) in the file, \(5, 8\)"):
        load_packed(path, wider)
    with pytest.raises(ValueError, match="records no model name"):
        load_packed(path, "resnet34")
    plain = tmp_path / "plain.pt"
    checkpoint.save(plain, {"w": torch.ones(2)})
    with pytest.raises(ValueError, match="plain.pt is not a packed svlab model"):
        load_packed(plain, Small())
