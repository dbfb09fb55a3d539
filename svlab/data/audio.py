"""Reading audio files: soundfile in, 16 kHz float32 mono tensor out, clear errors otherwise."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio.functional


class AudioError(ValueError):
    """An audio file that is missing, unreadable, empty or silent; the message names the file."""


def load_audio(path: str | os.PathLike, sample_rate: int = 16000) -> torch.Tensor:
    """Read ``path`` as a float32 mono waveform in [-1, 1] at ``sample_rate`` Hz.

    Stereo (or more channels) is averaged to mono; another sample rate is resampled with
    ``torchaudio.functional.resample``. Raises :class:`AudioError` naming the file when it is
    missing, unreadable, empty or all silent.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "tone.wav"
    >>> t = np.arange(8000) / 8000
    >>> soundfile.write(p, 0.5 * np.sin(2 * np.pi * 440 * t), 8000)
    >>> load_audio(p).shape
    torch.Size([16000])
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"audio file {path} does not exist")
    try:
        samples, file_rate = soundfile.read(path, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as err:
        raise AudioError(f"audio file {path} is unreadable: {err}") from err
    if samples.shape[0] == 0:
        raise AudioError(f"audio file {path} is empty (0 samples)")
    wave = torch.from_numpy(np.ascontiguousarray(samples.mean(axis=1)))
    if not bool(wave.abs().max() > 0):
        raise AudioError(f"audio file {path} is all silent")
    if file_rate != sample_rate:
        wave = torchaudio.functional.resample(wave, file_rate, sample_rate)
    return wave
