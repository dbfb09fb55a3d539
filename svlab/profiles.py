"""Seeding and notebook set-up; the ci / laptop / gpu profiles come from ``svlab.data.corpora``."""

from __future__ import annotations

import random

import numpy as np
import torch

from svlab.data.corpora import REPO_ROOT, Profile, get_profile

__all__ = ["REPO_ROOT", "Profile", "get_profile", "seed_everything", "setup_notebook"]


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
