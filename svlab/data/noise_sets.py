"""Offline stand-ins for MUSAN and RIRS_NOISES: coloured noise, tonal music, babble, rooms."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import soundfile

from svlab.data.synth import _rng, draw_session, draw_speaker, synthesize_utterance

SAMPLE_RATE = 16000
VERSION = 1
SPEED_OF_SOUND = 343.0
# Room sizes in the manner of Ko et al.'s simulated rooms (RIRS_NOISES): side lengths in metres.
ROOM_SIZES = {"smallroom": (1.5, 10.0), "mediumroom": (10.0, 30.0), "largeroom": (30.0, 50.0)}
KIND_KEYS = {"noise": 1, "music": 2, "speech": 3, "room": 4}


def coloured_noise(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """``n`` samples of noise whose power falls as ``1 / f ** exponent`` (0 white, 1 pink,
    2 brown), at unit power.

    >>> x = coloured_noise(np.random.default_rng(0), 16000, 1.0)
    >>> x.shape, round(float(np.mean(x**2)), 6)
    ((16000,), 1.0)
    """
    freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    spectrum = rng.standard_normal(freqs.size) + 1j * rng.standard_normal(freqs.size)
    spectrum *= np.maximum(freqs, 20.0) ** (-exponent / 2)
    spectrum[0] = 0
    x = np.fft.irfft(spectrum, n)
    return x / np.sqrt(np.mean(x**2))


def tonal_music(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` samples of "music": notes of a random scale, each a chord of harmonic tones with
    an attack and a decay, at unit power.

    >>> tonal_music(np.random.default_rng(0), 8000).shape
    (8000,)
    """
    root = 110.0 * 2 ** (rng.integers(0, 12) / 12)
    scale = np.array([0, 2, 4, 5, 7, 9, 11, 12])
    t = np.arange(n) / SAMPLE_RATE
    x = np.zeros(n)
    start = 0
    while start < n:
        length = int(SAMPLE_RATE * rng.choice([0.125, 0.25, 0.5]))
        seg = t[: min(length, n - start)]
        envelope = np.minimum(seg / 0.01, 1.0) * np.exp(-seg / rng.uniform(0.1, 0.4))
        for step in rng.choice(scale, size=int(rng.integers(1, 4)), replace=False):
            f0 = root * 2 ** ((step + 12 * rng.integers(0, 3)) / 12)
            for h in range(1, 6):
                if h * f0 < SAMPLE_RATE / 2:
                    x[start : start + seg.size] += envelope * np.sin(2 * np.pi * h * f0 * seg) / h
        start += length
    return x / np.sqrt(np.mean(x**2))


def room_impulse_response(
    size: tuple[float, float, float],
    absorption: float,
    source: tuple[float, float, float],
    mic: tuple[float, float, float],
    seconds: float = 1.0,
) -> np.ndarray:
    """The impulse response of a shoebox room by the image-source method (Allen & Berkley):
    every wall reflects ``sqrt(1 - absorption)`` of the amplitude, each image arrives at its
    nearest sample with ``1 / distance`` spreading; ``seconds`` long, the direct path at 1.

    >>> rir = room_impulse_response((4.0, 3.0, 2.5), 0.4, (1.0, 1.0, 1.2), (3.0, 2.0, 1.5), 0.3)
    >>> rir.shape, int(np.argmax(rir != 0)), float(rir[105])
    ((4800,), 105, 1.0)
    """
    beta = np.sqrt(1.0 - absorption)
    n = int(seconds * SAMPLE_RATE)
    reach = SPEED_OF_SOUND * seconds
    axes = []
    for length, s, m in zip(size, source, mic, strict=True):
        orders = np.arange(-int(reach / (2 * length)) - 1, int(reach / (2 * length)) + 2)
        parity = np.array([0, 1])
        position = (1 - 2 * parity[None, :]) * s + 2 * orders[:, None] * length - m
        bounces = np.abs(orders[:, None] - parity[None, :]) + np.abs(orders[:, None])
        axes.append((position.ravel(), bounces.ravel()))
    (x, bx), (y, by), (z, bz) = axes
    distance = np.sqrt(x[:, None, None] ** 2 + y[None, :, None] ** 2 + z[None, None, :] ** 2)
    bounces = bx[:, None, None] + by[None, :, None] + bz[None, None, :]
    delay = np.rint(distance * SAMPLE_RATE / SPEED_OF_SOUND).astype(np.int64)
    keep = delay < n
    gains = beta ** bounces[keep] / distance[keep]
    rir = np.bincount(delay[keep], weights=gains, minlength=n)
    return rir / rir[delay.min()]


def _placed_rir(
    rng: np.random.Generator, size: tuple, absorption: float, seconds: float
) -> np.ndarray:
    """The response between a source and a microphone placed at random, 0.3 m or more from
    the walls and 0.5 m or more apart, drawn again until the direct path is the largest tap
    (where reverberation aligns a crop)."""
    for _ in range(1000):
        source, mic = (np.array([rng.uniform(0.3, d - 0.3) for d in size]) for _ in range(2))
        if np.linalg.norm(source - mic) < 0.5:
            continue
        rir = room_impulse_response(size, absorption, tuple(source), tuple(mic), seconds)
        if np.argmax(np.abs(rir)) == np.argmax(rir != 0):
            return rir
    raise RuntimeError(f"no placement in a {size} m room has its direct path as largest tap")


def _write(path: Path, wave: np.ndarray, peak: float) -> None:
    if not np.abs(wave).max() > 0:
        raise RuntimeError(f"the stand-in {path.name} came out silent: draw longer files")
    path.parent.mkdir(parents=True, exist_ok=True)
    scaled = np.round(wave * (peak * 32767 / np.abs(wave).max())).astype(np.int16)
    soundfile.write(path, scaled, SAMPLE_RATE, subtype="PCM_16")


