"""Training crops and test utterances as tensors: what models are trained and scored on."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from svlab.data.audio import load_audio
from svlab.data.voxceleb import read_train_list, wav_dir

SAMPLE_RATE = 16000
PRELOAD_LIMIT_BYTES = 256 * 2**20


def crop_samples(frames: int = 200, sample_rate: int = SAMPLE_RATE) -> int:
    """Samples that give exactly ``frames`` fbank frames (25 ms window, 10 ms shift).

    >>> crop_samples(200)
    32240
    """
    shift, window = sample_rate // 100, sample_rate * 25 // 1000
    return shift * (frames - 1) + window


def fit_length(wave: torch.Tensor, length: int, start: int = 0) -> torch.Tensor:
    """``length`` samples of ``wave`` from ``start``, wrapping around when it is too short.

    >>> fit_length(torch.arange(4.0), 6).tolist()
    [0.0, 1.0, 2.0, 3.0, 0.0, 1.0]
    """
    if wave.numel() < length:
        wave = wave.repeat(-(-length // wave.numel()) + 1)
    return wave[start : start + length]


class TrainCrops(Dataset):
    """Random fixed-length crops of training utterances: item ``i`` is ``(wave, speaker_index)``.

    The crop of item ``i`` is drawn from a generator seeded by ``(seed, epoch, i)``, so a run is
    reproducible, the same in any number of DataLoader workers, and resumable: the trainer
    calls :meth:`set_epoch`. Utterances shorter than a crop are wrapped around. Small corpora
    (under 256 MB of audio files) are read into memory once.

    >>> import tempfile, pathlib, soundfile
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> (root / "wav" / "id00001" / "s").mkdir(parents=True)
    >>> soundfile.write(root / "wav/id00001/s/00001.wav", np.random.rand(8000) - 0.5, 16000)
    >>> _ = (root / "train.txt").write_text("id00001 id00001/s/00001.wav\\n")
    >>> crops = TrainCrops.from_corpus(root)
    >>> wave, speaker = crops[0]
    >>> wave.shape, speaker, crops.speakers
    (torch.Size([32240]), 0, ['id00001'])
    """

    def __init__(
        self,
        paths: list[Path],
        speakers: list[str],
        samples: int = crop_samples(200),
        seed: int = 0,
        preload: bool | None = None,
    ):
        if len(paths) != len(speakers) or not paths:
            raise ValueError(
                f"need one speaker per path, got {len(paths)} paths, {len(speakers)} speakers"
            )
        self.paths = list(paths)
        self.speakers = sorted(set(speakers))
        index = {speaker: i for i, speaker in enumerate(self.speakers)}
        self.labels = [index[s] for s in speakers]
        self.samples, self.seed, self.epoch = samples, seed, 0
        if preload is None:
            preload = sum(p.stat().st_size for p in self.paths) < PRELOAD_LIMIT_BYTES
        self.waves = [load_audio(p) for p in self.paths] if preload else None

    @classmethod
    def from_corpus(
        cls, root: str | os.PathLike, train_list: str = "train.txt", **kwargs
    ) -> TrainCrops:
        """The crops of every utterance in ``root/train_list`` (default ``train.txt``)."""
        utterances = read_train_list(Path(root) / train_list, wav_root=root)
        audio = wav_dir(root)
        return cls([audio / u.path for u in utterances], [u.speaker for u in utterances], **kwargs)

    def set_epoch(self, epoch: int) -> None:
        """Draw a fresh set of crops: item ``i`` of epoch ``e`` depends on (seed, e, i) only."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        wave = self.waves[i] if self.waves is not None else load_audio(self.paths[i])
        rng = np.random.default_rng((self.seed, self.epoch, i))
        start = int(rng.integers(0, max(1, wave.numel() - self.samples + 1)))
        return fit_length(wave, self.samples, start), self.labels[i]


def load_utterances(
    root: str | os.PathLike, paths: list[str], samples: int | None = None
) -> list[torch.Tensor]:
    """Read test utterances (paths relative to ``wav/``): full length, or their first
    ``samples`` samples (wrapped around when shorter) for fixed-length scoring.

    >>> import tempfile, pathlib, soundfile
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> (root / "wav" / "id10001" / "s").mkdir(parents=True)
    >>> soundfile.write(root / "wav/id10001/s/00001.wav", np.random.rand(8000) - 0.5, 16000)
    >>> [w.shape[0] for w in load_utterances(root, ["id10001/s/00001.wav"], samples=12000)]
    [12000]
    """
    audio = wav_dir(root)
    waves = [load_audio(audio / path) for path in paths]
    if samples is None:
        return waves
    return [fit_length(wave, samples) for wave in waves]
