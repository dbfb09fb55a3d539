"""Training crops as a Dataset and test loading: shapes, wrap-padding, determinism."""

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from svlab.data import (
    SpeakerCrops,
    crop_samples,
    fit_length,
    load_audio,
    load_utterances,
    read_trials,
    synthesize_corpus,
)
from svlab.features import fbank


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return synthesize_corpus(
        tmp_path_factory.mktemp("crops") / "corpus",
        n_train_speakers=3,
        n_test_speakers=2,
        sessions_per_speaker=2,
        utterances_per_session=2,
        train_seconds=(1.0, 3.0),
        test_seconds=(1.0, 1.5),
        trials_per_utterance=2,
    )


def test_crop_gives_200_frames():
    assert fbank(torch.randn(crop_samples(200)) * 0.1).shape == (1, 200, 80)
    assert fbank(torch.randn(crop_samples(200) - 1) * 0.1).shape == (1, 199, 80)


def test_crops_shapes_and_labels(corpus):
    crops = SpeakerCrops.from_corpus(corpus, precompute=False)
    assert len(crops) == 3 * 2 * 2 and crops.speakers == ["id00001", "id00002", "id00003"]
    assert crops.waves is not None  # small corpus: preloaded
    waves, labels = next(iter(DataLoader(crops, batch_size=12)))
    assert waves.shape == (12, 32240) and waves.dtype == torch.float32
    assert labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]


def test_crop_is_a_piece_of_its_utterance(corpus):
    crops = SpeakerCrops.from_corpus(corpus, crop_frames=48, precompute=False)
    assert crops.samples == crop_samples(48) == 7920
    for i in range(len(crops)):
        wave, _ = crops[i]
        full = crops.waves[i]
        starts = (full.unfold(0, 10, 1) == wave[:10]).all(dim=1).nonzero().flatten().tolist()
        assert any(torch.equal(full[s : s + 7920], wave) for s in starts), f"crop {i} is not in it"


def test_crops_deterministic_and_epoch_dependent(corpus):
    a = SpeakerCrops.from_corpus(corpus, seed=5, precompute=False)
    b = SpeakerCrops.from_corpus(corpus, seed=5, precompute=False, preload=False)
    assert b.waves is None
    assert all(torch.equal(a[i][0], b[i][0]) for i in range(len(a)))
    first = [a[i][0] for i in range(len(a))]
    a.set_epoch(1)
    assert any(not torch.equal(first[i], a[i][0]) for i in range(len(a)))
    c = SpeakerCrops.from_corpus(corpus, seed=6, precompute=False)
    assert any(not torch.equal(first[i], c[i][0]) for i in range(len(c)))


def test_short_utterances_wrap(corpus):
    crops = SpeakerCrops.from_corpus(corpus, crop_frames=400, precompute=False)  # > 4 s
    for i in range(len(crops)):
        wave, _ = crops[i]
        full = crops.waves[i]
        assert wave.shape == (64240,) and full.numel() < 64240
        # a piece of the utterance repeated end to end: every sample follows its predecessor
        start = int((full.unfold(0, 10, 1) == wave[:10]).all(dim=1).nonzero()[0])
        looped = full.roll(-start).repeat(64240 // full.numel() + 1)[:64240]
        assert torch.equal(wave, looped), f"crop {i} does not wrap around its utterance"


def test_fit_length():
    x = torch.arange(5.0)
    assert fit_length(x, 3, start=1).tolist() == [1.0, 2.0, 3.0]
    assert fit_length(x, 12).tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]


def test_test_loading_full_and_fixed(corpus):
    trials = read_trials(corpus / "trials" / "test.txt")
    paths = sorted({t.enroll for t in trials} | {t.test for t in trials})
    full = load_utterances(corpus, paths)
    assert [w.numel() for w in full] == [load_audio(corpus / "wav" / p).numel() for p in paths]
    fixed = load_utterances(corpus, paths, samples=20000)
    assert all(w.shape == (20000,) for w in fixed)
    assert torch.equal(fixed[0][:16000], full[0][:16000])


def test_mismatched_inputs():
    with pytest.raises(ValueError, match="no training utterances"):
        SpeakerCrops([], [])
    with pytest.raises(ValueError, match="one label per path"):
        SpeakerCrops([Path("a.wav")], [], features=[torch.zeros(8, 80)])
    with pytest.raises(ValueError, match="3 speaker names for 1 labels"):
        SpeakerCrops([Path("a.wav")], [0], features=[torch.zeros(8, 80)], speakers=["a", "b", "c"])
