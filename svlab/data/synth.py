"""A deterministic, speech-like, multi-speaker corpus in the VoxCeleb layout, made offline.

A source-filter synthesizer. Each *speaker* has a physiology: a fundamental frequency (F0) and
intonation range, a vocal-tract length that scales every formant, idiosyncratic vowel targets,
higher formants of their own, a spectral tilt, breathiness, jitter and shimmer, a speaking rate.
Each *session* (a VoxCeleb "video") adds the speaker's state of the day (F0, effort, rate) and a
channel: band limits, an equaliser curve, reverberation and additive noise at a random SNR.
Each *utterance* is a fresh random sequence of phones (formant targets joined by transitions,
voiced or not) with its own intonation and duration. ``difficulty`` scales how much sessions
and utterances of one speaker differ, and how harsh the channels are.

Speech is made frame by frame in the short-time Fourier domain: a glottal pulse train and a
white noise source are analysed with an STFT, shaped by the time-varying vocal-tract envelope,
and resynthesised by overlap-add.

Over 450 lines, on purpose: the generator is one idea read top to bottom (speaker, session,
channel, utterance, corpus and its lists), and its stages share the draws that tie them.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import string
import tempfile
from pathlib import Path

import numpy as np
import soundfile
from tqdm.auto import tqdm

from svlab.data.pairs import write_large_trials

SAMPLE_RATE = 16000
VERSION = 1
N_FFT = 512
HOP = 128
FREQS = np.fft.rfftfreq(N_FFT, 1 / SAMPLE_RATE).astype(np.float32)
WINDOW = np.hanning(N_FFT + 1)[:N_FFT].astype(np.float32)
NOISE_STFT_SCALE = np.sqrt(np.sum(WINDOW**2) / 2)  # white noise of unit variance, in the STFT
SESSION_ALPHABET = string.ascii_letters + string.digits + "-_"

# Phone inventory. Vowels and voiced consonants carry formant targets (F1, F2, F3 in Hz, for a
# reference adult male vocal tract); fricatives carry the resonances that shape their noise.
# Columns: F1, F2, F3, voicing (0..1), noise (0..1), level (linear), duration (s).
PHONES = {
    "i": (270, 2290, 3010, 1, 0, 1.0, 0.10),
    "I": (390, 1990, 2550, 1, 0, 1.0, 0.07),
    "e": (530, 1840, 2480, 1, 0, 1.0, 0.09),
    "a": (660, 1720, 2410, 1, 0, 1.0, 0.11),
    "A": (730, 1090, 2440, 1, 0, 1.0, 0.11),
    "o": (570, 840, 2410, 1, 0, 1.0, 0.10),
    "U": (440, 1020, 2240, 1, 0, 1.0, 0.07),
    "u": (300, 870, 2240, 1, 0, 1.0, 0.09),
    "V": (640, 1190, 2390, 1, 0, 1.0, 0.08),
    "R": (490, 1350, 1690, 1, 0, 1.0, 0.09),
    "m": (250, 1100, 2300, 1, 0, 0.3, 0.07),
    "n": (250, 1700, 2600, 1, 0, 0.3, 0.06),
    "l": (360, 1300, 2700, 1, 0, 0.5, 0.06),
    "r": (350, 1200, 1600, 1, 0, 0.5, 0.06),
    "w": (300, 700, 2200, 1, 0, 0.5, 0.05),
    "j": (280, 2200, 3000, 1, 0, 0.5, 0.05),
    "s": (3500, 5500, 7000, 0, 1, 0.25, 0.10),
    "S": (2200, 2900, 4200, 0, 1, 0.3, 0.10),
    "f": (1500, 4000, 6500, 0, 1, 0.08, 0.09),
    "h": (600, 1500, 2500, 0, 1, 0.15, 0.06),
    "z": (3500, 5500, 7000, 0.6, 0.7, 0.25, 0.08),
    "v": (1500, 4000, 6500, 0.6, 0.5, 0.15, 0.07),
    "t": (2500, 4500, 6500, 0, 1, 0.3, 0.04),
    "k": (1800, 2600, 4000, 0, 1, 0.3, 0.05),
    "p": (800, 1500, 3500, 0, 1, 0.2, 0.04),
    "_": (500, 1500, 2500, 0, 0, 0.0, 0.05),
}
PHONE_NAMES = list(PHONES)
PHONE_TABLE = np.array(list(PHONES.values()), dtype=np.float64)
VOWELS = [PHONE_NAMES.index(p) for p in "iIeaAoUuVR"]
CONSONANTS = [PHONE_NAMES.index(p) for p in "mnlrwjsSfhzvtkp"]
PLOSIVES = [PHONE_NAMES.index(p) for p in "tkp"]
SILENCE = PHONE_NAMES.index("_")


def _rng(seed: int, *key: int) -> np.random.Generator:
    """An independent generator for one (seed, kind, index, ...) key, the same in any process."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=key)))


