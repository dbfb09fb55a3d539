"""Reading audio: formats, resampling, channels, and clear errors for bad files."""

import warnings

import numpy as np
import pytest
import soundfile
import torch
import torchaudio.functional

from svlab.data import AudioError, ResampleWarning, load_audio, read_audio
from svlab.data import audio as audio_io


def tone(seconds: float, rate: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_pcm16_reads_exactly(tmp_path):
    samples = np.array([0, 1, -1, 32767, -32768, 1234], dtype=np.int16)
    soundfile.write(tmp_path / "a.wav", samples, 16000, subtype="PCM_16")
    wave = load_audio(tmp_path / "a.wav")
    assert wave.dtype == torch.float32
    assert torch.equal(wave, torch.from_numpy(samples.astype(np.float32) / 32768))


def test_other_rate_is_resampled(tmp_path, monkeypatch):
    monkeypatch.setattr(audio_io, "RESAMPLED", set())
    soundfile.write(tmp_path / "a.wav", tone(1.0, 8000), 8000, subtype="FLOAT")
    with pytest.warns(ResampleWarning):
        wave = load_audio(tmp_path / "a.wav")
    expected = torchaudio.functional.resample(torch.from_numpy(tone(1.0, 8000)), 8000, 16000)
    assert wave.shape == (16000,)
    torch.testing.assert_close(wave, expected)
    # the 440 Hz tone stays at 440 Hz: its spectral peak at 16 kHz
    peak = torch.fft.rfft(wave).abs().argmax().item() * 16000 / wave.numel()
    assert abs(peak - 440) < 2


def test_resampling_is_said_once_per_pair_of_rates(tmp_path, monkeypatch):
    """The first 8 kHz file is named with both rates; further 8 kHz files pass silently; a
    file at another rate again is named once; 16 kHz files never."""
    monkeypatch.setattr(audio_io, "RESAMPLED", set())
    for name, rate in [("a8", 8000), ("b8", 8000), ("c22", 22050), ("d16", 16000)]:
        soundfile.write(tmp_path / f"{name}.wav", tone(0.1, rate), rate)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name in ["a8", "b8", "c22", "d16", "c22", "a8"]:
            load_audio(tmp_path / f"{name}.wav")
    messages = [str(w.message) for w in caught if issubclass(w.category, ResampleWarning)]
    assert len(messages) == 2 and len(caught) == 2, messages
    assert "a8.wav is at 8000 Hz: resampling it to 16000 Hz" in messages[0]
    assert "c22.wav is at 22050 Hz: resampling it to 16000 Hz" in messages[1]
    assert read_audio(tmp_path / "b8.wav")[1] == 8000


def test_stereo_is_averaged(tmp_path):
    left, right = tone(0.5, 16000, 440), tone(0.5, 16000, 880)
    soundfile.write(tmp_path / "s.wav", np.stack([left, right], 1), 16000, subtype="FLOAT")
    torch.testing.assert_close(load_audio(tmp_path / "s.wav"), torch.from_numpy((left + right) / 2))


def test_flac_reads(tmp_path):
    soundfile.write(tmp_path / "a.flac", tone(0.25, 16000), 16000)
    assert load_audio(tmp_path / "a.flac").shape == (4000,)


def test_missing_file(tmp_path):
    with pytest.raises(AudioError, match="nope.wav does not exist"):
        load_audio(tmp_path / "nope.wav")


def test_unreadable_file(tmp_path):
    (tmp_path / "bad.wav").write_bytes(b"RIFF this is not audio at all")
    with pytest.raises(AudioError, match="bad.wav is unreadable"):
        load_audio(tmp_path / "bad.wav")


def test_directory_is_not_audio(tmp_path):
    with pytest.raises(AudioError, match="does not exist"):
        load_audio(tmp_path)


def test_empty_file(tmp_path):
    soundfile.write(tmp_path / "empty.wav", np.zeros(0, dtype=np.int16), 16000)
    with pytest.raises(AudioError, match="empty.wav is empty"):
        load_audio(tmp_path / "empty.wav")


def test_zero_byte_file_is_empty(tmp_path):
    """A 0-byte .wav reads "empty" (soundfile alone says "Format not recognised")."""
    (tmp_path / "zero.wav").write_bytes(b"")
    with pytest.raises(soundfile.LibsndfileError, match="Format not recognised"):
        soundfile.read(tmp_path / "zero.wav")
    with pytest.raises(AudioError, match=r"zero.wav is empty \(0 bytes\)"):
        load_audio(tmp_path / "zero.wav")


def test_silent_file(tmp_path):
    soundfile.write(tmp_path / "quiet.wav", np.zeros(1600, dtype=np.int16), 16000)
    with pytest.raises(AudioError, match="quiet.wav is all silent"):
        load_audio(tmp_path / "quiet.wav")


def test_audio_error_is_value_error():
    assert issubclass(AudioError, ValueError)
