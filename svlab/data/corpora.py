"""The ci / laptop / gpu profiles: which corpus (and noise sets) a run reads, where, made how."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from svlab.data.noise_sets import write_noise_set, write_rir_set
from svlab.data.pairs import LARGE_TRIALS, write_large_trials
from svlab.data.synth import VERSION, synthesize_corpus

REPO_ROOT = Path(__file__).resolve().parents[2]
MUSAN_STAND_IN = REPO_ROOT / "data" / "musan-ci"
RIRS_STAND_IN = REPO_ROOT / "data" / "rirs-ci"


@dataclass(frozen=True)
class Profile:
    """Everything a notebook or benchmark needs to know about the scale it runs at.

    ``synth`` holds the keyword arguments of :func:`svlab.data.synthesize_corpus` for the
    offline corpus; it is ``None`` for a real corpus (VoxCeleb), whose root is given by the
    ``SVLAB_DATA`` environment variable. ``musan_root`` and ``rirs_root`` are the MUSAN and
    RIRS_NOISES folders augmentation reads (``SVLAB_MUSAN``, ``SVLAB_RIRS``); the ci and laptop
    profiles default to the offline stand-ins of :mod:`svlab.data.noise_sets`.
    """

    name: str
    data_root: Path
    synth: dict | None = field(default_factory=dict)
    seed: int = 0
    musan_root: Path = MUSAN_STAND_IN
    rirs_root: Path = RIRS_STAND_IN

    def ensure_corpus(self) -> Path:
        """Return the corpus root, (re)generating the offline corpus there if it is absent or stale.

        A synthetic corpus is stale when its ``meta.json`` records another generator version or
        other settings than this profile asks for; it is then made again in place.
        """
        if self.synth is None:
            if not (self.data_root / "trials").is_dir():
                raise FileNotFoundError(
                    f"profile {self.name!r} reads a real corpus, but {self.data_root} holds none: "
                    "set SVLAB_DATA to a prepared VoxCeleb root (see data/README.md)"
                )
            return self.data_root
        if not self.corpus_is_current():
            synthesize_corpus(self.data_root, seed=self.seed, overwrite=True, **self.synth)
        elif not (self.data_root / "trials" / LARGE_TRIALS).is_file():
            write_large_trials(self.data_root)  # a corpus made before the list existed
        return self.data_root

    def ensure_augment_sets(self) -> tuple[Path, Path]:
        """Return ``(musan_root, rirs_root)``, making the offline stand-ins there first when
        they are the stand-ins' folders and absent or stale; a real folder that is not there
        raises ``FileNotFoundError`` saying how to point at one."""
        for root, default, write, variable in (
            (self.musan_root, MUSAN_STAND_IN, write_noise_set, "SVLAB_MUSAN"),
            (self.rirs_root, RIRS_STAND_IN, write_rir_set, "SVLAB_RIRS"),
        ):
            if root == default:
                write(root, seed=self.seed)
            elif not root.is_dir():
                raise FileNotFoundError(
                    f"profile {self.name!r} augments from {root}, which does not exist: set "
                    f"{variable} to the folder (see data/README.md)"
                )
        return self.musan_root, self.rirs_root

    def corpus_settings(self) -> dict:
        """The settings ``meta.json`` records for this profile's synthetic corpus.

        >>> get_profile("ci").corpus_settings()["seed"]
        0
        """
        defaults = {
            name: parameter.default
            for name, parameter in inspect.signature(synthesize_corpus).parameters.items()
            if parameter.kind is inspect.Parameter.KEYWORD_ONLY
            and name not in ("workers", "overwrite", "progress")
        }
        settings = {**defaults, **(self.synth or {}), "seed": self.seed}
        return json.loads(json.dumps(settings))

    def corpus_is_current(self) -> bool:
        """Whether ``data_root`` holds the synthetic corpus this profile would generate now."""
        meta_path = self.data_root / "meta.json"
        if not (self.data_root / "trials").is_dir() or not meta_path.is_file():
            return False
        meta = json.loads(meta_path.read_text())
        return meta.get("version") == VERSION and meta.get("settings") == self.corpus_settings()


def corpus_digest(root: str | os.PathLike) -> str:
    """SHA-256 of a corpus: every file's path under ``root`` and its bytes, in sorted order.

    The offline corpus is the same bytes on every machine (numpy's random streams and float32
    arithmetic, whatever its SIMD kernels); ``data/corpus-<profile>.sha256`` holds the digest
    `make test` compares, so a change to the generator cannot pass unseen.

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> _ = (root / "a.txt").write_text("1")
    >>> corpus_digest(root)[:16]
    '4895672bc1a8b904'
    """
    root = Path(root)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _data_root(default: str) -> Path:
    return Path(os.environ.get("SVLAB_DATA", REPO_ROOT / "data" / default))


def get_profile(name: str | None = None) -> Profile:
    """The profile called ``name`` (default: ``$SVLAB_PROFILE`` or ``"ci"``).

    >>> get_profile("ci").name
    'ci'
    """
    name = name or os.environ.get("SVLAB_PROFILE", "ci")
    stand_ins = {
        "musan_root": Path(os.environ.get("SVLAB_MUSAN", MUSAN_STAND_IN)),
        "rirs_root": Path(os.environ.get("SVLAB_RIRS", RIRS_STAND_IN)),
    }
    real = {
        "musan_root": Path(os.environ.get("SVLAB_MUSAN", REPO_ROOT / "data" / "musan")),
        "rirs_root": Path(os.environ.get("SVLAB_RIRS", REPO_ROOT / "data" / "RIRS_NOISES")),
    }
    profiles = {
        "ci": Profile("ci", _data_root("corpus-ci"), synth={}, **stand_ins),
        "laptop": Profile(
            "laptop",
            _data_root("corpus-laptop"),
            synth={"n_train_speakers": 200, "n_test_speakers": 40, "utterances_per_session": 5},
            **stand_ins,
        ),
        "gpu": Profile("gpu", _data_root("voxceleb"), synth=None, **real),
    }
    if name not in profiles:
        raise ValueError(f"unknown profile {name!r}; choose one of {sorted(profiles)}")
    return profiles[name]
