"""Augmentation of crops: SNR as drawn, reverberation aligned, speed, determinism, bad files."""

import numpy as np
import pytest
import soundfile
import torch
import torchaudio.functional
from torch.utils.data import DataLoader

from svlab.data import SpeakerCrops
from svlab.data.augment import (
    Augmentation,
    Augmenter,
    AugmentError,
    change_speed,
    read_rir,
    reverberate,
)
from svlab.data.dataset import _crop, _generator
from svlab.data.noise_sets import room_impulse_response, write_noise_set, write_rir_set

torch.set_num_threads(1)


@pytest.fixture
def corpus(training_corpus):
    return training_corpus


def crops_with(corpus, musan=None, rirs=None, **settings):
    augment = Augmenter(Augmentation(**settings), musan, rirs) if settings else None
    return SpeakerCrops.from_corpus(corpus, crop_frames=50, precompute=False, augment=augment)


def snr_db(clean, mixed):
    return 10 * torch.log10(clean.double().pow(2).sum() / (mixed - clean).double().pow(2).sum())


@pytest.mark.parametrize("kind", ["noise", "music", "babble"])
def test_mixed_crop_has_the_drawn_snr(corpus, augment_sets, kind):
    clean = crops_with(corpus)
    for snr in (0.0, 7.3, 18.0):
        noisy = crops_with(corpus, augment_sets[0], **{f"{kind}_prob": 1.0,
                                                        f"{kind}_snr": (snr, snr)})  # fmt: skip
        for i in range(4):
            assert abs(float(snr_db(clean[i][0], noisy[i][0])) - snr) < 0.1


def test_snrs_are_drawn_from_the_range(corpus, augment_sets):
    clean = crops_with(corpus)
    noisy = crops_with(corpus, augment_sets[0], noise_prob=1.0, noise_snr=(5.0, 10.0))
    snrs = [float(snr_db(clean[i][0], noisy[i][0])) for i in range(len(clean))]
    assert all(5.0 - 0.1 < s < 10.0 + 0.1 for s in snrs) and np.std(snrs) > 0.5


def test_noise_shorter_than_the_crop_is_repeated(corpus, tmp_path):
    musan, _ = write_bad_set(tmp_path, "musan", np.random.default_rng(0).uniform(-1, 1, 1600))
    clean = crops_with(corpus)
    noisy = crops_with(corpus, musan, noise_prob=1.0, noise_snr=(3.0, 3.0))
    noise = noisy[0][0] - clean[0][0]
    period = 1600
    assert torch.allclose(noise[:period], noise[period : 2 * period], atol=1e-5)


def cross_correlation_peak(clean, wet):
    n = clean.numel() + wet.numel()
    spectrum = torch.fft.rfft(wet.double(), n) * torch.fft.rfft(clean.double(), n).conj()
    xcorr = torch.fft.irfft(spectrum, n)
    lag = int(xcorr.abs().argmax())
    return lag if lag < n // 2 else lag - n


def white_corpus(root, n=3):
    """A corpus of white-noise "utterances": their autocorrelation is a spike, so the
    cross-correlation with a reverberated copy is the room's response itself."""
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        path = root / "wav" / f"id0000{i}" / "s" / "00001.wav"
        path.parent.mkdir(parents=True)
        soundfile.write(path, 0.1 * rng.standard_normal(16000), 16000, subtype="FLOAT")
        lines.append(f"id0000{i} id0000{i}/s/00001.wav\n")
    (root / "train.txt").write_text("".join(lines))
    return root


def test_reverberation_keeps_the_crop_aligned(tmp_path, augment_sets):
    corpus = white_corpus(tmp_path)
    clean = crops_with(corpus)
    rirs = sorted(augment_sets[1].rglob("*.wav"))
    assert len(rirs) == 6
    for path in rirs:
        rir = read_rir(path)
        direct = int(rir.abs().argmax())
        assert direct > 0  # the room's delay, which alignment removes
        for i in range(3):
            wave = clean[i][0]
            assert cross_correlation_peak(wave, reverberate(wave, rir)) == 0
            plain = torchaudio.functional.fftconvolve(wave, rir)[: wave.numel()]
            assert cross_correlation_peak(wave, plain) == direct  # the test sees a delay
    reverberant = crops_with(corpus, rirs=augment_sets[1], reverb_prob=1.0)
    for i in range(3):
        wave, label = reverberant[i]
        assert label == clean[i][1] and cross_correlation_peak(clean[i][0], wave) == 0
        assert not torch.allclose(wave, clean[i][0], atol=1e-3)
        assert torch.allclose(wave.pow(2).mean(), clean[i][0].pow(2).mean())  # level kept


