"""Reading audio: formats, resampling, channels, and clear errors for bad files."""

import numpy as np
import pytest
import soundfile
import torch
import torchaudio.functional

from svlab.data import AudioError, load_audio


def tone(seconds: float, rate: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_pcm16_reads_exactly(tmp_path):
    samples = np.array([0, 1, -1, 32767, -32768, 1234], dtype=np.int16)
    soundfile.write(tmp_path / "a.wav", samples, 16000, subtype="PCM_16")
    wave = load_audio(tmp_path / "a.wav")
    assert wave.dtype == torch.float32
    assert torch.equal(wave, torch.from_numpy(samples.astype(np.float32) / 32768))


def test_other_rate_is_resampled(tmp_path):
    soundfile.write(tmp_path / "a.wav", tone(1.0, 8000), 8000, subtype="FLOAT")
    wave = load_audio(tmp_path / "a.wav")
    expected = torchaudio.functional.resample(torch.from_numpy(tone(1.0, 8000)), 8000, 16000)
    assert wave.shape == (16000,)
    torch.testing.assert_close(wave, expected)
    # the 440 Hz tone stays at 440 Hz: its spectral peak at 16 kHz
    peak = torch.fft.rfft(wave).abs().argmax().item() * 16000 / wave.numel()
    assert abs(peak - 440) < 2


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


def test_silent_file(tmp_path):
    soundfile.write(tmp_path / "quiet.wav", np.zeros(1600, dtype=np.int16), 16000)
    with pytest.raises(AudioError, match="quiet.wav is all silent"):
        load_audio(tmp_path / "quiet.wav")


def test_audio_error_is_value_error():
    assert issubclass(AudioError, ValueError)
