"""3D-Speaker's ERes2Net and ERes2NetV2 against 3D-Speaker's own model code (speakerlab 0.0.6, a
dev reference): the same random weights give the same embeddings; loading and exporting."""

import pytest
import torch

from svlab.models import build, count_parameters, load_pretrained
from svlab.models.pretrained import PretrainedError, export_state, read_pretrained

from equivalence import rel_err

speakerlab_eres2net = pytest.importorskip("speakerlab.models.eres2net.ERes2Net")
speakerlab_eres2netv2 = pytest.importorskip("speakerlab.models.eres2net.ERes2NetV2")

SMALL = dict(m_channels=8, feat_dim=40, embedding_size=16)  # speakerlab's argument names


def randomized(reference: torch.nn.Module) -> torch.nn.Module:
    """``reference`` with random BatchNorm scales, shifts and running statistics, random biases."""
    torch.manual_seed(0)
    state = reference.state_dict()
    for key, value in state.items():
        if key.endswith(("running_mean", "bias")):
            value.normal_(0, 0.3)
        elif key.endswith("running_var") or (key.endswith("weight") and value.dim() == 1):
            value.uniform_(0.5, 1.5)
    reference.load_state_dict(state)
    return reference


REFERENCES = {
    "eres2net": lambda **kw: speakerlab_eres2net.ERes2Net(**SMALL, **kw),
    "eres2netv2": lambda **kw: speakerlab_eres2netv2.ERes2NetV2(**SMALL, **kw),
}


@pytest.mark.parametrize("name", ["eres2net", "eres2netv2"])
def test_eres2net_equals_speakerlab_with_random_batchnorm_statistics_in_both_modes(name):
    reference = randomized(REFERENCES[name]())
    model = build(name, m_channels=8, feat_dim=40, embed_dim=16)
    model.load_state_dict(reference.state_dict())
    feats = torch.randn(3, 120, 40)
    for train in (False, True):
        model.train(train), reference.train(train)
        assert rel_err(model(feats.clone()), reference(feats.clone())) <= 1e-5


def test_eres2netv2_equals_speakerlab_at_other_block_settings_with_two_embedding_layers():
    reference = randomized(speakerlab_eres2netv2.ERes2NetV2(
        **SMALL, baseWidth=20, scale=3, expansion=3, two_emb_layer=True, num_blocks=[2, 1, 2, 1]
    ))  # fmt: skip
    model = build("eres2netv2", m_channels=8, feat_dim=40, embed_dim=16, base_width=20, scale=3,
                  expansion=3, two_emb_layer=True, depths=(2, 1, 2, 1))  # fmt: skip
    model.load_state_dict(reference.state_dict())
    feats = torch.randn(2, 90, 40)
    for train in (False, True):
        model.train(train), reference.train(train)
        assert rel_err(model(feats.clone()), reference(feats.clone())) <= 1e-5


def test_published_configurations_have_speakerlabs_parameter_counts():
    assert count_parameters(build("eres2net")) == 6_610_688  # ERes2Net-base, 192 dimensions
    assert count_parameters(build("eres2netv2")) == 17_859_632
    assert count_parameters(speakerlab_eres2net.ERes2Net()) == 6_610_688
    assert count_parameters(speakerlab_eres2netv2.ERes2NetV2()) == 17_859_632
    assert build("eres2net").front_end == build("eres2netv2").front_end == "speakerlab"


@pytest.mark.parametrize(
    ("name", "kw", "overrides"),
    [
        ("eres2net", {}, dict(feat_dim=40, embed_dim=16, m_channels=8, depths=(3, 4, 6, 3),
                              base_width=32, scale=2, two_emb_layer=False)),
        ("eres2netv2", dict(baseWidth=26, scale=3, expansion=3, two_emb_layer=True),
         dict(feat_dim=40, expansion=3, embed_dim=16, m_channels=8, depths=(3, 4, 6, 3),
              base_width=26, scale=3, two_emb_layer=True)),
    ],
)  # fmt: skip
def test_a_saved_speakerlab_state_dict_loads_with_its_configuration(tmp_path, name, kw, overrides):
    reference = randomized(REFERENCES[name](**kw)).eval()
    torch.save(reference.state_dict(), tmp_path / "pretrained.pt")
    loaded = read_pretrained(tmp_path / "pretrained.pt")
    assert (loaded.name, loaded.source, loaded.head) == (name, "3d-speaker", None)
    assert loaded.overrides == overrides
    assert loaded.model.front_end == "speakerlab" and not loaded.model.training
    feats = torch.randn(2, 80, 40)
    with torch.no_grad():
        assert rel_err(loaded.model(feats.clone()), reference(feats.clone())) <= 1e-5
    exported = export_state(loaded.model)
    state = reference.state_dict()
    assert sorted(exported) == sorted(state)
    assert all(torch.equal(exported[k], state[k]) for k in state)


def test_eres2net_is_told_from_v2_campplus_and_wespeakers_resnet(tmp_path):
    names = {}
    for name, model in [("eres2net", build("eres2net", m_channels=4, embed_dim=8)),
                        ("eres2netv2", build("eres2netv2", m_channels=4, embed_dim=8)),
                        ("resnet34_wespeaker", build("resnet34_wespeaker", base_width=2)),
                        ("campplus", build("campplus", head_width=4, init_channels=16,
                                           growth_rate=4, dense_layers=(1, 1, 1)))]:  # fmt: skip
        torch.save(export_state(model), tmp_path / f"{name}.pt")
        names[name] = read_pretrained(tmp_path / f"{name}.pt").name
    assert names == {name: name for name in names}


def test_a_damaged_eres2net_file_is_refused_naming_the_key(tmp_path):
    state = export_state(build("eres2netv2", m_channels=4, embed_dim=8))
    del state["layer3.1.fuse_models.0.local_att.3.weight"]
    torch.save(state, tmp_path / "eres2netv2.pt")
    with pytest.raises(PretrainedError, match="eres2netv2.pt.*layer3.1.fuse_models.0.local_att.3"):
        load_pretrained(tmp_path / "eres2netv2.pt")
