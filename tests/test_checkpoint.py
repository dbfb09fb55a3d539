"""Tests for svlab.checkpoint: atomic writes, weights-only loads, model round trips, mismatches."""

import pickle

import pytest
import torch

from svlab import checkpoint
from svlab.models import available, build

TINY = {
    "resnet": dict(base_width=2, depths=[1, 1, 1, 1], embed_dim=8),
    "dfresnet": dict(base_width=2, depths=[1, 1, 1, 1], embed_dim=8),
    "ecapa": dict(channels=8, mfa_channels=12, embed_dim=8, scale=4),
}


def tiny_overrides(name):
    return next(v for k, v in TINY.items() if name.startswith(k))


@pytest.mark.parametrize("name", [n for n in available() if not n.startswith("rev_")])
def test_model_round_trip(tmp_path, name):
    torch.manual_seed(0)
    model = build(name, **tiny_overrides(name)).eval()
    path = checkpoint.save_model(tmp_path / "m.pt", model, name, tiny_overrides(name), eer=0.1)
    loaded = checkpoint.load_model(path, name).eval()
    x = torch.randn(2, 30, 80)
    assert torch.equal(model(x), loaded(x))
    assert checkpoint.load(path)["meta"] == {"eer": 0.1}


def test_other_architecture_is_refused(tmp_path):
    path = checkpoint.save_model(
        tmp_path / "m.pt", build("resnet18", **TINY["resnet"]), "resnet18", TINY["resnet"]
    )
    with pytest.raises(ValueError, match="holds a 'resnet18' model, not 'ecapa_c512'"):
        checkpoint.load_model(path, "ecapa_c512")


def test_weights_that_do_not_fit_are_explained(tmp_path):
    model = build("resnet18", **TINY["resnet"])
    path = checkpoint.save_model(tmp_path / "m.pt", model, "resnet18", {**TINY["resnet"]})
    state = checkpoint.load(path)
    state["overrides"]["embed_dim"] = 16  # the file now claims another shape
    checkpoint.save(path, state)
    with pytest.raises(ValueError, match="weights do not fit 'resnet18'"):
        checkpoint.load_model(path)


def test_not_a_model_checkpoint(tmp_path):
    checkpoint.save(tmp_path / "x.pt", {"w": torch.ones(1)})
    with pytest.raises(ValueError, match="not an svlab model checkpoint"):
        checkpoint.load_model(tmp_path / "x.pt")


def test_failed_save_keeps_the_old_file(tmp_path):
    path = checkpoint.save(tmp_path / "x.pt", {"w": torch.ones(2)})

    class Unpicklable:
        def __reduce__(self):
            raise pickle.PicklingError("no")

    with pytest.raises(pickle.PicklingError):
        checkpoint.save(path, {"w": Unpicklable()})
    assert checkpoint.load(path)["w"].tolist() == [1.0, 1.0]
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]  # no temporary file left


def test_loading_refuses_arbitrary_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"f": print}, path)
    with pytest.raises(pickle.UnpicklingError):
        checkpoint.load(path)
