"""Tests for svlab.models: published parameter counts, shapes, pooling maths, bad input."""

import numpy as np
import pytest
import torch

from svlab.models import ASTP, TSTP, available, build, count_parameters

torch.set_num_threads(1)

PUBLISHED_PARAMS = {  # millions, tolerance (REFERENCE.md)
    "resnet34": (6.63, 0.02),
    "ecapa_c512": (6.19, 0.02),
    "ecapa_c1024": (14.65, 0.02),
    "dfresnet56": (4.5, 0.05),
    "dfresnet233": (12.3, 0.05),
}

TINY = {
    "resnet18": dict(base_width=4, embed_dim=16),
    "resnet34": dict(base_width=4, embed_dim=16),
    "dfresnet56": dict(base_width=4, embed_dim=16),
    "dfresnet110": dict(base_width=4, depths=(1, 1, 2, 1), embed_dim=16),
    "dfresnet233": dict(base_width=4, depths=(1, 1, 2, 1), embed_dim=16),
    "ecapa_c512": dict(channels=32, mfa_channels=48, embed_dim=16),
    "ecapa_c1024": dict(channels=32, mfa_channels=48, embed_dim=16),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_parameter_count_matches_published(name):
    millions, tolerance = PUBLISHED_PARAMS[name]
    count = count_parameters(build(name)) / 1e6
    assert abs(count - millions) / millions <= tolerance, f"{name}: {count:.3f} M"


def test_parameter_count_is_independent_of_registry():
    # ResNet34 counted by hand: stem, 4 stages of basic blocks, TSTP + Linear(2 * 256 * 10, 256)
    def block(i, o, proj):
        return 9 * i * o + 9 * o * o + 4 * o + ((i * o + 2 * o) if proj else 0)

    widths, depths = [32, 64, 128, 256], [3, 4, 6, 3]
    total = 9 * 32 + 2 * 32
    prev = 32
    for w, d in zip(widths, depths, strict=True):
        total += block(prev, w, prev != w) + (d - 1) * block(w, w, False)
        prev = w
    total += 2 * 256 * 10 * 256 + 256
    assert count_parameters(build("resnet34")) == total


def test_all_published_names_are_registered():
    names = {"resnet18", "resnet34", "dfresnet56", "dfresnet110", "dfresnet233"}
    assert names | {"ecapa_c512", "ecapa_c1024"} <= set(available())


@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_variants_map_fbank_to_embeddings(name):
    model = build(name, **TINY[name]).eval()
    fbank = torch.randn(3, 50, 80)
    out = model(fbank)
    assert out.shape == (3, model.embed_dim) == (3, 16)
    assert torch.isfinite(out).all()
    # each utterance is embedded on its own in eval mode: batch-independent
    assert torch.allclose(model(fbank[:1]), out[:1], atol=1e-5)


def test_variable_length_input_and_feat_dim_override():
    model = build("resnet18", base_width=2, feat_dim=40, embed_dim=4).eval()
    assert model(torch.randn(2, 17, 40)).shape == (2, 4)
    assert model(torch.randn(2, 230, 40)).shape == (2, 4)


def test_tstp_matches_numpy():
    x = torch.randn(2, 3, 11, dtype=torch.float64)
    out = TSTP(3)(x).numpy()
    ref = np.concatenate([x.numpy().mean(-1), np.sqrt(x.numpy().var(-1) + 1e-7)], axis=-1)
    np.testing.assert_allclose(out, ref, rtol=1e-9)


def test_astp_with_flat_attention_equals_tstp():
    pool = ASTP(4, bottleneck_dim=3)
    torch.nn.init.zeros_(pool.attention[-1].weight)
    torch.nn.init.zeros_(pool.attention[-1].bias)
    x = torch.randn(2, 4, 9)
    assert torch.allclose(pool(x), TSTP(4)(x), atol=1e-5)


def test_astp_attends():
    pool = ASTP(1, bottleneck_dim=1, global_context=False)
    with torch.no_grad():  # weight ~ exp(10 * tanh(x)): the large frame dominates
        pool.attention[0].weight.fill_(1.0)
        pool.attention[0].bias.zero_()
        pool.attention[2].weight.fill_(10.0)
        pool.attention[2].bias.zero_()
    x = torch.tensor([[[0.0, 0.0, 5.0]]])
    assert pool(x)[0, 0] > 4.0


def test_unknown_model_lists_known_ones():
    with pytest.raises(ValueError, match="resnet34") as err:
        build("resnet35")
    assert "ecapa_c512" in str(err.value)


def test_unknown_override_is_named():
    with pytest.raises(ValueError, match="'width'"):
        build("resnet34", width=8)


def test_bad_input_shape_is_explained():
    with pytest.raises(ValueError, match="frames, bins"):
        build("resnet18", base_width=2)(torch.zeros(10, 80))


def test_seeded_builds_are_identical():
    torch.manual_seed(0)
    a = build("dfresnet56", base_width=2)
    torch.manual_seed(0)
    b = build("dfresnet56", base_width=2)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
