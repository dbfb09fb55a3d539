"""Reading audio files: soundfile in, 16 kHz float32 mono tensor out, clear errors otherwise."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio.functional

RESAMPLED: set[tuple[int, int]] = set()  # (file rate, target rate) pairs already reported


class AudioError(ValueError):
    """An audio file that is missing, unreadable, empty or silent; the message names the file."""


class ResampleWarning(UserWarning):
    """Audio at another sample rate than asked for was resampled (said once per pair of rates)."""


def read_audio(path: str | os.PathLike) -> tuple[torch.Tensor, int]:
    """Read ``path`` as a float32 mono waveform in [-1, 1] at the file's own rate: ``(wave, rate)``.

    Stereo (or more channels) is averaged to mono. Raises :class:`AudioError` naming the file
    when it is missing, unreadable, empty (0 bytes, or a header without samples) or all silent.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "empty.wav"
    >>> _ = p.write_bytes(b"")
    >>> read_audio(p)
    Traceback (most recent call last):
    ...
    svlab.data.audio.AudioError: audio file ...empty.wav is empty (0 bytes)
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"audio file {path} does not exist")
    if path.stat().st_size == 0:
        raise AudioError(f"audio file {path} is empty (0 bytes)")
    try:
        samples, rate = soundfile.read(path, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as err:
        raise AudioError(f"audio file {path} is unreadable: {err}") from err
    if samples.shape[0] == 0:
        raise AudioError(f"audio file {path} is empty (0 samples)")
    wave = torch.from_numpy(np.ascontiguousarray(samples.mean(axis=1)))
    if not bool(wave.abs().max() > 0):
        raise AudioError(f"audio file {path} is all silent")
    return wave, rate


def load_audio(path: str | os.PathLike, sample_rate: int = 16000) -> torch.Tensor:
    """Read ``path`` as a float32 mono waveform in [-1, 1] at ``sample_rate`` Hz.

    As :func:`read_audio`; another sample rate is resampled with
    ``torchaudio.functional.resample``, and said once per process and pair of rates with a
    :class:`ResampleWarning` naming the first such file (``svlab data check`` counts them all).

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "tone.wav"
    >>> t = np.arange(8000) / 8000
    >>> soundfile.write(p, 0.5 * np.sin(2 * np.pi * 440 * t), 8000)
    >>> with warnings.catch_warnings(record=True): load_audio(p).shape
    torch.Size([16000])
    """
    wave, file_rate = read_audio(path)
    if file_rate == sample_rate:
        return wave
    if (file_rate, sample_rate) not in RESAMPLED:
        RESAMPLED.add((file_rate, sample_rate))
        warnings.warn(
            f"{path} is at {file_rate} Hz: resampling it to {sample_rate} Hz, and any other file "
            f"at {file_rate} Hz without a further word (`svlab data check` counts them)",
            ResampleWarning,
            stacklevel=2,
        )
    return torchaudio.functional.resample(wave, file_rate, sample_rate)