def draw_speaker(rng: np.random.Generator) -> dict:
    """Draw one speaker's physiology from the population.

    >>> speaker = draw_speaker(np.random.default_rng(0))
    >>> speaker["gender"], 60 < speaker["f0"] < 400, 0.8 < speaker["vtl"] < 1.5
    ('m', True, True)
    """
    female = bool(rng.random() < 0.5)
    return {
        "gender": "f" if female else "m",
        "f0": float((205 if female else 115) * np.exp(0.15 * rng.standard_normal())),
        "f0_range": float(rng.uniform(1.5, 5.0)),
        "vtl": float((1.17 if female else 1.0) * np.exp(0.06 * rng.standard_normal())),
        "vowel_shift": (0.07 * rng.standard_normal((len(PHONES), 3))).round(4).tolist(),
        "high_formants": [float(rng.uniform(3300, 3900)), float(rng.uniform(4300, 5200))],
        "bandwidth": float(np.exp(0.25 * rng.standard_normal())),
        "tilt": float(rng.uniform(-6, 0)),
        "breathiness": float(np.exp(rng.uniform(np.log(0.02), np.log(0.3)))),
        "jitter": float(rng.uniform(0.003, 0.02)),
        "shimmer": float(rng.uniform(0.02, 0.10)),
        "rate": float(np.exp(0.12 * rng.standard_normal())),
        "timbre_db": (3.0 * rng.standard_normal(4)).round(3).tolist(),
        "timbre_phase": rng.uniform(0, 2 * np.pi, 4).round(4).tolist(),
    }


def draw_session(rng: np.random.Generator, difficulty: float) -> dict:
    """Draw one session: the speaker's state of the day and the recording channel.

    >>> draw_session(np.random.default_rng(0), 1.0)["snr_db"] < 40
    True
    """
    d = difficulty
    has_reverb = bool(rng.random() < min(1.0, 0.6 * d))
    return {
        "f0_shift": float(0.8 * d * rng.standard_normal()),
        "tilt_shift": float(0.7 * d * rng.standard_normal()),
        "rate_shift": float(np.exp(0.06 * d * rng.standard_normal())),
        "highpass": float(rng.uniform(50, 80 + 120 * d)),
        "lowpass": float(rng.uniform(8000 - 2500 * min(d, 1.0), 8000)),
        "eq_db": (2.0 * d * rng.standard_normal(4)).round(3).tolist(),
        "eq_phase": rng.uniform(0, 2 * np.pi, 4).round(4).tolist(),
        "rt60": float(rng.uniform(0.15, 0.2 + 0.5 * d)) if has_reverb else 0.0,
        "snr_db": float(rng.uniform(35 - 20 * d, 40 - 10 * d)),
        "noise_tilt": float(rng.uniform(-6, -1)),
        "hum": float(rng.random() < 0.2 * d),
    }


def _phone_sequence(rng: np.random.Generator, seconds: float, rate: float) -> tuple[list, list]:
    """Random syllables (C)V(C) in words separated by pauses, until ``seconds`` are filled."""
    phones, durations = [SILENCE], [rng.uniform(0.05, 0.2)]
    total = durations[0]
    while total < seconds:
        for _ in range(rng.integers(1, 4)):
            syllable = []
            if rng.random() < 0.8:
                syllable.append(int(rng.choice(CONSONANTS)))
            syllable.append(int(rng.choice(VOWELS)))
            if rng.random() < 0.4:
                syllable.append(int(rng.choice(CONSONANTS)))
            for p in syllable:
                if p in PLOSIVES:
                    phones.append(SILENCE)
                    durations.append(rng.uniform(0.03, 0.06) * rate)
                phones.append(p)
                durations.append(PHONE_TABLE[p, 6] * rate * np.exp(0.25 * rng.standard_normal()))
        phones.append(SILENCE)
        durations.append(rng.uniform(0.02, 0.3) if rng.random() < 0.5 else 0.02)
        total = float(np.sum(durations))
    return phones, durations


