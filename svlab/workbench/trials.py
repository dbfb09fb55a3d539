"""The workbench's trial list: every pair among a few utterances of each test speaker."""

from __future__ import annotations

from pathlib import Path

from svlab.data.voxceleb import Trial, read_trials


def workbench_trials(
    root: str | Path, per_speaker: int = 4, trials: str = "test.txt"
) -> list[Trial]:
    """A small trial list for live scoring: every pair among a few utterances of each speaker.

    From the utterances of ``root/trials/<trials>``, each test speaker keeps ``per_speaker``
    of them, taken from as many different sessions as possible (sorted paths, so the choice is
    deterministic); every pair of the kept utterances is a trial. Few utterances to embed,
    many trials to score: an EER that moves smoothly and is quick to recompute.

    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp()); (root / "trials").mkdir()
    >>> _ = (root / "trials" / "test.txt").write_text(
    ...     "1 a/s1/1.wav a/s2/1.wav\\n0 a/s1/1.wav b/s1/1.wav\\n1 b/s1/1.wav b/s1/2.wav\\n")
    >>> [(t.label, t.enroll, t.test) for t in workbench_trials(root, per_speaker=2)][:3]
    [(1, 'a/s1/1.wav', 'a/s2/1.wav'), (0, 'a/s1/1.wav', 'b/s1/1.wav'), \
(0, 'a/s1/1.wav', 'b/s1/2.wav')]
    """
    if per_speaker < 1:
        raise ValueError(f"per_speaker must be at least 1, got {per_speaker}")
    listed = read_trials(Path(root) / "trials" / trials)
    by_speaker: dict[str, dict[str, list[str]]] = {}
    for path in sorted({p for t in listed for p in (t.enroll, t.test)}):
        speaker, session = path.split("/")[:2]
        by_speaker.setdefault(speaker, {}).setdefault(session, []).append(path)
    kept = []
    for sessions in by_speaker.values():
        rounds = [paths[i] for i in range(max(map(len, sessions.values())))
                  for paths in sessions.values() if i < len(paths)]
        kept += sorted(rounds[:per_speaker])
    if len(by_speaker) < 2:
        raise ValueError(f"{trials} names fewer than 2 speakers: no non-target trials")
    return [
        Trial(int(a.split("/")[0] == b.split("/")[0]), a, b)
        for i, a in enumerate(kept)
        for b in kept[i + 1 :]
    ]
