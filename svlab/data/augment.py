"""Augmenting training crops: MUSAN noise, music and babble, room reverberation, speed, masks."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import soundfile
import torch
import torchaudio.functional

SAMPLE_RATE = 16000
MIN_NOISE_SAMPLES = 400  # one 25 ms fbank window: a shorter noise file is refused
ADDITIVE = ("noise", "music", "babble")  # babble: musan/speech files summed
MUSAN_FOLDER = {"noise": "noise", "music": "music", "babble": "speech"}


class AugmentError(ValueError):
    """A noise or impulse-response file that cannot serve (missing, unreadable, silent, too
    short, without energy), or augmentation settings that cannot work; names file and reason."""


@dataclass(frozen=True)
class Augmentation:
    """How crops are augmented: each kind's probability per crop and its range.

    The additive kinds (``noise``, ``music``, ``babble``) and ``reverb`` are drawn
    independently per crop, reverberation first; each additive kind's SNR is drawn uniformly
    from its range (dB, against the crop before any noise). Babble sums ``babble_speakers``
    (an inclusive range) files of ``musan/speech``, each at unit power. ``speeds`` are the
    speed-perturbation factors, one drawn per crop, each a new set of speaker labels; the first
    must be 1.0 (labels below the number of speakers are unperturbed, as wespeaker numbers
    them). ``spec_prob`` applies SpecAugment-style masks to a crop's features: ``time_masks``
    masks of up to ``time_width`` frames, ``freq_masks`` of up to ``freq_width`` bins. ``musan``
    and ``rirs`` are the MUSAN and RIRS_NOISES folders (empty: the profile's).

    >>> Augmentation().active, Augmentation(noise_prob=0.5).on_audio
    (False, True)
    """

    musan: str = ""
    rirs: str = ""
    noise_prob: float = 0.0
    noise_snr: tuple[float, float] = (0.0, 15.0)
    music_prob: float = 0.0
    music_snr: tuple[float, float] = (5.0, 15.0)
    babble_prob: float = 0.0
    babble_snr: tuple[float, float] = (13.0, 20.0)
    babble_speakers: tuple[int, int] = (3, 7)
    reverb_prob: float = 0.0
    speeds: tuple[float, ...] = (1.0,)
    spec_prob: float = 0.0
    time_masks: int = 1
    time_width: int = 10
    freq_masks: int = 1
    freq_width: int = 8

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "augment") -> Augmentation:
        """Settings from a recipe's ``[augment]`` table; bad keys or values name ``source``.

        >>> Augmentation.from_dict({"speeds": [1.0, 0.9, 1.1]}).speeds
        (1.0, 0.9, 1.1)
        >>> Augmentation.from_dict({"noise_snr": [15, 0]})
        Traceback (most recent call last):
        ...
        svlab.data.augment.AugmentError: augment: noise_snr must be [low, high] ..., got [15, 0]
        """
        fields = {f.name: f.default for f in dataclasses.fields(cls)}
        converted: dict[str, Any] = {}
        for key, value in values.items():
            if key not in fields:
                raise AugmentError(f"{source}: unknown key {key!r}; known: {', '.join(fields)}")
            default = fields[key]
            if isinstance(default, tuple):
                converted[key] = _range(key, value, source, len(default) if key != "speeds" else 0)
            else:
                kind = type(default)
                allowed = (int, float) if kind is float else kind
                if isinstance(value, bool) or not isinstance(value, allowed):
                    raise AugmentError(f"{source}: {key} must be {kind.__name__}, got {value!r}")
                converted[key] = kind(value)
        settings = cls(**converted)
        settings.check(source)
        return settings

    def check(self, source: str = "augment") -> None:
        """Raise :class:`AugmentError` for a probability outside [0, 1], a speed that is not
        positive or a first speed other than 1.0, or too few babble speakers.

        >>> Augmentation(speeds=(0.9, 1.0)).check()
        Traceback (most recent call last):
        ...
        svlab.data.augment.AugmentError: augment: speeds must start with 1.0, got (0.9, 1.0)
        """
        for key in ("noise_prob", "music_prob", "babble_prob", "reverb_prob", "spec_prob"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise AugmentError(f"{source}: {key} must be in [0, 1], got {getattr(self, key)}")
        if not self.speeds or self.speeds[0] != 1.0 or min(self.speeds) <= 0:
            raise AugmentError(f"{source}: speeds must start with 1.0, got {self.speeds}")
        if self.babble_speakers[0] < 1:
            raise AugmentError(f"{source}: babble_speakers must be at least 1")
        if min(self.time_masks, self.time_width, self.freq_masks, self.freq_width) < 0:
            raise AugmentError(f"{source}: mask counts and widths must not be negative")

    @property
    def on_audio(self) -> bool:
        """Whether anything changes the waveform (noise, reverberation or speed)."""
        probs = (self.noise_prob, self.music_prob, self.babble_prob, self.reverb_prob)
        return max(probs) > 0 or len(self.speeds) > 1

    @property
    def active(self) -> bool:
        """Whether anything changes a crop at all."""
        return self.on_audio or self.spec_prob > 0


def _range(key: str, value: Any, source: str, size: int) -> tuple:
    """A TOML list as a tuple of numbers: ``size`` of them, ascending (``size`` 0: any count)."""
    ok = isinstance(value, list | tuple) and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value
    )
    if ok and size:
        ok = len(value) == size and value[0] <= value[1]
    if not ok or not value:
        shape = "[low, high] with low <= high" if size else "a list of numbers"
        raise AugmentError(f"{source}: {key} must be {shape}, got {value!r}")
    kind = int if key == "babble_speakers" else float
    return tuple(kind(v) for v in value)


def _uniform(g: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand(1, generator=g, dtype=torch.float64))


def _index(g: torch.Generator, n: int) -> int:
    return int(torch.randint(n, (1,), generator=g))


def mix_at_snr(speech: torch.Tensor, noise: torch.Tensor, snr_db: float) -> torch.Tensor:
    """``speech`` plus ``noise`` scaled to ``snr_db`` below it (``torchaudio``'s ``add_noise``).

    >>> speech, noise = torch.ones(100), torch.full((100,), 0.5)
    >>> round((mix_at_snr(speech, noise, 20.0) - speech)[0].item(), 6)
    0.1
    """
    return torchaudio.functional.add_noise(
        speech[None], noise[None], torch.tensor([snr_db], dtype=speech.dtype)
    )[0]


def reverberate(wave: torch.Tensor, rir: torch.Tensor) -> torch.Tensor:
    """``wave`` through the room ``rir``, aligned on its direct path (its largest tap), so the
    speech stays where it was, at the power ``wave`` had (as Kaldi's reverberation does). The
    linear convolution is one FFT product at a power-of-2 length (``torchaudio``'s
    ``fftconvolve`` takes the exact length, whose FFTs were 2-3x slower here).

    >>> rir = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.5])
    >>> [round(x, 4) for x in reverberate(torch.tensor([1.0, 0.0, 0.0, 0.0]), rir).tolist()]
    [0.8944, 0.0, 0.4472, 0.0]
    """
    direct = int(rir.abs().argmax())
    size = 1 << (wave.numel() + rir.numel() - 2).bit_length()  # a power of 2: 2-3x faster FFTs
    spectrum = torch.fft.rfft(wave, size) * torch.fft.rfft(rir.to(wave.dtype), size)
    wet = torch.fft.irfft(spectrum, size)[direct : direct + wave.numel()]
    power = wet.pow(2).sum()
    return wet * (wave.pow(2).sum() / power).sqrt() if power > 0 else wet


def change_speed(wave: torch.Tensor, factor: float) -> torch.Tensor:
    """``wave`` played ``factor`` times as fast (tempo and pitch, as sox's ``speed``):
    ``len(wave) / factor`` samples, by ``torchaudio.functional.speed``.

    >>> change_speed(torch.randn(16000), 1.1).shape, change_speed(torch.randn(16000), 0.9).shape
    (torch.Size([14546]), torch.Size([17778]))
    """
    if factor == 1.0:
        return wave
    return torchaudio.functional.speed(wave, SAMPLE_RATE, factor)[0]


def mask_features(
    feats: torch.Tensor, g: torch.Generator, masks: tuple[int, int, int, int]
) -> torch.Tensor:
    """``feats`` ``[T, F]`` with SpecAugment-style masks zeroed: ``masks`` is (time masks,
    time width, frequency masks, frequency width); each mask's width is drawn in [0, width].

    >>> masked = mask_features(torch.ones(20, 8), torch.Generator().manual_seed(0), (1, 5, 1, 3))
    >>> masked.shape, bool((masked == 0).any())
    (torch.Size([20, 8]), True)
    """
    feats = feats.clone()
    n_time, time_width, n_freq, freq_width = masks
    for axis, count, width in ((0, n_time, time_width), (1, n_freq, freq_width)):
        size = feats.shape[axis]
        for _ in range(count):
            w = min(_index(g, width + 1), size)
            start = _index(g, size - w + 1)
            feats.narrow(axis, start, w).zero_()
    return feats


def _read_segment(path: Path, length: int, g: torch.Generator, what: str) -> torch.Tensor:
    """``length`` samples at 16 kHz from a random place in ``path`` (repeated end to end when
    the file is shorter); a named :class:`AugmentError` instead of a NaN or silent segment."""
    try:
        info = soundfile.info(path)
        frames, rate = info.frames, info.samplerate
        need = math.ceil(length * rate / SAMPLE_RATE)
        if frames < MIN_NOISE_SAMPLES * rate // SAMPLE_RATE:
            raise AugmentError(
                f"{what} file {path} is too short: {frames} samples at {rate} Hz, "
                f"need at least {MIN_NOISE_SAMPLES * rate // SAMPLE_RATE}"
            )
        start = _index(g, frames - need + 1) if frames > need else 0
        samples, _ = soundfile.read(path, frames=need, start=start, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as err:
        raise AugmentError(f"{what} file {path} is unreadable: {err}") from err
    wave = torch.from_numpy(samples.mean(axis=1))
    if rate != SAMPLE_RATE:
        wave = torchaudio.functional.resample(wave, rate, SAMPLE_RATE)
    if not bool(torch.isfinite(wave).all()):
        raise AugmentError(f"{what} file {path} holds samples that are not finite")
    if not bool(wave.abs().max() > 0):
        seconds = f"{start / rate:.2f} s to {(start + samples.shape[0]) / rate:.2f} s"
        raise AugmentError(f"{what} file {path} is silent from {seconds}")
    if wave.numel() < length:
        wave = wave.repeat(-(-length // wave.numel()))
    return wave[:length]


def read_rir(path: str | Path) -> torch.Tensor:
    """A room impulse response at 16 kHz; :class:`AugmentError` naming the file when it is
    missing, unreadable, not finite or has no energy.

    >>> read_rir("/no/Room001-00001.wav")
    Traceback (most recent call last):
    ...
    svlab.data.augment.AugmentError: impulse-response file /no/Room001-00001.wav does not exist
    """
    path = Path(path)
    if not path.is_file():
        raise AugmentError(f"impulse-response file {path} does not exist")
    try:
        samples, rate = soundfile.read(path, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as err:
        raise AugmentError(f"impulse-response file {path} is unreadable: {err}") from err
    rir = torch.from_numpy(samples[:, 0].copy())
    if rate != SAMPLE_RATE and rir.numel():
        rir = torchaudio.functional.resample(rir, rate, SAMPLE_RATE)
    if not bool(torch.isfinite(rir).all()):
        raise AugmentError(f"impulse-response file {path} holds samples that are not finite")
    if not rir.numel() or not bool(rir.abs().max() > 0):
        raise AugmentError(f"impulse-response file {path} has no energy (all zero or empty)")
    return rir


def _wav_files(folder: Path, layout: str) -> list[Path]:
    files = sorted(folder.rglob("*.wav")) if folder.is_dir() else []
    if not files:
        raise AugmentError(f"{folder} holds no .wav files (expected the layout {layout})")
    return files


class Augmenter:
    """Draws and applies :class:`Augmentation` to one crop at a time, from files in the MUSAN
    layout (``musan/{noise,music,speech}/<subset>/*.wav``) and the RIRS_NOISES layout
    (``RIRS_NOISES/simulated_rirs/<room size>/RoomNNN/*.wav``, or any folder of wav files).

    Every draw comes from the generator it is handed, so a crop is a pure function of it.

    >>> sped = Augmenter(Augmentation(speeds=(1.0, 1.1))).audio(
    ...     lambda n: torch.randn(n), 32240, torch.Generator().manual_seed(1))
    >>> sped[0].shape, sped[1] in (0, 1)
    (torch.Size([32240]), True)
    """

    def __init__(
        self, settings: Augmentation, musan: str | Path | None = None,
        rirs: str | Path | None = None,
    ) -> None:  # fmt: skip
        settings.check()
        self.settings = settings
        self.noises: dict[str, list[Path]] = {}
        for kind in ADDITIVE:
            if getattr(settings, f"{kind}_prob") > 0:
                if musan is None:
                    raise AugmentError(f"{kind}_prob > 0 needs a MUSAN folder (augment.musan)")
                self.noises[kind] = _wav_files(
                    Path(musan) / MUSAN_FOLDER[kind], f"musan/{MUSAN_FOLDER[kind]}/<subset>/*.wav"
                )
        self.rirs: list[Path] = []
        if settings.reverb_prob > 0:
            if rirs is None:
                raise AugmentError("reverb_prob > 0 needs an RIRS_NOISES folder (augment.rirs)")
            simulated = Path(rirs) / "simulated_rirs"
            self.rirs = _wav_files(
                simulated if simulated.is_dir() else Path(rirs),
                "RIRS_NOISES/simulated_rirs/<room size>/RoomNNN/*.wav",
            )

    def audio(self, cut: Any, length: int, g: torch.Generator) -> tuple[torch.Tensor, int]:
        """One augmented crop of ``length`` samples and its speed index: ``cut(n)`` gives the
        ``n`` samples of speech the chosen speed turns into ``length``; then reverberation,
        then each additive kind, each with its probability."""
        s = self.settings
        k = _index(g, len(s.speeds)) if len(s.speeds) > 1 else 0
        wave = change_speed(cut(round(length * s.speeds[k])), s.speeds[k])
        wave = torch.cat([wave, wave[: max(0, length - wave.numel())]])[:length]
        if s.reverb_prob and _uniform(g, 0, 1) < s.reverb_prob:
            wave = reverberate(wave, read_rir(self.rirs[_index(g, len(self.rirs))]))
        clean = wave
        for kind, files in self.noises.items():
            if _uniform(g, 0, 1) >= getattr(s, f"{kind}_prob"):
                continue
            snr = _uniform(g, *getattr(s, f"{kind}_snr"))
            noise = self.noise(kind, files, length, g)
            wave = wave + (mix_at_snr(clean, noise, snr) - clean)
        return wave, k

    def noise(self, kind: str, files: list[Path], length: int, g: torch.Generator) -> torch.Tensor:
        """``length`` samples of one ``kind``: a segment of one file, or for babble the sum of
        ``babble_speakers`` segments, each at unit power."""
        if kind != "babble":
            return _read_segment(files[_index(g, len(files))], length, g, kind)
        low, high = self.settings.babble_speakers
        talkers = [
            _read_segment(files[_index(g, len(files))], length, g, "babble")
            for _ in range(low + _index(g, high - low + 1))
        ]
        return sum(t / t.pow(2).mean().sqrt() for t in talkers)

    def features(self, feats: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """``feats`` ``[T, F]`` of one crop, masked with probability ``spec_prob``."""
        s = self.settings
        if not s.spec_prob or _uniform(g, 0, 1) >= s.spec_prob:
            return feats
        return mask_features(feats, g, (s.time_masks, s.time_width, s.freq_masks, s.freq_width))
