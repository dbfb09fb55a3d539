"""Small trial lists for live scoring: a few utterances of each test speaker, spread over their
sessions, with every pair among them (the workbench's) or the listed trials among them."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from svlab.data.voxceleb import Trial, read_trials


def spread_utterances(paths: Iterable[str], per_speaker: int) -> list[str]:
    """``per_speaker`` utterances of each speaker (the first part of each path), taken from as
    many different sessions (the second part) as possible: the first of each session, then
    the second, ...; sorted paths, so the choice is deterministic. Speakers in sorted order.

    >>> spread_utterances(["a/s1/1.wav", "a/s1/2.wav", "a/s2/1.wav", "b/s1/1.wav"], 2)
    ['a/s1/1.wav', 'a/s2/1.wav', 'b/s1/1.wav']
    """
    if per_speaker < 1:
        raise ValueError(f"per_speaker must be at least 1, got {per_speaker}")
    by_speaker: dict[str, dict[str, list[str]]] = {}
    for path in sorted(set(paths)):
        speaker, session = path.split("/")[:2]
        by_speaker.setdefault(speaker, {}).setdefault(session, []).append(path)
    kept = []
    for sessions in by_speaker.values():
        rounds = [paths[i] for i in range(max(map(len, sessions.values())))
                  for paths in sessions.values() if i < len(paths)]
        kept += sorted(rounds[:per_speaker])
    return kept


def workbench_trials(
    root: str | Path, per_speaker: int = 4, trials: str = "test.txt"
) -> list[Trial]:
    """A small trial list for live scoring: every pair among a few utterances of each speaker.

    From the utterances of ``root/trials/<trials>``, each test speaker keeps ``per_speaker``
    of them (:func:`spread_utterances`); every pair of the kept utterances is a trial. Few
    utterances to embed, many trials to score: an EER that moves smoothly and is quick to
    recompute.

    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp()); (root / "trials").mkdir()
    >>> _ = (root / "trials" / "test.txt").write_text(
    ...     "1 a/s1/1.wav a/s2/1.wav\\n0 a/s1/1.wav b/s1/1.wav\\n1 b/s1/1.wav b/s1/2.wav\\n")
    >>> [(t.label, t.enroll, t.test) for t in workbench_trials(root, per_speaker=2)][:3]
    [(1, 'a/s1/1.wav', 'a/s2/1.wav'), (0, 'a/s1/1.wav', 'b/s1/1.wav'), \
(0, 'a/s1/1.wav', 'b/s1/2.wav')]
    """
    listed = read_trials(Path(root) / "trials" / trials)
    kept = spread_utterances((p for t in listed for p in (t.enroll, t.test)), per_speaker)
    if len({path.split("/")[0] for path in kept}) < 2:
        raise ValueError(f"{trials} names fewer than 2 speakers: no non-target trials")
    return [
        Trial(int(a.split("/")[0] == b.split("/")[0]), a, b)
        for i, a in enumerate(kept)
        for b in kept[i + 1 :]
    ]


def trial_subset(trials: list[Trial], per_speaker: int) -> list[Trial]:
    """The trials of a list whose two utterances are both among ``per_speaker`` utterances of
    each speaker (:func:`spread_utterances`): a shorter list with every speaker still in it.

    >>> listed = [Trial(1, "a/s1/1.wav", "a/s2/1.wav"), Trial(0, "a/s1/2.wav", "b/s1/1.wav"),
    ...           Trial(0, "a/s1/1.wav", "b/s1/1.wav")]
    >>> [t.enroll for t in trial_subset(listed, per_speaker=2)]
    ['a/s1/1.wav', 'a/s1/1.wav']
    >>> trial_subset(listed[:1], per_speaker=1)
    Traceback (most recent call last):
    ...
    ValueError: no trial has both utterances among the 1 kept per speaker
    """
    kept = set(spread_utterances((p for t in trials for p in (t.enroll, t.test)), per_speaker))
    subset = [t for t in trials if t.enroll in kept and t.test in kept]
    if not subset:
        raise ValueError(f"no trial has both utterances among the {per_speaker} kept per speaker")
    return subset
