"""The ci / laptop / gpu profiles: which corpus, model size and training length a run uses."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Profile:
    """Everything a notebook or benchmark needs to know about the scale it runs at.

    ``synth`` holds the keyword arguments of :func:`svlab.data.synthesize_corpus` for the
    offline corpus; it is ``None`` for a real corpus (VoxCeleb), whose root is given by the
    ``SVLAB_DATA`` environment variable.
    """

    name: str
    data_root: Path
    synth: dict | None = field(default_factory=dict)
    seed: int = 0

    def ensure_corpus(self) -> Path:
        """Return the corpus root, generating the offline corpus there first if it is absent."""
        from svlab.data import synthesize_corpus

        if (self.data_root / "trials").is_dir():
            return self.data_root
        if self.synth is None:
            raise FileNotFoundError(
                f"profile {self.name!r} reads a real corpus, but {self.data_root} holds none: "
                "set SVLAB_DATA to a prepared VoxCeleb root (see data/README.md)"
            )
        synthesize_corpus(self.data_root, seed=self.seed, **self.synth)
        return self.data_root


def _data_root(default: str) -> Path:
    return Path(os.environ.get("SVLAB_DATA", REPO_ROOT / "data" / default))


def get_profile(name: str | None = None) -> Profile:
    """The profile called ``name`` (default: ``$SVLAB_PROFILE`` or ``"ci"``).

    >>> get_profile("ci").name
    'ci'
    """
    name = name or os.environ.get("SVLAB_PROFILE", "ci")
    profiles = {
        "ci": Profile("ci", _data_root("corpus-ci"), synth={}),
        "laptop": Profile(
            "laptop",
            _data_root("corpus-laptop"),
            synth={"n_train_speakers": 200, "n_test_speakers": 40, "utterances_per_session": 5},
        ),
        "gpu": Profile("gpu", _data_root("voxceleb"), synth=None),
    }
    if name not in profiles:
        raise ValueError(f"unknown profile {name!r}; choose one of {sorted(profiles)}")
    return profiles[name]


def seed_everything(seed: int = 0) -> None:
    """Seed Python's, NumPy's and PyTorch's random number generators.

    >>> seed_everything(3); a = torch.rand(1); seed_everything(3); bool(a == torch.rand(1))
    True
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def setup_notebook(profile: str = "ci") -> Profile:
    """Seed, make plotly store figures as JSON (no inlined plotly.js), and return the profile.

    >>> setup_notebook("ci").name
    'ci'
    """
    import plotly.io as pio

    pio.renderers.default = "plotly_mimetype"
    chosen = get_profile(profile)
    seed_everything(chosen.seed)
    return chosen
