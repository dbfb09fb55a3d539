"""Scoring a model on a trial list: test features loaded once, embeddings, cosine scores, EER."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from svlab.data.audio import load_audio
from svlab.data.voxceleb import Trial, read_trials, wav_dir
from svlab.features import fbank
from svlab.metrics import cosine_scores, eer, min_dcf

_CACHE: dict[tuple, EvalSet] = {}


@dataclass
class EvalSet:
    """The test utterances of a trial list as fbank features, ready to embed and score.

    Utterances are sorted by length and grouped into batches of ``batch_size``; each batch is
    cut to its shortest member (a few percent of the longer utterances' frames are left out),
    so embedding needs no padding and each utterance always gets the same input. ``means``
    holds each utterance's mean fbank vector before mean normalisation, for a baseline.

    >>> from svlab.models import build
    >>> evalset = EvalSet(keys=["a", "b", "c"], batches=[torch.randn(3, 20, 80)],
    ...     means=torch.randn(3, 80), pairs=[("a", "b"), ("a", "c")], labels=np.array([1, 0]))
    >>> result = evalset.score(build("resnet18", base_width=2, embed_dim=4))
    >>> sorted(result), result["scores"].shape, result["eer"] in (0.0, 0.5, 1.0)
    (['eer', 'labels', 'min_dcf', 'scores'], (2,), True)
    >>> len(evalset.embed(build("ecapa_c512", channels=8, scale=4, embed_dim=4)))
    3
    >>> evalset.score_mean_fbank()["scores"].shape
    (2,)
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

        >>> EvalSet.from_corpus("/no/corpus")
        Traceback (most recent call last):
        ...
        svlab.data.voxceleb.CorpusError: list file /no/corpus/trials/test.txt does not exist
        """
        root = Path(root)
        trial_path = Path(trials) if Path(trials).is_file() else root / "trials" / trials
        key = (str(root.resolve()), str(trial_path.resolve()), batch_size, max_seconds)
        if key not in _CACHE:
            _CACHE[key] = cls.from_trials(
                read_trials(trial_path), wav_dir(root), batch_size, max_seconds
            )
        return _CACHE[key]

    @classmethod
    def from_trials(
        cls,
        trials: list[Trial],
        audio_dir: str | os.PathLike,
        batch_size: int = 32,
        max_seconds: float | None = None,
    ) -> EvalSet:
        """Build from parsed trials, reading each utterance once from ``audio_dir``.

        >>> EvalSet.from_trials([Trial(1, "a.wav", "b.wav")], "/no/audio")
        Traceback (most recent call last):
        ...
        svlab.data.audio.AudioError: audio file /no/audio/a.wav does not exist
        """
        keys = sorted({path for t in trials for path in (t.enroll, t.test)})
        feats, means = [], []
        for key in keys:
            wave = load_audio(Path(audio_dir) / key)
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
            pairs=[(t.enroll, t.test) for t in trials],
            labels=np.array([t.label for t in trials]),
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
