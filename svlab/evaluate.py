"""Scoring a model on a trial list: test features loaded once, embeddings, cosine scores, EER."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from svlab.data.audio import load_audio
from svlab.features import fbank
from svlab.metrics import cosine_scores, eer, min_dcf

_CACHE: dict[tuple, EvalSet] = {}


def read_trials(path: str | os.PathLike) -> list[tuple[int, str, str]]:
    """Parse a VoxCeleb trial list: one ``<1|0> <enroll path> <test path>`` per line.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "t.txt"
    >>> _ = p.write_text("1 a/x/1.wav a/y/2.wav\\n0 a/x/1.wav b/z/1.wav\\n")
    >>> read_trials(p)
    [(1, 'a/x/1.wav', 'a/y/2.wav'), (0, 'a/x/1.wav', 'b/z/1.wav')]
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no trial list at {path}")
    trials = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 3 or fields[0] not in ("0", "1"):
            raise ValueError(
                f"{path}, line {number}: expected '<1|0> <enroll> <test>', got {line!r}"
            )
        trials.append((int(fields[0]), fields[1], fields[2]))
    if not trials:
        raise ValueError(f"{path} holds no trials")
    return trials


@dataclass
class EvalSet:
    """The test utterances of a trial list as fbank features, ready to embed and score.

    Utterances are sorted by length and grouped into batches of ``batch_size``; each batch is
    cut to its shortest member (a few percent of the longer utterances' frames are left out),
    so embedding needs no padding and each utterance always gets the same input. ``means``
    holds each utterance's mean fbank vector before mean normalisation, for a baseline.
    """

    keys: list[str]
    batches: list[torch.Tensor]
    means: torch.Tensor
    pairs: list[tuple[str, str]]
    labels: np.ndarray

    @classmethod
    def from_corpus(
        cls,
        root: str | os.PathLike,
        trials: str = "test.txt",
        batch_size: int = 32,
        max_seconds: float | None = None,
    ) -> EvalSet:
        """Load and featurize the utterances of ``root/trials/<trials>`` (cached per process).

        ``trials`` may also be a path to a trial list anywhere; audio is read from
        ``root/wav``. ``max_seconds`` keeps only each utterance's first seconds.
        """
        root = Path(root)
        trial_path = Path(trials) if Path(trials).is_file() else root / "trials" / trials
        key = (str(root.resolve()), str(trial_path.resolve()), batch_size, max_seconds)
        if key not in _CACHE:
            _CACHE[key] = cls.from_trials(
                read_trials(trial_path), root / "wav", batch_size, max_seconds
            )
        return _CACHE[key]

    @classmethod
    def from_trials(
        cls,
        trials: list[tuple[int, str, str]],
        wav_dir: str | os.PathLike,
        batch_size: int = 32,
        max_seconds: float | None = None,
    ) -> EvalSet:
        """Build from parsed trials, reading each utterance once from ``wav_dir``."""
        keys = sorted({path for _, a, b in trials for path in (a, b)})
        feats, means = [], []
        for key in keys:
            wave = load_audio(Path(wav_dir) / key)
            if max_seconds is not None:
                wave = wave[: int(max_seconds * 16000)]
            raw = fbank(wave, cmn=False)[0]
            means.append(raw.mean(dim=0))
            feats.append(raw - means[-1])
        order = sorted(range(len(keys)), key=lambda i: (feats[i].shape[0], keys[i]))
        batches = []
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            frames = min(feats[i].shape[0] for i in chunk)
            batches.append(torch.stack([feats[i][:frames] for i in chunk]))
        return cls(
            keys=[keys[i] for i in order],
            batches=batches,
            means=torch.stack([means[i] for i in order]),
            pairs=[(a, b) for _, a, b in trials],
            labels=np.array([label for label, _, _ in trials]),
        )

    @torch.no_grad()
    def embed(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Every utterance's embedding (on the CPU), computed in eval mode on the model's device."""
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        outputs = [model(batch.to(device)).float().cpu() for batch in self.batches]
        model.train(was_training)
        return dict(zip(self.keys, torch.cat(outputs), strict=True))

    def score_embeddings(self, embeddings: dict[str, torch.Tensor]) -> dict:
        """Cosine-score the trials with given embeddings: ``eer``, ``min_dcf``, scores, labels."""
        scores = cosine_scores(embeddings, self.pairs)
        return {
            "eer": eer(scores, self.labels)[0],
            "min_dcf": min_dcf(scores, self.labels, p_target=0.01)[0],
            "scores": scores,
            "labels": self.labels,
        }

    def score(self, model: nn.Module) -> dict:
        """EER and minDCF (p_target 0.01) of ``model`` with cosine scoring, plus the raw scores."""
        return self.score_embeddings(self.embed(model))

    def score_mean_fbank(self) -> dict:
        """The baseline: each utterance's mean fbank vector (centred over the set) as embedding."""
        centred = self.means - self.means.mean(dim=0)
        return self.score_embeddings(dict(zip(self.keys, centred, strict=True)))
