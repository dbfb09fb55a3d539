"""The large trial list against a brute-force enumeration, and its place in the ci corpus."""

from __future__ import annotations

import itertools

import pytest

from svlab.data import read_trials
from svlab.data.pairs import LARGE_TRIALS, NONTARGETS, every_pair, write_large_trials
from svlab.profiles import get_profile


def _paths(speakers: int, sessions: int, utterances: int) -> list[str]:
    return [f"id{s:05d}/v{v}/{u:05d}.wav" for s in range(speakers) for v in range(sessions)
            for u in range(utterances)]  # fmt: skip


def test_every_pair_matches_brute_force():
    paths = _paths(5, 3, 2)
    expected = set()
    for a, b in itertools.combinations(sorted(paths), 2):
        speaker_a, session_a = a.split("/")[:2]
        speaker_b, session_b = b.split("/")[:2]
        if speaker_a != speaker_b:
            expected.add((0, a, b))
        elif session_a != session_b:
            expected.add((1, a, b))
    trials = every_pair(list(reversed(paths)) + paths[:3])  # order and repeats do not matter
    assert {(t.label, t.enroll, t.test) for t in trials} == expected
    assert len(trials) == len(expected)
    assert sum(t.label for t in trials) == 5 * 3 * 2 * 2  # per speaker: 3 session pairs x 2 x 2


@pytest.mark.parametrize(
    "paths, message",
    [(["a/s1/1.wav", "a/s2/1.wav"], "no target or no non-target"),
     (["a/s1/1.wav", "b/s1/1.wav"], "no target or no non-target"),
     (["a/1.wav", "b/s1/1.wav"], "not <speaker>/<session>/<utterance>")],
)  # fmt: skip
def test_every_pair_rejects_a_set_without_both_kinds(paths, message):
    with pytest.raises(ValueError, match=message):
        every_pair(paths)


def test_the_ci_corpus_has_the_list_over_the_same_utterances():
    root = get_profile("ci").ensure_corpus()
    listed = read_trials(root / "trials" / "test.txt")
    pairs = read_trials(root / "trials" / LARGE_TRIALS)
    utterances = {p for t in listed for p in (t.enroll, t.test)}
    assert {p for t in pairs for p in (t.enroll, t.test)} == utterances
    assert sum(1 - t.label for t in pairs) == NONTARGETS
    assert sum(t.label for t in pairs) == 30 * (16 * 15 // 2 - 4 * (4 * 3 // 2))  # cross-session


def test_a_sample_of_nontargets_keeps_every_target_and_is_seeded():
    paths = _paths(6, 2, 3)
    full = every_pair(paths)
    sample = every_pair(paths, nontargets=40, seed=1)
    assert [t for t in sample if t.label] == [t for t in full if t.label]
    assert sum(1 - t.label for t in sample) == 40
    assert set(sample) <= set(full) and sample == sorted(sample, key=full.index)
    assert sample == every_pair(list(reversed(paths)), nontargets=40, seed=1)
    assert sample != every_pair(paths, nontargets=40, seed=2)
    with pytest.raises(ValueError, match="nontargets must be at least 1"):
        every_pair(paths, nontargets=0)


def test_write_large_trials_replaces_atomically(tmp_path):
    (tmp_path / "trials").mkdir()
    lines = "1 a/s1/1.wav a/s2/1.wav\n0 a/s1/1.wav b/s1/1.wav\n"
    (tmp_path / "trials" / "test.txt").write_text(lines)
    written = write_large_trials(tmp_path)
    assert written.name == LARGE_TRIALS
    assert sorted(p.name for p in (tmp_path / "trials").iterdir()) == [LARGE_TRIALS, "test.txt"]
    assert len(read_trials(written)) == 3
