"""Scoring a long trial list from an embedding store, a chunk of trials at a time."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from svlab.data.voxceleb import Trial, read_trials, wav_dir
from svlab.embedding_store import EmbeddingStore
from svlab.metrics import verification_result
from svlab.scorenorm import BACKENDS, cohort_statistics

LARGE_LIST_KEYS = 20_000  # EvalSet.from_corpus takes the store path above this many utterances
CHUNK_TRIALS = 100_000  # trials scored at once: two [chunk, dim] float64 blocks
CHUNK_KEYS = 4_096  # utterances against the cohort at once (AS-norm)


def _unit(embeddings: np.ndarray, rows: np.ndarray, mean: torch.Tensor | None) -> torch.Tensor:
    """Rows of the store as float64, less ``mean``, scaled to unit length."""
    x = torch.from_numpy(np.asarray(embeddings[rows])).double()
    return torch.nn.functional.normalize(x if mean is None else x - mean, dim=1)


def store_scores(
    store: EmbeddingStore,
    enroll_rows: np.ndarray,
    test_rows: np.ndarray,
    backend: str = "cosine",
    cohort: torch.Tensor | None = None,
    top_n: int = 300,
    chunk: int = CHUNK_TRIALS,
) -> np.ndarray:
    """The scores of the trials whose sides are the store's rows ``enroll_rows``,
    ``test_rows``, by the back-end ``backend`` of :func:`svlab.scorenorm.backend_scores` (the
    same operations, in float64), reading ``chunk`` trials' embeddings at a time.

    >>> store = EmbeddingStore(Path("s"), np.array([[1.0, 0.0], [1.0, 1.0]], np.float32),
    ...     {}, [], {})
    >>> store_scores(store, np.array([0, 0]), np.array([1, 0])).round(4).tolist()
    [0.7071, 1.0]
    >>> store_scores(store, np.array([0]), np.array([1]), "asnorm")
    Traceback (most recent call last):
    ...
    ValueError: back-end 'asnorm' needs cohort embeddings
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown back-end {backend!r}; choose one of {BACKENDS}")
    mean = None
    if backend != "cosine":
        if cohort is None or len(cohort) == 0:
            raise ValueError(f"back-end {backend!r} needs cohort embeddings")
        mean = cohort.mean(dim=0).double()
    scores = np.empty(len(enroll_rows), dtype=np.float64)
    for start in range(0, len(scores), chunk):
        e, t = enroll_rows[start : start + chunk], test_rows[start : start + chunk]
        a, b = _unit(store.embeddings, e, mean), _unit(store.embeddings, t, mean)
        scores[start : start + chunk] = (a * b).sum(dim=1).numpy()
    if backend != "asnorm":
        return scores
    used = np.unique(np.concatenate((enroll_rows, test_rows)))
    centred_cohort = cohort.double() - mean
    means, stds = torch.empty(len(used), dtype=torch.float64), torch.empty(len(used),
                                                                          dtype=torch.float64)
    for start in range(0, len(used), CHUNK_KEYS):
        rows = used[start : start + CHUNK_KEYS]
        x = torch.from_numpy(np.asarray(store.embeddings[rows])).double() - mean
        means[start : start + len(rows)], stds[start : start + len(rows)] = cohort_statistics(
            x, centred_cohort, top_n
        )
    flat = torch.nonzero(stds == 0.0)
    if len(flat):
        name = store.files[int(used[int(flat[0])])]
        raise ValueError(f"{name!r} scores the same against its top {top_n} cohort members")
    e = torch.from_numpy(np.searchsorted(used, enroll_rows))
    t = torch.from_numpy(np.searchsorted(used, test_rows))
    s = torch.from_numpy(scores)
    return (0.5 * ((s - means[e]) / stds[e] + (s - means[t]) / stds[t])).numpy()


def check_trial_files(
    trials: list[Trial], path: str | os.PathLike, root: str | os.PathLike
) -> None:
    """Raise :func:`svlab.data.voxceleb.read_trials`' error naming the line of the first file
    of ``trials`` (read from ``path``) missing under ``root``'s audio, checking each file once.

    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp()); p = root / "t.txt"
    >>> _ = p.write_text("1 a.wav a.wav\\n"); (root / "a.wav").touch()
    >>> check_trial_files(read_trials(p), p, root)
    >>> (root / "a.wav").unlink(); check_trial_files(read_trials(p), p, root)
    Traceback (most recent call last):
    ...
    svlab.data.voxceleb.CorpusError: .../t.txt line 1: enrol file a.wav does not exist in ...
    """
    audio = wav_dir(root)
    if not all((audio / key).is_file() for key in {k for t in trials for k in (t.enroll, t.test)}):
        read_trials(path, wav_root=audio)


