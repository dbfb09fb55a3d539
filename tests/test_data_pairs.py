"""The every-pair trial list against a brute-force enumeration, and its place in the ci corpus."""

from __future__ import annotations

import itertools

import pytest

from svlab.data import read_trials
from svlab.data.pairs import ALL_PAIRS, every_pair, write_all_pairs
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
    pairs = read_trials(root / "trials" / ALL_PAIRS)
    utterances = {p for t in listed for p in (t.enroll, t.test)}
    assert {p for t in pairs for p in (t.enroll, t.test)} == utterances
    assert len(pairs) > 40 * len(listed)


def test_write_all_pairs_replaces_atomically(tmp_path):
    (tmp_path / "trials").mkdir()
    lines = "1 a/s1/1.wav a/s2/1.wav\n0 a/s1/1.wav b/s1/1.wav\n"
    (tmp_path / "trials" / "test.txt").write_text(lines)
    written = write_all_pairs(tmp_path)
    assert written.name == ALL_PAIRS
    assert sorted(p.name for p in (tmp_path / "trials").iterdir()) == [ALL_PAIRS, "test.txt"]
    assert len(read_trials(written)) == 3
