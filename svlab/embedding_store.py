"""A trial list's embeddings on disk: extracted once by a DataLoader, read memory-mapped."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import torch
from torch import nn

from svlab.data.audio import load_audio
from svlab.features import fbank, featurize, front_end_of
from svlab.storage import atomic_write

STORE_FORMAT = 1
EMBEDDINGS, INDEX = "embeddings.npy", "index.json"


class StoreError(ValueError):
    """An embedding store that is corrupt, truncated, incomplete or made by another model."""


def model_identity(
    model: nn.Module, batch_size: int = 32, max_seconds: float | None = None
) -> dict:
    """What an embedding depends on: a sha256 of the model's class and state dict (names,
    dtypes, shapes, bytes), its front end, the batch size (each batch is cut to its shortest
    utterance) and ``max_seconds``. Forward hooks and other code outside the state dict are
    not part of it.

    >>> from svlab.models import build
    >>> _ = torch.manual_seed(0); a = model_identity(build("resnet18", base_width=2))
    >>> _ = torch.manual_seed(1); b = model_identity(build("resnet18", base_width=2))
    >>> sorted(a), a["front_end"], a["state"] == b["state"]
    (['batch_size', 'front_end', 'max_seconds', 'model', 'state'], 'kaldi', False)
    """
    digest = hashlib.sha256(type(model).__qualname__.encode())
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return {
        "model": type(model).__qualname__,
        "state": digest.hexdigest(),
        "front_end": front_end_of(model),
        "batch_size": int(batch_size),
        "max_seconds": max_seconds,
    }


def kaldi_frames(samples: int) -> int:
    """The number of kaldi fbank frames of ``samples`` samples at 16 kHz (25 ms, 10 ms shift).

    >>> kaldi_frames(16000), kaldi_frames(399)
    (98, 0)
    """
    return 0 if samples < 400 else 1 + (samples - 400) // 160


def _samples(path: Path, max_seconds: float | None) -> int:
    """The length of ``load_audio(path)`` (cut to ``max_seconds``), from the header if 16 kHz."""
    try:
        info = soundfile.info(str(path))
        samples = info.frames if info.samplerate == 16000 and info.frames > 0 else None
    except (soundfile.LibsndfileError, RuntimeError):
        samples = None
    if samples is None:
        samples = len(load_audio(path))  # raises the AudioError naming a bad file
    return samples if max_seconds is None else min(samples, int(max_seconds * 16000))


def plan_batches(
    keys: Sequence[str], audio_dir: str | os.PathLike, batch_size: int = 32,
    max_seconds: float | None = None,
) -> tuple[list[list[Path]], dict[str, int]]:
    """The audio files of ``keys`` (paths under ``audio_dir``) in the batches
    :class:`svlab.evaluate.EvalSet` makes, and each key's row (file's position in them).

    Keys that name one file (links to it, repeated names: one device and inode) share it, read
    by the first key naming it; files are sorted by fbank length, then by that key, and grouped
    by ``batch_size``. A missing file raises :class:`svlab.data.audio.AudioError`.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> soundfile.write(d / "a.wav", np.full(8000, 0.1), 16000)
    >>> soundfile.write(d / "b.wav", np.full(4000, 0.1), 16000)
    >>> (d / "c.wav").symlink_to(d / "a.wav")
    >>> batches, rows = plan_batches(["a.wav", "b.wav", "c.wav"], d, batch_size=1)
    >>> [[p.name for p in b] for b in batches], rows
    ([['b.wav'], ['a.wav']], {'a.wav': 1, 'b.wav': 0, 'c.wav': 1})
    """
    first_key: dict[tuple[int, int], str] = {}
    file_of = {}
    for key in sorted(set(keys)):
        try:
            info = os.stat(Path(audio_dir) / key)
        except OSError:
            load_audio(Path(audio_dir) / key)  # raises the AudioError naming the file
            raise
        file_of[key] = (info.st_dev, info.st_ino)
        first_key.setdefault(file_of[key], key)
    files = sorted(
        first_key,
        key=lambda f: (kaldi_frames(_samples(Path(audio_dir) / first_key[f], max_seconds)),
                       first_key[f]),
    )  # fmt: skip
    row_of = {f: i for i, f in enumerate(files)}
    batches = [
        [Path(audio_dir) / first_key[f] for f in files[start : start + batch_size]]
        for start in range(0, len(files), batch_size)
    ]
    return batches, {key: row_of[identity] for key, identity in file_of.items()}


class FeatureBatches(torch.utils.data.Dataset):
    """Batch ``i``: the features of ``batches[i]``'s files by ``front_end``, each cut to the
    batch's shortest, as :class:`svlab.evaluate.EvalSet` makes them (kaldi: fbank less its
    mean over the whole utterance).

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> soundfile.write(d / "a.wav", 0.1 * np.sin(np.arange(8000)), 16000)
    >>> FeatureBatches([[d / "a.wav", d / "a.wav"]], "kaldi")[0].shape
    torch.Size([2, 48, 80])
    """

    def __init__(
        self, batches: list[list[Path]], front_end: str, max_seconds: float | None = None
    ) -> None:
        self.batches, self.front_end, self.max_seconds = batches, front_end, max_seconds

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> torch.Tensor:
        feats = []
        for path in self.batches[index]:
            wave = load_audio(path)
            if self.max_seconds is not None:
                wave = wave[: int(self.max_seconds * 16000)]
            if self.front_end == "kaldi":
                raw = fbank(wave, cmn=False)[0]
                feats.append(raw - raw.mean(dim=0))
            else:
                feats.append(featurize(wave, self.front_end)[0])
        frames = min(f.shape[0] for f in feats)
        return torch.stack([f[:frames] for f in feats])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class EmbeddingStore:
    """A folder holding ``embeddings.npy`` (float32 ``[rows, dim]``, opened memory-mapped) and
    ``index.json`` (the model's :func:`model_identity`, each utterance key's row, each row's
    file, the array's shape and sha256). Keys naming the same file share its row.

    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp()) / "store"
    >>> store = EmbeddingStore.write(folder, np.eye(2, dtype=np.float32), {"a": 0, "b": 1, "c": 1},
    ...     ["a.wav", "b.wav"], {"state": "x"})
    >>> EmbeddingStore.open(folder).rows(["c", "a"]).tolist()
    [1, 0]
    """

    folder: Path
    embeddings: np.ndarray
    key_rows: dict[str, int]
    files: list[str]
    identity: dict

    @classmethod
    def open(cls, folder: str | os.PathLike, identity: dict | None = None) -> EmbeddingStore:
        """Open the store in ``folder``, checking it is whole (shape, sha256, rows) and, given
        ``identity``, that the same model made it.

        >>> EmbeddingStore.open("/no/store")
        Traceback (most recent call last):
        ...
        svlab.embedding_store.StoreError: no embedding store in /no/store (no index.json)
        """
        folder = Path(folder)
        index_path, array_path = folder / INDEX, folder / EMBEDDINGS
        if not index_path.is_file():
            raise StoreError(f"no embedding store in {folder} (no {INDEX})")
        try:
            index = json.loads(index_path.read_text())
            keys, rows, files = index["keys"], index["rows"], index["files"]
            shape, stored_identity = tuple(index["shape"]), index["identity"]
            sha256, version = index["sha256"], index["format"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
            raise StoreError(f"{index_path} is corrupt: {type(err).__name__}: {err}") from err
        if version != STORE_FORMAT:
            raise StoreError(f"{index_path} has store format {version}, svlab reads {STORE_FORMAT}")
        if identity is not None and stored_identity != identity:
            changed = sorted(k for k in identity if stored_identity.get(k) != identity[k])
            raise StoreError(
                f"the embedding store in {folder} was made by another model or settings "
                f"(differs in {', '.join(changed)}): use another folder, or delete this one"
            )
        if not array_path.is_file() or _sha256(array_path) != sha256:
            raise StoreError(f"{array_path} is missing, truncated or corrupt (sha256 differs "
                             f"from {INDEX}'s)")  # fmt: skip
        embeddings = np.load(array_path, mmap_mode="r")
        if embeddings.shape != shape or embeddings.dtype != np.float32:
            raise StoreError(f"{array_path} holds {embeddings.dtype} {embeddings.shape}, "
                             f"{INDEX} says float32 {shape}")  # fmt: skip
        if len(keys) != len(rows) or len(files) != shape[0] or not all(
            0 <= r < shape[0] for r in rows
        ):
            raise StoreError(f"{index_path} is corrupt: its keys, rows and files do not match")
        return cls(folder, embeddings, dict(zip(keys, rows, strict=True)), files, stored_identity)

    @classmethod
    def write(
        cls, folder: str | os.PathLike, embeddings: np.ndarray, key_rows: dict[str, int],
        files: Sequence[str], identity: dict,
    ) -> EmbeddingStore:
        """Write a store from an in-memory array (atomically, as :meth:`extract` does).

        >>> import tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> EmbeddingStore.write(folder, np.ones((1, 3)), {"a": 0}, ["a.wav"], {}).embeddings.shape
        (1, 3)
        """
        folder = Path(folder)
        atomic_write(folder / EMBEDDINGS, lambda f: np.save(f, embeddings.astype(np.float32)))
        return cls._commit(folder, key_rows, files, identity)

    @classmethod
    def _commit(cls, folder: Path, key_rows: dict[str, int], files: Sequence[str],
                identity: dict) -> EmbeddingStore:  # fmt: skip
        """Write ``index.json`` for the array already in place: the store exists from then on."""
        array = np.load(folder / EMBEDDINGS, mmap_mode="r")
        index = {
            "format": STORE_FORMAT, "identity": identity, "shape": list(array.shape),
            "sha256": _sha256(folder / EMBEDDINGS), "keys": list(key_rows),
            "rows": list(key_rows.values()), "files": [str(f) for f in files],
        }  # fmt: skip
        atomic_write(folder / INDEX, lambda f: f.write(json.dumps(index).encode()))
        return cls.open(folder, identity)

    @classmethod
    @torch.no_grad()
    def extract(
        cls, folder: str | os.PathLike, model: nn.Module, keys: Sequence[str],
        audio_dir: str | os.PathLike, batch_size: int = 32, max_seconds: float | None = None,
        workers: int = 0,
    ) -> EmbeddingStore:
        """The store of ``model``'s embeddings of ``keys`` (paths under ``audio_dir``) in
        ``folder``: opened if it is there for this model and holds every key, else made.

        Each distinct file is read and featurized once by a ``torch.utils.data.DataLoader``
        with ``workers`` processes (in :func:`plan_batches`' batches), embedded in eval mode on
        the model's device and written into its row of a memory-mapped array; the index is
        written last, so an interrupted extraction leaves no store. A folder holding another
        model's store raises :class:`StoreError` before any audio is read.

        >>> EmbeddingStore.extract("/no/store", nn.Linear(2, 2), ["a.wav"], "/no/audio")
        Traceback (most recent call last):
        ...
        svlab.data.audio.AudioError: audio file /no/audio/a.wav does not exist
        """
        folder = Path(folder)
        if not keys:
            raise StoreError(f"no utterance keys to embed into {folder}")
        identity = model_identity(model, batch_size, max_seconds)
        if (folder / INDEX).is_file():
            store = cls.open(folder, identity)
            lacking = sorted(set(keys) - store.key_rows.keys())
            if lacking:
                raise StoreError(
                    f"the embedding store in {folder} holds no embedding for {len(lacking)} "
                    f"utterances of this trial list, e.g. {lacking[0]!r}: use another folder"
                )
            return store
        batches, key_rows = plan_batches(keys, audio_dir, batch_size, max_seconds)
        loader = torch.utils.data.DataLoader(
            FeatureBatches(batches, identity["front_end"], max_seconds),
            batch_size=None, num_workers=workers,
        )  # fmt: skip
        folder.mkdir(parents=True, exist_ok=True)
        temporary = folder / f".{EMBEDDINGS}.{os.getpid()}.tmp"
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            array, start = None, 0
            for feats in loader:
                out = model(feats.to(device)).float().cpu().numpy()
                if array is None:
                    shape = (sum(len(b) for b in batches), out.shape[1])
                    array = np.lib.format.open_memmap(temporary, "w+", np.float32, shape)
                array[start : start + len(out)] = out
                start += len(out)
            array.flush()
            del array
            with temporary.open("rb+") as f:
                os.fsync(f.fileno())
            os.replace(temporary, folder / EMBEDDINGS)
        finally:
            model.train(was_training)
            temporary.unlink(missing_ok=True)
        files = [str(path) for batch in batches for path in batch]
        return cls._commit(folder, key_rows, files, identity)

    def rows(self, keys: Sequence[str]) -> np.ndarray:
        """The row of each key, ``int64``; a key the store lacks raises :class:`StoreError`.

        >>> store = EmbeddingStore(Path("s"), np.zeros((1, 2), np.float32), {"a": 0}, ["a"], {})
        >>> store.rows(["b"])
        Traceback (most recent call last):
        ...
        svlab.embedding_store.StoreError: the embedding store in s holds no embedding for 'b'
        """
        try:
            return np.fromiter((self.key_rows[k] for k in keys), np.int64, len(keys))
        except KeyError as err:
            raise StoreError(
                f"the embedding store in {self.folder} holds no embedding for {err.args[0]!r}"
            ) from None
