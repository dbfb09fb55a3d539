"""The large trial list: every cross-session target pair and many non-target pairs of a test set."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from svlab.data.voxceleb import Trial, read_trials

LARGE_TRIALS = "large.txt"
NONTARGETS = 30_000


def every_pair(paths: list[str], nontargets: int | None = None, seed: int = 0) -> list[Trial]:
    """Trials among the utterances ``paths`` (``<speaker>/<session>/<utt>.wav``): every target
    pair and every non-target pair, or ``nontargets`` non-target pairs drawn without replacement.

    A pair of one speaker's utterances from two different sessions is a target trial; a pair
    of two speakers' utterances is a non-target trial; a pair from the same session is left
    out (it shares the recording as well as the voice, which makes it too easy, and VoxCeleb's
    lists avoid it). Each pair appears once, enrolment first in sorted order; the list is in
    sorted order. The draw depends only on ``seed`` and the set of paths.

    Why a list this large: the EER of a test set is uncertain mostly through its speakers
    (`svlab.metrics.eer_interval`), but once two systems are compared *paired*, on the same
    trials, the speakers cancel and much of what is left is each trial's own noise. More
    trials of the same utterances average it away at no extra embedding cost (only the cheap
    cosine scoring grows). In the ci corpus, the paired 95% interval of a 1-point difference
    (a 480-step tutorial ResNet against its 4-bit k-means copy, 300 resamples) is 2.3 points
    wide on the 2,709 trials of ``test.txt``, 1.54 with 30,000 non-targets and 1.44 with all
    111,360, whose bootstrap takes almost four times as long: hence ``NONTARGETS``.

    >>> trials = every_pair(["a/s1/1.wav", "a/s1/2.wav", "a/s2/1.wav", "b/s1/1.wav"])
    >>> [(t.label, t.enroll, t.test) for t in trials]  # doctest: +NORMALIZE_WHITESPACE
    [(1, 'a/s1/1.wav', 'a/s2/1.wav'), (0, 'a/s1/1.wav', 'b/s1/1.wav'),
     (1, 'a/s1/2.wav', 'a/s2/1.wav'), (0, 'a/s1/2.wav', 'b/s1/1.wav'),
     (0, 'a/s2/1.wav', 'b/s1/1.wav')]
    >>> [t.label for t in every_pair(["a/s1/1.wav", "a/s2/1.wav", "b/s1/1.wav"], nontargets=1)]
    [1, 0]
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
    if nontargets is None:
        return trials
    if nontargets < 1:
        raise ValueError(f"nontargets must be at least 1, got {nontargets}")
    others = [j for j, t in enumerate(trials) if not t.label]
    drawn = np.random.default_rng(seed).permutation(len(others))[:nontargets]
    keep = {others[j] for j in drawn} | {j for j, t in enumerate(trials) if t.label}
    return [t for j, t in enumerate(trials) if j in keep]


def write_large_trials(
    root: str | os.PathLike, source: str = "test.txt", nontargets: int = NONTARGETS, seed: int = 0
) -> Path:
    """Write ``root/trials/large.txt``: `every_pair` of the utterances in ``source``.

    The list is written to a temporary file and renamed, so a crash leaves no half list. It
    holds the same utterances as ``source`` (nothing more to embed), so it can be made for any
    corpus, real or synthetic.

    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp()); (root / "trials").mkdir()
    >>> _ = (root / "trials" / "test.txt").write_text(
    ...     "1 a/s1/1.wav a/s2/1.wav\\n0 a/s1/1.wav b/s1/1.wav\\n")
    >>> print(write_large_trials(root).read_text(), end="")
    1 a/s1/1.wav a/s2/1.wav
    0 a/s1/1.wav b/s1/1.wav
    0 a/s2/1.wav b/s1/1.wav
    """
    trials_dir = Path(root) / "trials"
    listed = read_trials(trials_dir / source)
    pairs = every_pair([p for t in listed for p in (t.enroll, t.test)], nontargets, seed)
    target = trials_dir / LARGE_TRIALS
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.write_text("".join(f"{t.label} {t.enroll} {t.test}\n" for t in pairs))
    os.replace(temporary, target)
    return target
