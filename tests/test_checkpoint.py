"""Tests for svlab.checkpoint: atomic writes, weights-only loads, model round trips, mismatches."""

import json
import pickle
import subprocess
import sys

import pytest
import torch

from svlab import checkpoint
from svlab.evaluate import EvalSet
from svlab.models import available, build
from svlab.profiles import REPO_ROOT, get_profile

TINY = {
    "resnet": dict(base_width=2, depths=[1, 1, 1, 1], embed_dim=8),
    "dfresnet": dict(base_width=2, depths=[1, 1, 1, 1], embed_dim=8),
    "ecapa": dict(channels=8, mfa_channels=12, embed_dim=8, scale=4),
    "campplus": dict(head_width=4, init_channels=16, growth_rate=4, dense_layers=[1, 1, 1],
                     embed_dim=8),
    "eres2net": dict(m_channels=4, depths=[1, 1, 1, 1], embed_dim=8),  # and eres2netv2
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
    with pytest.raises(checkpoint.CheckpointError, match="Python objects other than tensors"):
        checkpoint.load(path)


# ---------------------------------------------------------------- the committed tutorial models

CHECKPOINTS = REPO_ROOT / "checkpoints"


def _results() -> dict:
    return json.loads((CHECKPOINTS / "results.json").read_text())


@pytest.mark.parametrize("name", ["resnet", "dfresnet", "ecapa", "rev_resnet"])
def test_committed_tutorial_checkpoint_scores_as_recorded(name):
    """Each tutorial checkpoint loads, and scores the EER recorded in results.json."""
    recorded = _results()[name]
    path = CHECKPOINTS / f"tutorial_{name}.pt"
    assert path.stat().st_size < 2 * 2**20
    model = checkpoint.load_model(path, recorded["model"])
    evalset = EvalSet.from_corpus(get_profile("ci").ensure_corpus())
    scores = evalset.score(model)
    assert scores["eer"] == pytest.approx(recorded["eer"], abs=2e-3)
    head = checkpoint.load_head(path)  # the trained head, for fine-tuning: ci's 60 speakers
    assert head.weight.shape == (60, model.embed_dim)
    # clearly better than the same network untrained and than the mean-fbank baseline
    assert recorded["eer"] < recorded["untrained_eer"] - 0.1
    assert recorded["eer"] < _results()["mean_fbank_baseline"]["eer"] - 0.1


@pytest.mark.slow
def test_make_checkpoints_reproduces_the_tutorial_resnet(tmp_path):
    """Retrain the first 8 of the tutorial ResNet's 60 epochs with the committed script (about
    2 minutes on 2 cores); its validation EERs match the recorded learning curve's."""
    script = REPO_ROOT / "scripts" / "make_checkpoints.py"
    command = [sys.executable, str(script), "--only", "resnet", "--out", str(tmp_path), "--quiet",
               "--check-epochs", "8"]  # fmt: skip
    subprocess.run(command, check=True, timeout=900)
    fresh = json.loads((tmp_path / "early.json").read_text())["resnet"]
    recorded = _results()["resnet"]["learning_curve"]
    assert fresh["epoch"] == [4.0, 8.0] == recorded["epoch"][:2]
    assert fresh["eer"] == pytest.approx(recorded["eer"][:2], abs=0.02)
