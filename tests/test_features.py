"""fbank: kaldi settings, per-utterance mean normalisation, batching and dither."""

import pytest
import torch
import torchaudio.compliance.kaldi as kaldi

from svlab.features import fbank


def tone(seconds=1.0, freq=440.0, sample_rate=16000):
    t = torch.arange(int(seconds * sample_rate)) / sample_rate
    return 0.3 * torch.sin(2 * torch.pi * freq * t) + 0.01 * torch.randn(t.shape)


def test_matches_kaldi_with_recipe_settings():
    wave = tone()
    reference = kaldi.fbank(
        wave.unsqueeze(0) * 32768, num_mel_bins=80, frame_length=25, frame_shift=10,
        dither=0.0, energy_floor=0.0, window_type="hamming", sample_frequency=16000,
    )
    torch.testing.assert_close(fbank(wave, cmn=False)[0], reference)
    torch.testing.assert_close(fbank(wave)[0], reference - reference.mean(0))


def test_batch_equals_one_at_a_time_and_is_mean_normalised():
    waves = torch.stack([tone(freq=f) for f in (200.0, 300.0, 500.0)])
    batch = fbank(waves)
    assert batch.shape == (3, 98, 80)
    for i in range(3):
        torch.testing.assert_close(batch[i], fbank(waves[i])[0])
    assert batch.mean(dim=1).abs().max() < 1e-4


def test_dither_only_when_asked_and_seeded():
    wave = tone()
    assert torch.equal(fbank(wave), fbank(wave))
    torch.manual_seed(0)
    a = fbank(wave, dither=1.0)
    torch.manual_seed(0)
    assert torch.equal(a, fbank(wave, dither=1.0))
    assert not torch.equal(a, fbank(wave))


@pytest.mark.parametrize("shape", [(1, 2, 16000), (100,)])
def test_bad_shapes_are_named(shape):
    with pytest.raises(ValueError, match="fbank|frame"):
        fbank(torch.zeros(shape))