def _fresh(root: Path, settings: dict, overwrite: bool, build) -> Path:
    """Make a stand-in set with ``build(folder)`` in a temporary folder beside ``root``, with a
    ``meta.json`` of ``settings``, and rename it into place (or keep a current one)."""
    meta = {"version": VERSION, "settings": settings}
    if is_current(root, settings) and not overwrite:
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}."))
    try:
        build(tmp)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        if is_current(root, settings) and not overwrite:  # another process made it meanwhile
            shutil.rmtree(tmp)
            return root
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def is_current(root: str | os.PathLike, settings: dict) -> bool:
    """Whether ``root`` holds a stand-in set made by this version with these settings.

    >>> is_current("/no/set", {})
    False
    """
    meta = Path(root) / "meta.json"
    if not meta.is_file():
        return False
    return json.loads(meta.read_text()) == {"version": VERSION, "settings": settings}


def write_noise_set(
    root: str | os.PathLike,
    *,
    seed: int = 0,
    files: int = 8,
    seconds: tuple[float, float] = (3.0, 6.0),
    overwrite: bool = False,
) -> Path:
    """A MUSAN-layout stand-in under ``root``: ``noise/synthetic/`` (white to brown noise),
    ``music/synthetic/`` (:func:`tonal_music`), ``speech/synthetic/`` (utterances of speakers
    drawn afresh from the corpus generator's population, in no train or test list), ``files``
    of each, 16 kHz 16-bit, lasting ``seconds``. Deterministic in ``seed``; made beside
    ``root`` and renamed into place; a current set is kept unless ``overwrite``.

    >>> import tempfile
    >>> root = write_noise_set(Path(tempfile.mkdtemp()) / "musan", files=1, seconds=(0.5, 0.5))
    >>> sorted(p.relative_to(root).as_posix() for p in root.rglob("*.wav"))[:2]
    ['music/synthetic/music-synthetic-0000.wav', 'noise/synthetic/noise-synthetic-0000.wav']
    """
    if not 0.5 <= seconds[0] <= seconds[1]:
        raise ValueError(f"seconds must be a range from 0.5 s up, got {seconds}")
    settings = {"kind": "musan", "seed": seed, "files": files, "seconds": list(seconds)}

    def build(folder: Path) -> None:
        for kind in ("noise", "music", "speech"):
            for i in range(files):
                rng = _rng(seed, KIND_KEYS[kind], i)
                n = int(round(float(rng.uniform(*seconds)), 2) * SAMPLE_RATE)
                if kind == "noise":
                    wave = coloured_noise(rng, n, float(rng.uniform(0.0, 2.0)))
                elif kind == "music":
                    wave = tonal_music(rng, n)
                else:
                    speaker, session = draw_speaker(rng), draw_session(rng, 0.5)
                    wave = synthesize_utterance(
                        speaker, session, n / SAMPLE_RATE, 0.5, seed=int(rng.integers(2**63))
                    ).astype(np.float64)
                path = folder / kind / "synthetic" / f"{kind}-synthetic-{i:04d}.wav"
                _write(path, wave, float(rng.uniform(0.3, 0.9)))

    return _fresh(Path(root), settings, overwrite, build)


def write_rir_set(
    root: str | os.PathLike,
    *,
    seed: int = 0,
    rooms: int = 3,
    rirs_per_room: int = 3,
    overwrite: bool = False,
) -> Path:
    """An RIRS_NOISES-layout stand-in under ``root``:
    ``simulated_rirs/{smallroom,mediumroom,largeroom}/RoomNNN/RoomNNN-NNNNN.wav``, ``rooms``
    rooms of each size (sides drawn from the size's range, height 2-5 m, wall absorption
    0.2-0.8), ``rirs_per_room`` source and microphone placements in each whose direct path
    is the largest tap (:func:`room_impulse_response`, as long as the room's Sabine RT60, at
    least 0.1 s and at most 1 s).
    Deterministic in ``seed``; made beside ``root`` and renamed into place.

    >>> import tempfile
    >>> root = write_rir_set(Path(tempfile.mkdtemp()) / "rirs", rooms=1, rirs_per_room=1)
    >>> sorted(p.relative_to(root).as_posix() for p in root.rglob("*.wav"))[0]
    'simulated_rirs/largeroom/Room001/Room001-00001.wav'
    """
    settings = {"kind": "rirs", "seed": seed, "rooms": rooms, "rirs_per_room": rirs_per_room}

    def build(folder: Path) -> None:
        for s, (name, (low, high)) in enumerate(ROOM_SIZES.items()):
            for r in range(rooms):
                rng = _rng(seed, KIND_KEYS["room"], s, r)
                size = (float(rng.uniform(low, high)), float(rng.uniform(low, high)),
                        float(rng.uniform(2.0, 5.0)))  # fmt: skip
                absorption = float(rng.uniform(0.2, 0.8))
                volume, area = np.prod(size), 2 * (
                    size[0] * size[1] + size[0] * size[2] + size[1] * size[2]
                )
                rt60 = min(1.0, 0.161 * volume / (area * absorption))
                for k in range(rirs_per_room):
                    rir = _placed_rir(rng, size, absorption, max(rt60, 0.1))
                    room = f"Room{r + 1:03d}"
                    path = folder / "simulated_rirs" / name / room / f"{room}-{k + 1:05d}.wav"
                    _write(path, rir, 0.9)

    return _fresh(Path(root), settings, overwrite, build)
