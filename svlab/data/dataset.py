"""Training crops (``SpeakerCrops``) and test utterances as tensors: what models see."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from svlab.data.audio import load_audio
from svlab.data.augment import Augmenter
from svlab.data.voxceleb import read_train_list, wav_dir
from svlab.features import featurize

SAMPLE_RATE = 16000
PRELOAD_LIMIT_BYTES = 256 * 2**20
AUGMENT_KEY = 0xA06  # tags the augmentation draws, a stream apart from the crops' own


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


FEATURE_CACHE: dict[tuple, list[torch.Tensor]] = {}  # precomputed features, per list file


def _generator(*key: int) -> torch.Generator:
    """A torch generator seeded from a tuple of integers (seed, epoch, batch, ...)."""
    seed = int(np.random.SeedSequence(list(key)).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(seed % 2**63)


def _crop(x: torch.Tensor, length: int, start_fraction: float) -> torch.Tensor:
    """``length`` items of ``x`` (along dim 0) from a start at ``start_fraction`` of the slack;
    a shorter ``x`` is repeated end to end to length first.

    >>> _crop(torch.arange(4.0), 6, 0.0).tolist()
    [0.0, 1.0, 2.0, 3.0, 0.0, 1.0]
    """
    if x.shape[0] < length:
        x = x.repeat(math.ceil(length / x.shape[0]), *[1] * (x.dim() - 1))
    start = int(start_fraction * (x.shape[0] - length + 1))
    return x[start : start + length]


class SpeakerCrops(Dataset):
    """The training utterances of a corpus and their speaker labels, served as random crops.

    The one crop dataset of svlab: the trainer takes whole batches of fbank crops
    (:meth:`batch`), anything else can index it as a ``Dataset`` whose item ``i`` is
    ``(wave, label)``, a crop of :func:`crop_samples` ``(crop_frames)`` samples.

    Batch ``b`` of epoch ``e`` is a pure function of ``(seed, e, b)``: which utterances (one
    shuffle per epoch) and where each crop starts; item ``i`` of epoch ``e`` (set by
    :meth:`set_epoch`) a pure function of ``(seed, e, i)``. So a resumed run sees the data of an
    uninterrupted one, DataLoader workers change nothing, and ranks of a distributed run take
    disjoint slices of one global batch. Utterances shorter than a crop are repeated end to end.
    With ``features`` (fbank of whole utterances, computed once) batches are cut from them;
    otherwise from the audio, featurized with dither: Gaussian noise of ``dither`` (in 16-bit
    sample units) added to the crop before fbank. Mean normalisation is applied per crop, as
    when featurizing the crop's audio. ``front_end`` names the features
    (``svlab.features.FRONT_ENDS``): kaldi fbank, or the front end a loaded model was trained
    on. ``preload`` keeps the audio in memory (default: when it has no ``features`` and its
    files hold under 256 MB). ``speakers`` names the labels (``speakers[label]``).

    ``augment`` (an :class:`svlab.data.augment.Augmenter`) changes each crop: noise,
    reverberation and speed on the audio (so it needs no ``features``), masks on its
    features; crop ``j`` of global batch ``b`` draws from ``(seed, e, b, j)`` alone, item ``i``
    from ``(seed, e, i)``, so the guarantees above hold. With several ``speeds`` each speed is a
    new set of labels (``n_speakers`` grows by that factor; speaker ``sp0.9-<name>`` is label
    ``label + n_base`` for speed index 1). Without it every crop is as before.

    >>> import tempfile, pathlib, soundfile
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> (root / "wav" / "id00001" / "s").mkdir(parents=True)
    >>> soundfile.write(root / "wav/id00001/s/00001.wav", np.random.rand(8000) - 0.5, 16000)
    >>> _ = (root / "train.txt").write_text("id00001 id00001/s/00001.wav\\n")
    >>> crops = SpeakerCrops.from_corpus(root, crop_frames=200)
    >>> wave, label = crops[0]
    >>> wave.shape, label, crops.speakers, crops.batch(0, 0, batch_size=1)[0].shape
    (torch.Size([32240]), 0, ['id00001'], torch.Size([1, 200, 80]))
    """

    def __init__(
        self,
        paths: list[Path],
        labels: list[int],
        crop_frames: int = 200,
        seed: int = 0,
        features: list[torch.Tensor] | None = None,
        dither: float = 0.0,
        front_end: str = "kaldi",
        speakers: list[str] | None = None,
        preload: bool | None = None,
        augment: Augmenter | None = None,
    ) -> None:
        if not paths:
            raise ValueError("no training utterances")
        if len(labels) != len(paths):
            raise ValueError(
                f"need one label per path, got {len(paths)} paths, {len(labels)} labels"
            )
        self.paths, self.labels = list(paths), torch.tensor(labels)
        self.crop_frames, self.seed, self.epoch = crop_frames, seed, 0
        self.features, self.dither, self.front_end = features, dither, front_end
        self.n_base = int(self.labels.max()) + 1
        names = speakers or [str(i) for i in range(self.n_base)]
        if len(names) != self.n_base:
            raise ValueError(f"{len(names)} speaker names for {self.n_base} labels")
        self.augment = augment if augment is not None and augment.settings.active else None
        if self.augment is not None and self.augment.settings.on_audio and features is not None:
            raise ValueError(
                "noise, reverberation and speed augment the audio: pass no precomputed features "
                "(precompute_features = false)"
            )
        speeds = self.augment.settings.speeds if self.augment is not None else (1.0,)
        self.speakers = [n if f == 1.0 else f"sp{f}-{n}" for f in speeds for n in names]
        if preload is None:
            preload = features is None and (
                sum(p.stat().st_size for p in self.paths) < PRELOAD_LIMIT_BYTES
            )
        self.waves = [load_audio(p) for p in self.paths] if preload else None

    @classmethod
    def from_corpus(
        cls,
        root: str | os.PathLike,
        crop_frames: int = 200,
        seed: int = 0,
        precompute: bool = True,
        dither: float = 0.0,
        front_end: str = "kaldi",
        train_list: str = "train.txt",
        preload: bool | None = None,
        augment: Augmenter | None = None,
    ) -> SpeakerCrops:
        """Read ``root/train_list`` (``<speaker> <path under wav/>`` per line).

        Speakers are numbered in sorted order. With ``precompute`` the features of every
        utterance are computed once per process (and kept as float16) before any crop.

        >>> SpeakerCrops.from_corpus("/no/corpus", crop_frames=200)
        Traceback (most recent call last):
        ...
        svlab.data.voxceleb.CorpusError: list file /no/corpus/train.txt does not exist
        """
        root = Path(root)
        listing = root / train_list
        utterances = read_train_list(listing)
        names = sorted({u.speaker for u in utterances})
        index = {speaker: i for i, speaker in enumerate(names)}
        paths = [wav_dir(root) / u.path for u in utterances]
        labels = [index[u.speaker] for u in utterances]
        features = None
        if precompute:
            key = (str(listing.resolve()), listing.stat().st_mtime_ns, front_end)
            if key not in FEATURE_CACHE:
                FEATURE_CACHE[key] = [
                    featurize(load_audio(p), front_end, cmn=False)[0].half() for p in paths
                ]
            features = FEATURE_CACHE[key]
        return cls(
            paths, labels, crop_frames, seed, features, dither, front_end, names, preload, augment
        )

    @property
    def n_speakers(self) -> int:
        """The number of training labels, from 0 to ``n_speakers - 1``: ``n_base`` speakers
        times the number of augmentation speeds."""
        return len(self.speakers)

    @property
    def samples(self) -> int:
        """Audio samples in one crop (``crop_frames`` fbank frames)."""
        return crop_samples(self.crop_frames)

    def batches_per_epoch(self, batch_size: int) -> int:
        """Full batches in one pass over the utterances (the rest is dropped).

        >>> _example_crops().batches_per_epoch(2)
        1
        """
        return len(self.paths) // batch_size

    def batch(
        self, epoch: int, index: int, batch_size: int, rank: int = 0, world: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's share of global batch ``index`` of ``epoch``: fbank ``[B/world, T, F]``
        and speaker labels.

        >>> crops = _example_crops()
        >>> feats, labels = crops.batch(epoch=0, index=0, batch_size=2)
        >>> feats.shape, sorted(labels.tolist())
        (torch.Size([2, 5, 80]), [0, 1])
        >>> half, _ = crops.batch(epoch=0, index=0, batch_size=2, rank=1, world=2)
        >>> torch.equal(half[0], feats[1])
        True
        """
        order = torch.randperm(len(self.paths), generator=_generator(self.seed, epoch))
        chosen = order[index * batch_size : (index + 1) * batch_size]
        starts = torch.rand(
            batch_size, generator=_generator(self.seed, epoch, index), dtype=torch.float64
        )
        chosen, starts = chosen[rank::world], starts[rank::world]
        noise = _generator(self.seed, epoch, index, rank) if self.dither else None
        if self.augment is None:
            return self._features(chosen.tolist(), starts.tolist(), noise), self.labels[chosen]
        draws = [_generator(self.seed, epoch, index, j, AUGMENT_KEY)
                 for j in range(batch_size)][rank::world]  # fmt: skip
        return self._augmented(chosen.tolist(), starts.tolist(), draws, noise)

    def centre_crops(self, indices: list[int]) -> torch.Tensor:
        """fbank ``[len(indices), crop_frames, F]`` of the middle of each utterance, no dither.

        >>> _example_crops().centre_crops([0, 1])[:, :, 0].tolist()
        [[-2.0, -1.0, 0.0, 1.0, 2.0], [-2.0, -1.0, 0.0, 1.0, 2.0]]
        """
        return self._features(indices, [0.5] * len(indices))

    def set_epoch(self, epoch: int) -> None:
        """Draw fresh item crops: item ``i`` of epoch ``e`` depends on (seed, e, i) only."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        start = torch.rand(1, generator=_generator(self.seed, self.epoch, i), dtype=torch.float64)
        if self.augment is None or not self.augment.settings.on_audio:
            return _crop(self._wave(i), self.samples, float(start)), int(self.labels[i])
        draws = _generator(self.seed, self.epoch, i, AUGMENT_KEY)
        return self._augmented_wave(i, float(start), draws)

    def _wave(self, i: int) -> torch.Tensor:
        return self.waves[i] if self.waves is not None else load_audio(self.paths[i])

    def _features(
        self, indices: list[int], starts: list[float], noise: torch.Generator | None = None
    ) -> torch.Tensor:
        """fbank of one crop of each utterance, starting at ``starts`` (fractions of the slack);
        audio crops get dither drawn from ``noise``, if given."""
        pairs = zip(indices, starts, strict=True)
        if self.features is not None:
            feats = torch.stack(
                [_crop(self.features[i].float(), self.crop_frames, s) for i, s in pairs]
            )
            return feats - feats.mean(dim=1, keepdim=True)
        waves = torch.stack([_crop(self._wave(i), self.samples, s) for i, s in pairs])
        return self._featurize(waves, noise)

    def _featurize(self, waves: torch.Tensor, noise: torch.Generator | None) -> torch.Tensor:
        if noise is not None:
            waves = waves + torch.randn(waves.shape, generator=noise) * (self.dither / 2**15)
        return featurize(waves, self.front_end)

    def _augmented_wave(self, i: int, start: float, draws: torch.Generator) -> tuple:
        """An augmented crop of utterance ``i`` and its label (its speed's set of labels)."""
        wave = self._wave(i)
        crop, k = self.augment.audio(lambda n: _crop(wave, n, start), self.samples, draws)
        return crop, int(self.labels[i]) + k * self.n_base

    def _augmented(
        self, indices: list[int], starts: list[float], draws: list, noise: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """fbank and labels of augmented crops; crop ``j`` draws from ``draws[j]``."""
        if self.augment.settings.on_audio:
            triples = zip(indices, starts, draws, strict=True)
            crops = [self._augmented_wave(i, s, g) for i, s, g in triples]
            feats = self._featurize(torch.stack([c for c, _ in crops]), noise)
            labels = torch.tensor([label for _, label in crops])
        else:
            feats, labels = self._features(indices, starts, noise), self.labels[indices]
        masked = [self.augment.features(f, g) for f, g in zip(feats, draws, strict=True)]
        return torch.stack(masked), labels


def _example_crops() -> SpeakerCrops:
    """Two in-memory utterances of two speakers, for the examples."""
    features = [torch.arange(8.0).repeat(80, 1).T, torch.arange(12.0).repeat(80, 1).T]
    return SpeakerCrops([Path("a.wav"), Path("b.wav")], [0, 1], crop_frames=5, features=features)


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