def test_speed_changes_duration_and_pitch_by_the_factor():
    t = torch.arange(32000) / 16000
    tone = torch.sin(2 * torch.pi * 440 * t)
    for factor in (0.9, 1.1):
        sped = change_speed(tone, factor)
        assert abs(sped.numel() - 32000 / factor) <= 1
        peak = int(torch.fft.rfft(sped).abs().argmax()) * 16000 / sped.numel()
        assert abs(peak - 440 * factor) < 2


def test_speed_perturbation_multiplies_the_speakers(corpus):
    clean = crops_with(corpus)
    sped = crops_with(corpus, speeds=(1.0, 0.9, 1.1))
    n = clean.n_speakers
    assert sped.n_speakers == 3 * n and sped.n_base == n
    assert sped.speakers[:n] == clean.speakers and sped.speakers[n] == f"sp0.9-{clean.speakers[0]}"
    labels = torch.cat([sped.batch(e, 0, batch_size=8)[1] for e in range(6)])
    assert labels.max() < 3 * n and len(set((labels // n).tolist())) == 3
    for i in range(len(sped)):
        wave, label = sped[i]
        factor = (1.0, 0.9, 1.1)[label // n]
        start = torch.rand(1, generator=_generator(0, 0, i), dtype=torch.float64)
        source = _crop(sped._wave(i), round(sped.samples * factor), float(start))
        expected = change_speed(source, factor)
        k = min(expected.numel(), sped.samples)
        assert label % n == clean[i][1] and torch.equal(wave[:k], expected[:k])


def test_same_seed_epoch_batch_gives_the_same_batch_with_any_workers(corpus, augment_sets):
    from svlab.train.loop import EpochBatches

    settings = dict(noise_prob=0.5, music_prob=0.5, babble_prob=0.5, reverb_prob=0.5,
                    speeds=(1.0, 0.9, 1.1), spec_prob=0.5)  # fmt: skip
    crops = crops_with(corpus, *augment_sets, **settings)
    crops.dither = 1.0
    first = [crops.batch(1, b, batch_size=4) for b in range(3)]
    again = crops_with(corpus, *augment_sets, **settings)
    again.dither = 1.0
    assert all(torch.equal(again.batch(1, b, 4)[0], first[b][0]) for b in range(3))
    for workers in (0, 2):
        loader = DataLoader(EpochBatches(crops, 1, 0, 4, 0, 1), batch_size=None,
                            num_workers=workers)  # fmt: skip
        for (feats, labels), (want, want_labels) in zip(loader, first, strict=False):
            assert torch.equal(feats, want) and torch.equal(labels, want_labels)
    other = crops.batch(2, 0, batch_size=4)[0]
    assert not torch.equal(other, first[0][0])
    crops.dither = 0.0  # dither is drawn per rank; the augmentation per crop of the global batch
    whole = crops.batch(1, 0, batch_size=4)
    half = crops.batch(1, 0, batch_size=4, rank=1, world=2)
    assert torch.allclose(half[0], whole[0][1::2], atol=1e-4)  # rank 1's crops: 1 and 3
    assert torch.equal(half[1], whole[1][1::2])


def test_inactive_augmentation_changes_nothing(corpus):
    plain = SpeakerCrops.from_corpus(corpus, crop_frames=20, precompute=True, dither=0.0)
    inactive = SpeakerCrops.from_corpus(
        corpus, crop_frames=20, precompute=True, augment=Augmenter(Augmentation())
    )
    assert inactive.augment is None and inactive.n_speakers == plain.n_speakers
    assert torch.equal(plain.batch(0, 0, 4)[0], inactive.batch(0, 0, 4)[0])


def test_spec_masks_work_on_precomputed_features(corpus):
    plain = SpeakerCrops.from_corpus(corpus, crop_frames=40, precompute=True)
    masks = Augmentation(spec_prob=1.0, time_masks=2, time_width=5, freq_masks=2, freq_width=8)
    masked = SpeakerCrops.from_corpus(
        corpus, crop_frames=40, precompute=True, augment=Augmenter(masks)
    )
    a, b = plain.batch(0, 0, 4)[0], masked.batch(0, 0, 4)[0]
    changed = a != b
    assert changed.any() and torch.equal(b[changed], torch.zeros_like(b[changed]))
    with pytest.raises(ValueError, match="precompute"):
        SpeakerCrops.from_corpus(corpus, crop_frames=40, precompute=True,
                                 augment=Augmenter(Augmentation(speeds=(1.0, 1.1))))  # fmt: skip


def write_bad_set(tmp_path, name, samples):
    musan = tmp_path / name
    (musan / "noise" / "bad").mkdir(parents=True)
    path = musan / "noise" / "bad" / "noise-bad-0000.wav"
    if samples is None:
        path.write_bytes(b"RIFF not a wav file")
    else:
        soundfile.write(path, samples, 16000, subtype="PCM_16")
    return musan, path


@pytest.mark.parametrize(
    "samples, reason",
    [(np.zeros(16000), "is silent from"), (np.full(100, 0.5), "is too short: 100 samples"),
     (None, "is unreadable")],
)  # fmt: skip
def test_bad_noise_file_is_a_named_error(corpus, tmp_path, samples, reason):
    musan, path = write_bad_set(tmp_path, "musan", samples)
    crops = crops_with(corpus, musan, noise_prob=1.0)
    with pytest.raises(AugmentError, match=f"noise file {path} {reason}"):
        crops.batch(0, 0, batch_size=2)
    with pytest.raises(AugmentError, match=str(path)):
        crops[0]


def test_bad_impulse_response_is_a_named_error(corpus, tmp_path):
    room = tmp_path / "rirs" / "simulated_rirs" / "smallroom" / "Room001"
    room.mkdir(parents=True)
    soundfile.write(room / "Room001-00001.wav", np.zeros(800), 16000, subtype="PCM_16")
    crops = crops_with(corpus, rirs=tmp_path / "rirs", reverb_prob=1.0)
    with pytest.raises(AugmentError, match="Room001-00001.wav has no energy"):
        crops.batch(0, 0, batch_size=2)
    (room / "Room001-00001.wav").write_bytes(b"junk")
    with pytest.raises(AugmentError, match="Room001-00001.wav is unreadable"):
        crops[1]
    with pytest.raises(AugmentError, match="holds no .wav files"):
        Augmenter(Augmentation(reverb_prob=1.0), rirs=tmp_path / "empty")


def test_bad_settings_are_named():
    with pytest.raises(AugmentError, match="recipe: unknown key 'snr'"):
        Augmentation.from_dict({"snr": 3}, source="recipe")
    with pytest.raises(AugmentError, match="noise_prob must be in"):
        Augmentation.from_dict({"noise_prob": 1.5})
    with pytest.raises(AugmentError, match="speeds must start with 1.0"):
        Augmentation.from_dict({"speeds": [0.9, 1.1]})
    with pytest.raises(AugmentError, match="babble_speakers must be"):
        Augmentation.from_dict({"babble_speakers": [3]})


def test_stand_ins_are_deterministic_in_the_layouts(tmp_path, augment_sets):
    musan, rirs = augment_sets
    for kind in ("noise", "music", "speech"):
        assert len(list((musan / kind).glob("*/*.wav"))) == 4
    rooms = {p.parent.parent.name for p in rirs.glob("simulated_rirs/*/Room*/Room*-*.wav")}
    assert rooms == {"smallroom", "mediumroom", "largeroom"}
    again = write_noise_set(tmp_path / "musan", files=4, seconds=(0.5, 1.5))
    for path in musan.rglob("*"):
        if path.is_file():
            assert (again / path.relative_to(musan)).read_bytes() == path.read_bytes()
    other = write_rir_set(tmp_path / "rirs", seed=1, rooms=1, rirs_per_room=2)
    first = sorted(rirs.rglob("*.wav"))[0]
    assert (other / first.relative_to(rirs)).read_bytes() != first.read_bytes()
    for path in rirs.rglob("*.wav"):
        rir = read_rir(path)
        assert int(rir.abs().argmax()) == int((rir != 0).int().argmax())  # direct path largest


def test_image_source_room_has_the_direct_path_and_decays():
    rir = room_impulse_response((5.0, 4.0, 3.0), 0.3, (1.0, 1.5, 1.2), (3.5, 2.5, 1.6), 0.5)
    distance = np.sqrt(2.5**2 + 1.0**2 + 0.4**2)
    assert int(np.argmax(rir != 0)) == round(distance * 16000 / 343)
    energy = np.cumsum(rir[::-1] ** 2)[::-1]
    assert energy[4000] < energy[800] < energy[0]  # energy decays
    deader = room_impulse_response((5.0, 4.0, 3.0), 0.8, (1.0, 1.5, 1.2), (3.5, 2.5, 1.6), 0.5)
    assert np.sum(deader[2000:] ** 2) < np.sum(rir[2000:] ** 2)