def _smooth(track: np.ndarray, width: int) -> np.ndarray:
    """Moving average along time (axis 0) with edge padding: coarticulation between targets."""
    kernel = np.ones(width) / width
    padded = np.pad(
        track, [(width // 2, width - 1 - width // 2)] + [(0, 0)] * (track.ndim - 1), mode="edge"
    )
    return np.apply_along_axis(lambda x: np.convolve(x, kernel, mode="valid"), 0, padded)


def _complex_noise(rng: np.random.Generator, shape: tuple) -> np.ndarray:
    """Complex Gaussian noise, real and imaginary parts of unit variance (complex64)."""
    return rng.standard_normal((*shape, 2), dtype=np.float32).view(np.complex64)[..., 0]


def _stft(x: np.ndarray) -> np.ndarray:
    frames = np.lib.stride_tricks.sliding_window_view(x, N_FFT)[::HOP]
    return np.fft.rfft(frames * WINDOW, axis=1)


def _istft(spec: np.ndarray, n: int) -> np.ndarray:
    frames = np.fft.irfft(spec, n=N_FFT, axis=1) * WINDOW
    out = np.zeros(HOP * (len(frames) - 1) + N_FFT, dtype=np.float32)
    hops = N_FFT // HOP
    for k in range(hops):
        chunk = frames[k::hops].reshape(-1)
        out[k * HOP : k * HOP + chunk.size] += chunk
    return out[N_FFT // 2 : N_FFT // 2 + n] / 1.5


def _formant_envelope(formants: np.ndarray, bandwidths: np.ndarray) -> np.ndarray:
    """|H(f)| of cascaded two-pole resonators, unit gain at 0 Hz: [T, K] -> [T, F]."""
    gain = np.ones((formants.shape[0], FREQS.size), dtype=np.float32)
    formants, half_bandwidths = formants.astype(np.float32), bandwidths.astype(np.float32) / 2
    for fc, half in zip(formants.T[:, :, None], half_bandwidths.T[:, :, None], strict=True):
        below, above = (FREQS - fc) ** 2 + half**2, (FREQS + fc) ** 2 + half**2
        gain *= (fc**2 + half**2) / np.sqrt(below * above)
    return gain


def _smooth_curve(freqs: np.ndarray, amplitudes_db: list, phases: list) -> np.ndarray:
    """A smooth random gain curve: a few cosines in dB along a log-frequency axis (50-8000 Hz)."""
    u = np.clip(np.log(np.maximum(freqs, 50) / 50) / np.log(8000 / 50), 0, 1)
    gain_db = sum(
        a * np.cos((k + 1) * np.pi * u + phase)
        for k, (a, phase) in enumerate(zip(amplitudes_db, phases, strict=True))
    )
    return (10 ** (gain_db / 20)).astype(np.float32)


def _speech(
    rng: np.random.Generator, speaker: dict, session: dict, seconds: float, difficulty: float
) -> np.ndarray:
    """One clean utterance (before the channel) of about ``seconds`` seconds."""
    n = int(seconds * SAMPLE_RATE)
    n_frames = n // HOP + 1
    rate = speaker["rate"] * session["rate_shift"]
    phones, durations = _phone_sequence(rng, seconds, rate)
    ends = np.cumsum(durations) * SAMPLE_RATE / HOP
    frame_instance = np.minimum(np.searchsorted(ends, np.arange(n_frames)), len(phones) - 1)
    frame_phone = np.asarray(phones)[frame_instance]
    table = PHONE_TABLE[frame_phone]

    target_noise = 0.03 * difficulty * rng.standard_normal((len(phones), 3))
    shift = np.asarray(speaker["vowel_shift"])[frame_phone] + target_noise[frame_instance]
    formants = table[:, :3] * np.exp(shift) * speaker["vtl"]
    formants = np.concatenate(
        [formants, np.broadcast_to(speaker["high_formants"], (n_frames, 2)) * speaker["vtl"]],
        axis=1,
    )
    formants = np.minimum(_smooth(formants, 5), 7600)
    bandwidths = (50 + 0.06 * formants) * speaker["bandwidth"]
    envelope = _formant_envelope(formants, bandwidths)

    levels = _smooth(table[:, 3:6], 3)
    voicing, noise, level = levels[:, 0], levels[:, 1], levels[:, 2]

    t = np.arange(n_frames) / n_frames
    n_accents = max(1, int(seconds * 1.5))
    accents = np.zeros(n_frames)
    accents[rng.integers(0, n_frames, n_accents)] = rng.uniform(0.5, 1.0, n_accents)
    accents = _smooth(accents[:, None], 25)[:, 0] * 25
    semitones = (
        speaker["f0_range"] * (accents - 0.5 * (t - 0.5))
        + session["f0_shift"]
        + 0.5 * difficulty * rng.standard_normal()
    )
    f0 = speaker["f0"] * 2 ** (semitones / 12)
    f0_samples = np.interp(np.arange(n), np.arange(n_frames) * HOP, f0)
    phase = np.cumsum(f0_samples) / SAMPLE_RATE
    pulses = np.flatnonzero(np.diff(np.floor(phase)) > 0) + 1
    periods = SAMPLE_RATE / f0_samples[pulses]
    position = pulses + speaker["jitter"] * periods * rng.standard_normal(pulses.size)
    position = np.clip(position, 0, n - 2)
    whole, frac = np.floor(position).astype(int), position - np.floor(position)
    amplitude = np.sqrt(periods) * (1 + speaker["shimmer"] * rng.standard_normal(pulses.size))
    source = np.zeros(n + N_FFT, dtype=np.float32)
    np.add.at(source, whole, amplitude * (1 - frac))
    np.add.at(source, whole + 1, amplitude * frac)

    tilt_db = speaker["tilt"] + session["tilt_shift"]
    tilt = 10 ** (tilt_db / 20 * np.log2(np.maximum(FREQS, 50) / 500)).astype(np.float32)
    timbre = _smooth_curve(FREQS, speaker["timbre_db"], speaker["timbre_phase"])
    pad = np.zeros(N_FFT // 2, dtype=np.float32)
    voiced = _stft(np.concatenate([pad, source[:n], pad]))[:n_frames]
    unvoiced = _complex_noise(rng, (n_frames, FREQS.size)) * NOISE_STFT_SCALE
    gain_voiced = (voicing * level)[:, None]
    gain_noise = ((noise + speaker["breathiness"] * voicing) * level)[:, None]
    shaped_voiced = envelope * tilt
    shaped_voiced /= np.sqrt(np.mean(shaped_voiced**2, axis=1, keepdims=True))
    envelope /= np.sqrt(np.mean(envelope**2, axis=1, keepdims=True))
    spectrum = (voiced * shaped_voiced * gain_voiced + unvoiced * envelope * gain_noise) * timbre
    return _istft(spectrum, n)


def _channel(rng: np.random.Generator, speech: np.ndarray, session: dict) -> np.ndarray:
    """Pass clean speech through the session's room, noise and recording chain.

    All in one frequency-domain product: (speech * room + noise) * equaliser * band limits.
    """
    n = speech.size
    reverb = int(session["rt60"] * SAMPLE_RATE)
    size = 1 << int(np.ceil(np.log2(n + reverb)))
    freqs = np.fft.rfftfreq(size, 1 / SAMPLE_RATE)
    f = np.maximum(freqs, 20.0)
    spectrum = np.fft.rfft(speech.astype(np.float32), size)
    if reverb:
        t = np.arange(reverb) / SAMPLE_RATE
        room = rng.standard_normal(reverb, dtype=np.float32) * np.exp(-6.9 * t / session["rt60"])
        room *= 0.3
        room[0] = 1.0
        spectrum *= np.fft.rfft(room, size)
    noise = _complex_noise(rng, freqs.shape)
    noise *= 10 ** (session["noise_tilt"] / 20 * np.log2(f / 1000))
    if session["hum"]:
        hum_f0 = 50.0 if rng.random() < 0.5 else 60.0
        for k in (1, 2, 3, 5):
            noise[int(round(k * hum_f0 * size / SAMPLE_RATE))] += 30 * np.sqrt(size) / k
    noise_scale = np.sqrt(np.sum(np.abs(spectrum) ** 2) / np.sum(np.abs(noise) ** 2))
    spectrum += noise * noise_scale * 10 ** (-session["snr_db"] / 20)
    spectrum *= (
        _smooth_curve(freqs, session["eq_db"], session["eq_phase"])
        / np.sqrt(1 + (session["highpass"] / f) ** 4)
        / np.sqrt(1 + (f / session["lowpass"]) ** 8)
    )
    return np.fft.irfft(spectrum, size)[:n]


def synthesize_utterance(
    speaker: dict, session: dict, seconds: float, difficulty: float = 1.0, seed: int = 0
) -> np.ndarray:
    """One utterance of ``speaker`` in ``session``, as int16 samples at 16 kHz.

    >>> speaker = draw_speaker(np.random.default_rng(0))
    >>> session = draw_session(np.random.default_rng(1), 1.0)
    >>> wave = synthesize_utterance(speaker, session, 1.0)
    >>> wave.dtype, wave.shape
    (dtype('int16'), (16000,))
    """
    rng = np.random.default_rng(seed)
    wave = _channel(rng, _speech(rng, speaker, session, seconds, difficulty), session)
    peak = rng.uniform(0.25, 0.9)
    return np.round(wave * (peak * 32767 / np.abs(wave).max())).astype(np.int16)


def _session_id(rng: np.random.Generator) -> str:
    """An 11-character id in the style of a YouTube video id, as VoxCeleb sessions have."""
    return "".join(rng.choice(list(SESSION_ALPHABET), 11))


def _make_speaker(job: tuple) -> list[tuple[str, str, str, float]]:
    """Write every utterance of one speaker under ``wav_dir``; return (spk, session, path, s)."""
    wav_dir, speaker_id, key, speaker, settings = job
    seed, difficulty = settings["seed"], settings["difficulty"]
    low, high = settings["test_seconds" if speaker_id.startswith("id1") else "train_seconds"]
    rows = []
    for s in range(settings["sessions_per_speaker"]):
        session_rng = _rng(seed, *key, s)
        session_id = _session_id(session_rng)
        session = draw_session(session_rng, difficulty)
        folder = Path(wav_dir) / speaker_id / session_id
        folder.mkdir(parents=True)
        for u in range(settings["utterances_per_session"]):
            utterance_rng = _rng(seed, *key, s, u)
            seconds = round(float(utterance_rng.uniform(low, high)), 2)
            wave = synthesize_utterance(
                speaker, session, seconds, difficulty, seed=int(utterance_rng.integers(2**63))
            )
            relative = f"{speaker_id}/{session_id}/{u + 1:05d}.wav"
            soundfile.write(Path(wav_dir) / relative, wave, SAMPLE_RATE, subtype="PCM_16")
            rows.append((speaker_id, session_id, relative, seconds))
    return rows


def make_trials(
    utterances: list[tuple[str, str, str]], trials_per_utterance: int, seed: int
) -> list[tuple[int, str, str]]:
    """Half target, half non-target trials for each (speaker, session, path) as enrolment.

    Target trials pair an utterance with one of another session of the same speaker (of the same
    session only when the speaker has a single session); non-target trials with an utterance
    of another speaker. Pairs are unique.

    >>> utts = [(s, v, f"{s}/{v}/{u}.wav") for s in "ab" for v in "xy" for u in "12"]
    >>> trials = make_trials(utts, 2, seed=0)
    >>> len(trials), sum(label for label, _, _ in trials)
    (12, 6)
    """
    rng = _rng(seed, 2)
    by_speaker: dict[str, list] = {}
    for row in utterances:
        by_speaker.setdefault(row[0], []).append(row)
    trials, seen = [], set()
    half = trials_per_utterance // 2
    for speaker, session, path in utterances:
        same = [r[2] for r in by_speaker[speaker] if r[1] != session and r[2] != path]
        if not same:
            same = [r[2] for r in by_speaker[speaker] if r[2] != path]
        other = [r[2] for r in utterances if r[0] != speaker]
        for label, pool in ((1, same), (0, other)):
            for test in rng.permutation(pool)[:half]:
                pair = tuple(sorted((path, str(test))))
                if pair not in seen:
                    seen.add(pair)
                    trials.append((label, path, str(test)))
    return trials


def synthesize_corpus(
    root: str | os.PathLike,
    *,
    n_train_speakers: int = 60,
    n_test_speakers: int = 30,
    sessions_per_speaker: int = 4,
    utterances_per_session: int = 4,
    train_seconds: tuple[float, float] = (2.0, 4.0),
    test_seconds: tuple[float, float] = (2.0, 6.0),
    trials_per_utterance: int = 6,
    difficulty: float = 1.0,
    seed: int = 0,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write a synthetic corpus in the VoxCeleb layout under ``root`` and return ``root``.

    Layout: ``wav/<speaker>/<session>/<NNNNN>.wav`` (16 kHz, 16-bit PCM, mono); train speakers
    are ``id0xxxx``, test speakers ``id1xxxx``; ``train.txt`` lists ``<speaker> <path>`` for
    every train utterance; ``trials/test.txt`` lists ``<1|0> <enrol path> <test path>`` over the
    test speakers (paths relative to ``wav/``, as in VoxCeleb's ``veri_test2.txt``);
    ``trials/large.txt`` every cross-session target pair and 30,000 non-target pairs of the same
    utterances (`svlab.data.pairs.every_pair`);
    ``meta.json`` records every setting, the seed, the version and each speaker's physiology.
    The same arguments give byte-identical files, whatever ``workers`` (processes; default up to
    2) is. The corpus is made in a temporary directory beside ``root`` and renamed into place at
    the end; ``overwrite`` replaces an existing corpus; ``progress`` shows a bar of speakers.

    >>> import tempfile, pathlib
    >>> root = synthesize_corpus(pathlib.Path(tempfile.mkdtemp()) / "c", n_train_speakers=2,
    ...     n_test_speakers=2, sessions_per_speaker=2, utterances_per_session=1,
    ...     train_seconds=(0.5, 0.5), test_seconds=(0.5, 0.5))
    >>> sorted(p.name for p in root.iterdir())
    ['meta.json', 'train.txt', 'trials', 'wav']
    """
    root = Path(root)
    if root.exists() and any(root.iterdir()) and not overwrite:
        raise ValueError(f"corpus root {root} already exists and is not empty")
    for name, value in [
        ("n_train_speakers", n_train_speakers),
        ("n_test_speakers", n_test_speakers),
        ("sessions_per_speaker", sessions_per_speaker),
        ("utterances_per_session", utterances_per_session),
    ]:
        if not 1 <= value <= 9999:
            raise ValueError(f"{name} must be between 1 and 9999, got {value}")
    if n_test_speakers < 2:
        raise ValueError(
            f"n_test_speakers must be at least 2 (for non-target trials), got {n_test_speakers}"
        )
    settings = {
        "n_train_speakers": n_train_speakers,
        "n_test_speakers": n_test_speakers,
        "sessions_per_speaker": sessions_per_speaker,
        "utterances_per_session": utterances_per_session,
        "train_seconds": list(train_seconds),
        "test_seconds": list(test_seconds),
        "trials_per_utterance": trials_per_utterance,
        "difficulty": difficulty,
        "seed": seed,
    }
    speakers = [(f"id{i + 1:05d}", (0, i)) for i in range(n_train_speakers)]
    speakers += [(f"id{10001 + i:05d}", (1, i)) for i in range(n_test_speakers)]
    physiology = {spk: draw_speaker(_rng(seed, *key)) for spk, key in speakers}

    root.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".tmp", dir=root.parent))
    try:
        jobs = [(work / "wav", spk, key, physiology[spk], settings) for spk, key in speakers]
        bar = {"desc": f"synthesizing {root.name}", "unit": "speaker"}
        workers = min(2, os.cpu_count() or 1) if workers is None else workers
        if workers > 1:
            methods = multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
            with context.Pool(workers) as pool:
                made = pool.imap(_make_speaker, jobs, chunksize=1)
                per_speaker = list(tqdm(made, total=len(jobs), disable=not progress, **bar))
        else:
            per_speaker = [_make_speaker(job) for job in tqdm(jobs, disable=not progress, **bar)]
        rows = [row for speaker_rows in per_speaker for row in speaker_rows]
        train = [r for r in rows if r[0].startswith("id0")]
        test = [r[:3] for r in rows if r[0].startswith("id1")]
        (work / "train.txt").write_text("".join(f"{r[0]} {r[2]}\n" for r in train))
        (work / "trials").mkdir()
        trials = make_trials(test, trials_per_utterance, seed)
        (work / "trials" / "test.txt").write_text(
            "".join(f"{label} {enrol} {test}\n" for label, enrol, test in trials)
        )
        write_large_trials(work)
        meta = {
            "generator": "svlab.data.synth",
            "version": VERSION,
            "sample_rate": SAMPLE_RATE,
            "settings": settings,
            "counts": {
                "train_utterances": len(train),
                "test_utterances": len(test),
                "trials": len(trials),
                "target_trials": sum(t[0] for t in trials),
                "hours": round(sum(r[3] for r in rows) / 3600, 3),
            },
            "speakers": physiology,
        }
        (work / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        if root.exists():
            shutil.rmtree(root)
        os.replace(work, root)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return root
