"""The synthetic corpus: deterministic, VoxCeleb layout, valid lists, atomic writing."""

import hashlib
import json
import re

import numpy as np
import pytest
import soundfile

from svlab.data import check_corpus, read_train_list, read_trials, synthesize_corpus
from svlab.data.synth import draw_session, draw_speaker, make_trials, synthesize_utterance

TINY = dict(
    n_train_speakers=4,
    n_test_speakers=3,
    sessions_per_speaker=2,
    utterances_per_session=2,
    train_seconds=(0.6, 1.0),
    test_seconds=(0.6, 1.0),
    trials_per_utterance=4,
)


def digest(root):
    """Hash of every file's relative path and bytes under root."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return synthesize_corpus(tmp_path_factory.mktemp("synth") / "corpus", workers=1, **TINY)


def test_same_seed_gives_identical_bytes_any_workers(corpus, tmp_path, capsys):
    again = synthesize_corpus(tmp_path / "again", workers=2, progress=True, **TINY)
    assert digest(again) == digest(corpus)
    assert "synthesizing again" in capsys.readouterr().err  # the progress bar names the corpus


def test_other_seed_differs(corpus, tmp_path):
    other = synthesize_corpus(tmp_path / "other", seed=1, **TINY)
    assert digest(other) != digest(corpus)
    assert (other / "train.txt").read_text() != (corpus / "train.txt").read_text()


def test_layout(corpus):
    assert sorted(p.name for p in corpus.iterdir()) == ["meta.json", "train.txt", "trials", "wav"]
    speakers = sorted(p.name for p in (corpus / "wav").iterdir())
    assert speakers == ["id00001", "id00002", "id00003", "id00004", "id10001", "id10002", "id10003"]
    wavs = sorted((corpus / "wav").glob("*/*/*.wav"))
    assert len(wavs) == 7 * 2 * 2
    for wav in wavs:
        assert re.fullmatch(
            r"id[01]\d{4}/[A-Za-z0-9_-]{11}/0000[12]\.wav",
            wav.relative_to(corpus / "wav").as_posix(),
        )
        info = soundfile.info(wav)
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert 0.6 <= info.duration <= 1.0


def test_train_list_covers_train_speakers_only(corpus):
    train = read_train_list(corpus / "train.txt", wav_root=corpus)
    assert len(train) == 4 * 2 * 2
    assert {u.speaker for u in train} == {"id00001", "id00002", "id00003", "id00004"}
    assert len({(u.speaker, u.session) for u in train}) == 4 * 2


def test_trials_format_and_balance(corpus):
    lines = (corpus / "trials" / "test.txt").read_text().splitlines()
    assert all(
        re.fullmatch(r"[01] id1\d{4}/\S{11}/\d{5}\.wav id1\d{4}/\S{11}/\d{5}\.wav", line)
        for line in lines
    )
    trials = read_trials(corpus / "trials" / "test.txt", wav_root=corpus)
    targets = [t for t in trials if t.label == 1]
    assert 0.3 < len(targets) / len(trials) < 0.7
    for t in trials:
        same_speaker = t.enroll.split("/")[0] == t.test.split("/")[0]
        assert same_speaker == bool(t.label)
        assert t.enroll != t.test
    # every target trial crosses sessions when the speaker has more than one
    assert all(t.enroll.split("/")[1] != t.test.split("/")[1] for t in targets)
    pairs = [frozenset((t.enroll, t.test)) for t in trials]
    assert len(pairs) == len(set(pairs))


def test_meta_records_settings(corpus):
    meta = json.loads((corpus / "meta.json").read_text())
    assert meta["version"] >= 1 and meta["settings"]["seed"] == 0
    assert meta["settings"]["n_train_speakers"] == 4
    assert meta["counts"]["train_utterances"] == 16
    assert meta["counts"]["trials"] == len((corpus / "trials/test.txt").read_text().splitlines())
    assert set(meta["speakers"]) == {p.name for p in (corpus / "wav").iterdir()}


def test_check_corpus_counts(corpus):
    counts = check_corpus(corpus)
    assert counts["train_speakers"] == 4 and counts["train_utterances"] == 16
    assert counts["trials/test.txt"]["speakers"] == 3


def test_refuses_to_overwrite(corpus):
    with pytest.raises(ValueError, match="already exists"):
        synthesize_corpus(corpus, **TINY)


def test_failed_run_leaves_nothing(tmp_path, monkeypatch):
    import svlab.data.synth as synth

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(synth, "make_trials", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        synthesize_corpus(tmp_path / "c", **TINY)
    assert list(tmp_path.iterdir()) == []


def test_bad_sizes_are_refused(tmp_path):
    with pytest.raises(ValueError, match="n_test_speakers"):
        synthesize_corpus(tmp_path / "c", **{**TINY, "n_test_speakers": 1})
    with pytest.raises(ValueError, match="sessions_per_speaker"):
        synthesize_corpus(tmp_path / "c", **{**TINY, "sessions_per_speaker": 0})


def test_utterance_is_speech_like():
    speaker = draw_speaker(np.random.default_rng(0))
    clean = draw_session(np.random.default_rng(1), 0.0)
    wave = synthesize_utterance(speaker, clean, 2.0, difficulty=0.0, seed=3).astype(np.float64)
    spectrum = np.abs(np.fft.rfft(wave)) ** 2
    freqs = np.fft.rfftfreq(wave.size, 1 / 16000)
    # voiced speech: most energy below 4 kHz, with a spectral peak near a harmonic of F0
    assert spectrum[freqs < 4000].sum() > 0.8 * spectrum.sum()
    frames = wave[: wave.size // 320 * 320].reshape(-1, 320)
    energy_db = 10 * np.log10((frames**2).mean(1) + 1e-9)
    # pauses and syllables: the frame energy varies by more than 20 dB
    assert energy_db.max() - np.percentile(energy_db, 10) > 20


def test_speakers_differ_in_f0():
    f0s = [draw_speaker(np.random.default_rng(i))["f0"] for i in range(50)]
    assert 60 < min(f0s) and max(f0s) < 350 and np.std(f0s) > 20


def test_make_trials_single_session_falls_back_to_same_session():
    utts = [(s, "x", f"{s}/x/{u}.wav") for s in "ab" for u in "123"]
    trials = make_trials(utts, 2, seed=0)
    assert {t[0] for t in trials} == {0, 1}
    assert all(t[1] != t[2] for t in trials)
