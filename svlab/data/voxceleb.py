"""The VoxCeleb layout: ``wav/<speaker>/<session>/<utt>.wav``, train lists and trial lists."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path


class CorpusError(ValueError):
    """A corpus root, train list or trial list that is missing or malformed; names file and line."""


@dataclass(frozen=True)
class Utterance:
    """One audio file of a corpus: its speaker, session (video) and path relative to ``wav/``."""

    speaker: str
    session: str
    path: str


@dataclass(frozen=True)
class Trial:
    """One verification trial: ``label`` 1 (same speaker) or 0, enrolment and test paths."""

    label: int
    enroll: str
    test: str


def wav_dir(root: str | os.PathLike) -> Path:
    """The audio folder of a corpus root: ``root/wav``, or ``root`` itself if it has no ``wav/``.

    >>> wav_dir("/no/such/corpus")
    Traceback (most recent call last):
    ...
    svlab.data.voxceleb.CorpusError: corpus root /no/such/corpus does not exist
    """
    root = Path(root)
    if not root.is_dir():
        raise CorpusError(f"corpus root {root} does not exist")
    return root / "wav" if (root / "wav").is_dir() else root


def scan(root: str | os.PathLike) -> list[Utterance]:
    """Every ``<speaker>/<session>/<utt>.wav`` under the corpus root, sorted by path.

    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> (root / "wav" / "id10001" / "abc").mkdir(parents=True)
    >>> (root / "wav" / "id10001" / "abc" / "00001.wav").touch()
    >>> scan(root)
    [Utterance(speaker='id10001', session='abc', path='id10001/abc/00001.wav')]
    """
    audio = wav_dir(root)
    utterances = [
        Utterance(*path.relative_to(audio).parts[:2], path.relative_to(audio).as_posix())
        for path in audio.glob("*/*/*.wav")
    ]
    if not utterances:
        raise CorpusError(f"no <speaker>/<session>/<utt>.wav files under {audio}")
    return sorted(utterances, key=lambda u: u.path)


def _lines(path: Path):
    """(line number, fields) for each non-blank line of a text file."""
    if not path.is_file():
        raise CorpusError(f"list file {path} does not exist")
    with path.open() as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                yield number, line.split()


def _check_exists(
    path: Path, number: int, role: str, name: str, audio: Path | None, missing: dict | None
) -> None:
    """Raise the error for a listed file not in ``audio`` or, given ``missing``, record it there
    (``name``: the message of the first line naming it)."""
    if audio is None or (audio / name).is_file():
        return
    message = f"{path} line {number}: {role} file {name} does not exist in {audio}"
    if missing is None:
        raise CorpusError(message)
    missing.setdefault(name, message)


def read_train_list(
    path: str | os.PathLike,
    wav_root: str | os.PathLike | None = None,
    missing: dict[str, str] | None = None,
) -> list[Utterance]:
    """Read a train list of ``<speaker> <speaker>/<session>/<utt>.wav`` lines.

    With ``wav_root`` (a corpus root or its ``wav/`` folder) every file must exist there: the
    first that does not raises :class:`CorpusError` naming the list's line, or, given a
    ``missing`` dict, each is recorded there (file: the message naming its first line).

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "train.txt"
    >>> _ = p.write_text("id00001 id00001/abc/00001.wav\\n")
    >>> read_train_list(p)[0].session
    'abc'
    """
    path = Path(path)
    audio = wav_dir(wav_root) if wav_root is not None else None
    utterances = []
    for number, fields in _lines(path):
        parts = fields[1].split("/") if len(fields) == 2 else []
        if len(parts) != 3 or parts[0] != fields[0]:
            raise CorpusError(
                f"{path} line {number}: expected '<speaker> <speaker>/<session>/<utt>.wav', "
                f"got {' '.join(fields)!r}"
            )
        _check_exists(path, number, "audio", fields[1], audio, missing)
        utterances.append(Utterance(fields[0], parts[1], fields[1]))
    if not utterances:
        raise CorpusError(f"train list {path} is empty")
    return utterances


def read_trials(
    path: str | os.PathLike,
    wav_root: str | os.PathLike | None = None,
    missing: dict[str, str] | None = None,
) -> list[Trial]:
    """Read a VoxCeleb trial list: ``<1|0> <enroll path> <test path>`` per line.

    With ``wav_root`` (a corpus root or its ``wav/`` folder) every named file must exist, as
    for :func:`read_train_list` (``missing`` collects them all instead of raising).

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "trials.txt"
    >>> _ = p.write_text("1 a/x/1.wav a/y/2.wav\\nyes a/x/1.wav b/z/1.wav\\n")
    >>> read_trials(p)
    Traceback (most recent call last):
    ...
    svlab.data.voxceleb.CorpusError: ...trials.txt line 2: label must be 1 or 0, got 'yes'
    """
    path = Path(path)
    audio = wav_dir(wav_root) if wav_root is not None else None
    trials = []
    for number, fields in _lines(path):
        if len(fields) != 3:
            raise CorpusError(
                f"{path} line {number}: expected '<1|0> <enroll path> <test path>', "
                f"got {len(fields)} fields"
            )
        if fields[0] not in ("0", "1"):
            raise CorpusError(f"{path} line {number}: label must be 1 or 0, got {fields[0]!r}")
        for role, name in zip(("enrol", "test"), fields[1:], strict=True):
            _check_exists(path, number, role, name, audio, missing)
        trials.append(Trial(int(fields[0]), fields[1], fields[2]))
    if not trials:
        raise CorpusError(f"trial list {path} is empty")
    return trials


def write_train_list(root: str | os.PathLike, path: str | os.PathLike | None = None) -> Path:
    """Scan a VoxCeleb2-dev style tree and write ``<speaker> <path>`` lines to ``root/train.txt``.

    The list is written to a temporary file and renamed, so a crash leaves no half list.

    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> (root / "wav" / "id00012" / "21Uxsk56VDQ").mkdir(parents=True)
    >>> (root / "wav" / "id00012" / "21Uxsk56VDQ" / "00001.wav").touch()
    >>> write_train_list(root).read_text()
    'id00012 id00012/21Uxsk56VDQ/00001.wav\\n'
    """
    utterances = scan(root)
    path = Path(path) if path is not None else Path(root) / "train.txt"
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text("".join(f"{u.speaker} {u.path}\n" for u in utterances))
    os.replace(temporary, path)
    return path


def split_speakers(
    speakers: list[str], test_fraction: float = 0.2, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Split speakers into (train, test) by a hash of each id: deterministic, order-independent.

    A speaker lands on the same side whatever other speakers are in the list.

    >>> train, test = split_speakers([f"id{i:05d}" for i in range(100)], 0.2)
    >>> len(train) + len(test), sorted(set(train) & set(test))
    (100, [])
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction}")

    def is_test(speaker: str) -> bool:
        digest = hashlib.sha256(f"{seed}:{speaker}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < test_fraction

    train = sorted(s for s in set(speakers) if not is_test(s))
    test = sorted(s for s in set(speakers) if is_test(s))
    if not train or not test:
        raise ValueError(f"{len(set(speakers))} speakers give an empty side at {test_fraction}")
    return train, test