@dataclass
class StoredEvalSet:
    """A trial list scored through an :class:`svlab.embedding_store.EmbeddingStore`: no
    features are held, each model's embeddings are extracted once into ``folder`` (a
    temporary folder per :meth:`score` if None) and the trials scored in chunks from there.

    The scores are those of :class:`svlab.evaluate.EvalSet` (same batches, same operations);
    utterance keys that name one file share its extraction. ``workers`` is the DataLoader's.

    >>> from svlab.models import build
    >>> StoredEvalSet([("a.wav", "b.wav")], np.array([1]), Path("/no/audio")).score(
    ...     build("resnet18", base_width=2))
    Traceback (most recent call last):
    ...
    svlab.data.audio.AudioError: audio file /no/audio/a.wav does not exist
    """

    pairs: list[tuple[str, str]]
    labels: np.ndarray
    audio_dir: Path
    folder: Path | None = None
    batch_size: int = 32
    max_seconds: float | None = None
    workers: int = 0
    chunk: int = CHUNK_TRIALS

    @classmethod
    def from_corpus(
        cls, root: str | os.PathLike, trials: str | os.PathLike, folder: str | os.PathLike | None,
        batch_size: int = 32, max_seconds: float | None = None, workers: int = 0,
    ) -> StoredEvalSet:
        """The trial list ``trials`` (a path) over ``root/wav``, each named file checked to
        exist (:func:`check_trial_files`).

        >>> StoredEvalSet.from_corpus("/no/corpus", "/no/corpus/trials/e.txt", None)
        Traceback (most recent call last):
        ...
        svlab.data.voxceleb.CorpusError: list file /no/corpus/trials/e.txt does not exist
        """
        parsed = read_trials(trials)
        check_trial_files(parsed, trials, root)
        return cls.from_trials(parsed, wav_dir(root), folder, batch_size, max_seconds, workers)

    @classmethod
    def from_trials(
        cls, trials: list[Trial], audio_dir: str | os.PathLike,
        folder: str | os.PathLike | None = None, batch_size: int = 32,
        max_seconds: float | None = None, workers: int = 0,
    ) -> StoredEvalSet:
        """From parsed trials over ``audio_dir`` (one string per distinct key is kept).

        >>> StoredEvalSet.from_trials([Trial(1, "a.wav", "b.wav")], "/audio").keys
        ['a.wav', 'b.wav']
        """
        names: dict[str, str] = {}
        pairs = [(names.setdefault(t.enroll, t.enroll), names.setdefault(t.test, t.test))
                 for t in trials]  # fmt: skip
        return cls(
            pairs, np.array([t.label for t in trials]), Path(audio_dir),
            None if folder is None else Path(folder), batch_size, max_seconds, workers,
        )  # fmt: skip

    @property
    def keys(self) -> list[str]:
        """The distinct utterance keys of the trials, sorted."""
        return sorted({key for pair in self.pairs for key in pair})

    def extract(self, model: nn.Module, folder: str | os.PathLike) -> EmbeddingStore:
        """``model``'s store of the trials' utterances in ``folder`` (made or reused, see
        :meth:`svlab.embedding_store.EmbeddingStore.extract`)."""
        return EmbeddingStore.extract(folder, model, self.keys, self.audio_dir, self.batch_size,
                                      self.max_seconds, self.workers)  # fmt: skip

    def score_store(
        self, store: EmbeddingStore, backend: str = "cosine",
        cohort: torch.Tensor | None = None, top_n: int = 300,
    ) -> dict:
        """``eer``, ``min_dcf`` (p_target 0.01), ``scores`` and ``labels`` of the trials from
        ``store``'s embeddings, as :meth:`svlab.evaluate.EvalSet.score_embeddings`.

        >>> store = EmbeddingStore(Path("s"), np.array([[1, 0], [0, 1], [1, 1]], np.float32),
        ...     {"a": 0, "b": 1, "c": 2}, ["a", "b", "c"], {})
        >>> evalset = StoredEvalSet([("a", "c"), ("a", "b")], np.array([1, 0]), Path("."))
        >>> evalset.score_store(store)["eer"], evalset.score_store(store)["scores"].round(4)
        (0.0, array([0.7071, 0.    ]))
        """
        scores = store_scores(
            store, store.rows([a for a, _ in self.pairs]), store.rows([b for _, b in self.pairs]),
            backend, cohort, top_n, self.chunk,
        )  # fmt: skip
        return verification_result(scores, self.labels)

    def score(
        self, model: nn.Module, backend: str = "cosine", cohort: torch.Tensor | None = None,
        top_n: int = 300,
    ) -> dict:
        """As :meth:`svlab.evaluate.EvalSet.score`: extract (or reuse) ``model``'s store, then
        :meth:`score_store`."""
        if self.folder is not None:
            return self.score_store(self.extract(model, self.folder), backend, cohort, top_n)
        with tempfile.TemporaryDirectory(prefix="svlab-embeddings-") as folder:
            return self.score_store(self.extract(model, folder), backend, cohort, top_n)
