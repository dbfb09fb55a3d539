"""Every-pair trial lists: all cross-session target pairs and all non-target pairs of a test set."""

from __future__ import annotations

import os
from pathlib import Path

from svlab.data.voxceleb import Trial, read_trials

ALL_PAIRS = "all_pairs.txt"


def every_pair(paths: list[str]) -> list[Trial]:
    """Every pair of the utterances ``paths`` (``<speaker>/<session>/<utt>.wav``) as a trial.

    A pair of one speaker's utterances from two different sessions is a target trial; a pair
    of two speakers' utterances is a non-target trial; a pair from the same session is left
    out (it shares the recording as well as the voice, which makes it too easy, and VoxCeleb's
    lists avoid it). Each pair appears once, enrolment first in sorted order.

    Why a list this large: the EER of a test set is uncertain mostly through its speakers
    (`svlab.metrics.eer_interval`), but once two systems are compared *paired*, on the same
    trials, the speakers cancel and what is left is each trial's own noise. Scoring every pair
    the utterances allow averages that noise away at no extra embedding cost (the utterances
    are the same; only the cheap cosine scoring grows).

    >>> trials = every_pair(["a/s1/1.wav", "a/s1/2.wav", "a/s2/1.wav", "b/s1/1.wav"])
    >>> [(t.label, t.enroll, t.test) for t in trials]  # doctest: +NORMALIZE_WHITESPACE
    [(1, 'a/s1/1.wav', 'a/s2/1.wav'), (0, 'a/s1/1.wav', 'b/s1/1.wav'),
     (1, 'a/s1/2.wav', 'a/s2/1.wav'), (0, 'a/s1/2.wav', 'b/s1/1.wav'),
     (0, 'a/s2/1.wav', 'b/s1/1.wav')]
    """
    unique = sorted(set(paths))
    for path in unique:
        if len(path.split("/")) < 3:
            raise ValueError(f"{path!r} is not <speaker>/<session>/<utterance>")
    trials = []
    for i, enroll in enumerate(unique):
        speaker, session = enroll.split("/")[:2]
        for test in unique[i + 1 :]:
            other_speaker, other_session = test.split("/")[:2]
            if speaker != other_speaker:
                trials.append(Trial(0, enroll, test))
            elif session != other_session:
                trials.append(Trial(1, enroll, test))
    if not any(t.label for t in trials) or all(t.label for t in trials):
        raise ValueError(
            f"{len(unique)} utterances give no target or no non-target pair: the test set needs "
            "two speakers, one of them with two sessions"
        )
    return trials


def write_all_pairs(root: str | os.PathLike, source: str = "test.txt") -> Path:
    """Write ``root/trials/all_pairs.txt``: `every_pair` of the utterances in ``source``.

    The list is written to a temporary file and renamed, so a crash leaves no half list. It
    holds the same utterances as ``source`` (nothing more to embed), so it can be made for any
    corpus, real or synthetic.

    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp()); (root / "trials").mkdir()
    >>> _ = (root / "trials" / "test.txt").write_text(
    ...     "1 a/s1/1.wav a/s2/1.wav\\n0 a/s1/1.wav b/s1/1.wav\\n")
    >>> print(write_all_pairs(root).read_text(), end="")
    1 a/s1/1.wav a/s2/1.wav
    0 a/s1/1.wav b/s1/1.wav
    0 a/s2/1.wav b/s1/1.wav
    """
    trials_dir = Path(root) / "trials"
    listed = read_trials(trials_dir / source)
    pairs = every_pair([path for t in listed for path in (t.enroll, t.test)])
    target = trials_dir / ALL_PAIRS
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.write_text("".join(f"{t.label} {t.enroll} {t.test}\n" for t in pairs))
    os.replace(temporary, target)
    return target
