"""Unreadable files: each reader names the file and what is wrong, never suggests unsafe loading."""

import os

import pytest
import torch

from svlab import checkpoint
from svlab.cli import main
from svlab.models import build, load_pretrained
from svlab.quant import load_packed, quantize_model, save_packed


class Opaque:
    """Any object that is not a tensor or a plain container."""


def bad_files(tmp_path, good):
    """(name, path, what the error must say) for each way a file can be unreadable."""
    data = good.read_bytes()
    files = {
        "empty": (b"", "is empty"),
        "truncated": (data[: len(data) // 2], "is truncated or corrupt"),
        "random bytes": (os.urandom(4096), "is not a checkpoint"),
        "text": (b"weights: none\n", "is not a checkpoint"),
    }
    out = []
    for name, (content, message) in files.items():
        path = tmp_path / f"{name.replace(' ', '_')}{good.suffix}"
        path.write_bytes(content)
        out.append((name, path, message))
    objects = tmp_path / f"objects{good.suffix}"
    torch.save({"weights": torch.ones(2), "config": Opaque()}, objects)
    out.append(("objects", objects, "Python objects other than tensors"))
    return out


def check(error: Exception, path) -> None:
    text = str(error)
    assert str(path) in text
    assert "weights_only" not in text, text


@pytest.fixture
def model_file(tmp_path):
    model = build("resnet18", base_width=2, embed_dim=8)
    return checkpoint.save_model(tmp_path / "model.pt", model, "resnet18",
                                 {"base_width": 2, "embed_dim": 8})


def test_every_reader_names_the_file(tmp_path, model_file):
    readers = {
        "load": checkpoint.load,
        "load_model": checkpoint.load_model,
        "load_trained": checkpoint.load_trained,
        "load_pretrained": load_pretrained,
    }
    for name, path, message in bad_files(tmp_path, model_file):
        for reader_name, reader in readers.items():
            with pytest.raises(ValueError) as caught:
                reader(path)
            assert message in str(caught.value), (name, reader_name, str(caught.value))
            check(caught.value, path)


def test_packed_reader_names_the_file(tmp_path):
    model = build("resnet18", base_width=2, embed_dim=8)
    good = save_packed(quantize_model(model, 4), tmp_path / "model.svq")
    for name, path, message in bad_files(tmp_path, good):
        with pytest.raises(ValueError) as caught:
            load_packed(path, build("resnet18", base_width=2, embed_dim=8))
        assert message in str(caught.value), (name, str(caught.value))
        check(caught.value, path)


def test_wrong_model_is_named(tmp_path, model_file):
    with pytest.raises(ValueError, match="holds a 'resnet18' model, not 'resnet34'"):
        checkpoint.load_model(model_file, "resnet34")


def test_command_line_reports_a_bad_file_in_one_line(tmp_path, model_file, capsys):
    _, path, _ = bad_files(tmp_path, model_file)[1]  # truncated
    assert main(["export", str(path), "--onnx", str(tmp_path / "out.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(path) in err and "truncated or corrupt" in err
    assert not (tmp_path / "out.onnx").exists()
