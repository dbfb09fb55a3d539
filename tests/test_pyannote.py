"""pyannote.audio's checkpoint of wespeaker's ResNet34 (``pytorch_model.bin``) against outputs of
pyannote's own model code (tests/fixtures/README.md), read without pyannote; other pyannote
models refused by name (the real segmentation model: tests/test_campplus.py)."""

import pickle
from pathlib import Path

import pytest
import torch

from svlab import storage
from svlab.features import featurize
from svlab.models import build, load_pretrained
from svlab.models.pretrained import (
    _PYANNOTE_STAND_INS,
    PretrainedError,
    PyannoteRecord,
    export_state,
    read_pretrained,
)
from svlab.storage import CheckpointError

from equivalence import rel_err

FIXTURES = Path(__file__).parent / "fixtures"
CHECKPOINT = FIXTURES / "pyannote_resnet34_m2_pytorch_model.bin"
IO = torch.load(FIXTURES / "pyannote_io.pt", weights_only=True)


def embed(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def pyannote_checkpoint() -> dict:
    """The whole fixture checkpoint, read as load_pretrained reads it."""
    return storage.load(CHECKPOINT, stand_ins=_PYANNOTE_STAND_INS)


def test_the_fixture_needs_pyannotes_classes_to_unpickle():
    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(CHECKPOINT)
    assert {f"pyannote.audio.core.task.{n}" for n in ("Specifications", "Problem", "Resolution")
            } <= set(unsafe)  # fmt: skip
    with pytest.raises(pickle.UnpicklingError):
        torch.load(CHECKPOINT, weights_only=True)


def test_pyannote_resnet34_matches_pyannotes_output():
    loaded = read_pretrained(CHECKPOINT)
    assert (loaded.name, loaded.source, loaded.head) == ("resnet34_pyannote", "pyannote", None)
    assert loaded.overrides == dict(base_width=2, feat_dim=80, embed_dim=16, depths=(3, 4, 6, 3))
    assert loaded.model.front_end == "kaldi" and not loaded.model.training
    assert rel_err(embed(loaded.model, IO["fbank"]), IO["output"]) <= 1e-5


def test_pyannotes_front_end_is_svlabs_kaldi_fbank():
    assert torch.allclose(featurize(IO["waveforms"][:, 0], "kaldi"), IO["fbank"], atol=1e-4)
    model = load_pretrained(CHECKPOINT)
    feats = featurize(IO["waveforms"][:, 0], model.front_end)
    assert rel_err(embed(model, feats), IO["output"]) <= 1e-5


def test_wespeakers_pooling_would_not_match():
    """The variant is needed: wespeaker's TSTP adds 1e-7 to the variance, pyannote's does not."""
    pyannote = load_pretrained(CHECKPOINT)
    wespeaker = build("resnet34_wespeaker", base_width=2, embed_dim=16)
    wespeaker.load_state_dict(pyannote.state_dict())
    assert rel_err(embed(wespeaker, IO["fbank"]), IO["output"]) > 1e-5  # 1e-4 here


def test_pyannote_objects_are_read_as_inert_records():
    loaded = pyannote_checkpoint()
    specifications = loaded["pyannote.audio"]["specifications"]
    assert type(specifications) is PyannoteRecord and specifications.duration == 5.0
    assert specifications.problem.args == (3,)  # Problem.REPRESENTATION
    assert loaded["pyannote.audio"]["architecture"]["class"] == "WeSpeakerResNet34"


def test_export_state_is_the_checkpoints_resnet():
    state = pyannote_checkpoint()["state_dict"]
    exported = export_state(load_pretrained(CHECKPOINT))
    assert sorted(f"resnet.{k}" for k in exported) == sorted(state)
    assert all(torch.equal(exported[k], state[f"resnet.{k}"]) for k in exported)


def resaved(tmp_path, change) -> Path:
    checkpoint = pyannote_checkpoint()
    checkpoint["pyannote.audio"]["specifications"] = None  # svlab's records would pickle as such
    change(checkpoint)
    torch.save(checkpoint, tmp_path / "pytorch_model.bin")
    return tmp_path / "pytorch_model.bin"


def test_a_front_end_setting_svlab_does_not_compute_is_refused(tmp_path):
    path = resaved(tmp_path, lambda c: c["hyper_parameters"].update(fbank_centering_span=3.0))
    with pytest.raises(PretrainedError, match="pytorch_model.bin.*fbank_centering_span=3.0"):
        load_pretrained(path)


def test_another_pyannote_embedding_model_is_refused_by_name(tmp_path):
    path = resaved(tmp_path, lambda c: c["pyannote.audio"]["architecture"].update(
        module="pyannote.audio.models.embedding.xvector", **{"class": "XVectorSincNet"}))
    with pytest.raises(PretrainedError, match=r"XVectorSincNet \(embedding\).*WeSpeakerResNet34"):
        load_pretrained(path)


def test_a_pyannote_file_is_not_another_toolkits():
    with pytest.raises(PretrainedError, match="pyannote.audio checkpoint, not one of wespeaker"):
        load_pretrained(CHECKPOINT, source="wespeaker")


def test_other_pickled_classes_are_still_refused(tmp_path):
    torch.save({"state_dict": {}, "pyannote.audio": {"task": PretrainedError("x")}},
               tmp_path / "pytorch_model.bin")  # fmt: skip
    with pytest.raises(CheckpointError, match="pytorch_model.bin holds Python objects"):
        load_pretrained(tmp_path / "pytorch_model.bin")
