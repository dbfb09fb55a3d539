"""Scoring a model on a trial list: test features loaded once, embeddings, cosine scores, EER."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from svlab.comparison import trial_speakers
from svlab.data.audio import load_audio
from svlab.data.voxceleb import Trial, read_train_list, read_trials, wav_dir
from svlab.features import FRONT_ENDS, fbank, featurize, front_end_of
from svlab.metrics import eer_interval, verification_result
from svlab.scorenorm import BACKENDS, backend_scores, speaker_means
from svlab.stored_eval import LARGE_LIST_KEYS, StoredEvalSet, check_trial_files

_CACHE: dict[tuple, EvalSet | StoredEvalSet] = {}


@dataclass
class EvalSet:
    """The test utterances of a trial list as fbank features, ready to embed and score.

    Utterances are sorted by length and grouped into batches of ``batch_size``; each batch is
    cut to its shortest member (a few percent of the longer utterances' frames are left out),
    so embedding needs no padding and each utterance always gets the same input. ``means``
    holds each utterance's mean fbank vector before mean normalisation, for a baseline.

    ``batches`` are kaldi fbank, the front end of svlab's and wespeaker's models. A model
    with another front end (``model.front_end``, e.g. a SpeechBrain ECAPA from
    :func:`svlab.models.load_pretrained`) is embedded from features of its own front end,
    made from ``audio_dir`` on first use (same batches, each cut to its shortest member)
    and kept beside the kaldi ones.

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
    audio_dir: Path | None = None
    max_seconds: float | None = None
    other_front_ends: dict[str, list[torch.Tensor]] = field(default_factory=dict, repr=False)

    @classmethod
    def from_corpus(
        cls,
        root: str | os.PathLike,
        trials: str = "test.txt",
        batch_size: int = 32,
        max_seconds: float | None = None,
        store: str | os.PathLike | None = None,
        workers: int = 0,
    ) -> EvalSet | StoredEvalSet:
        """Load and featurize the utterances of ``root/trials/<trials>`` (cached per process).

        ``trials`` may also be a path to a trial list anywhere; audio is read from
        ``root/wav``. ``max_seconds`` keeps only each utterance's first seconds.

        A list of more than ``LARGE_LIST_KEYS`` (20,000) distinct utterances, or any list given
        a ``store`` folder, gives a :class:`svlab.stored_eval.StoredEvalSet` instead: no
        features held, each model's embeddings extracted once (by a DataLoader with
        ``workers`` processes) into ``store`` (a temporary folder if None) and scored from
        there, with the same scores.

        >>> EvalSet.from_corpus("/no/corpus")
        Traceback (most recent call last):
        ...
        svlab.data.voxceleb.CorpusError: list file /no/corpus/trials/test.txt does not exist
        """
        root = Path(root)
        trial_path = Path(trials) if Path(trials).is_file() else root / "trials" / trials
        key = (str(root.resolve()), str(trial_path.resolve()), batch_size, max_seconds,
               None if store is None else str(Path(store).resolve()), workers)  # fmt: skip
        if key not in _CACHE:
            parsed = read_trials(trial_path)
            if store is not None or len({k for t in parsed for k in (t.enroll, t.test)}) > (
                LARGE_LIST_KEYS
            ):
                check_trial_files(parsed, trial_path, root)
                _CACHE[key] = StoredEvalSet.from_trials(
                    parsed, wav_dir(root), store, batch_size, max_seconds, workers
                )
            else:
                _CACHE[key] = cls.from_trials(parsed, wav_dir(root), batch_size, max_seconds)
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
            audio_dir=Path(audio_dir),
            max_seconds=max_seconds,
        )

    def batches_for(self, front_end: str) -> list[torch.Tensor]:
        """The utterances' features by ``front_end`` (a key of ``svlab.features.FRONT_ENDS``),
        in the batches of :attr:`batches`; other front ends than kaldi are made once.

        >>> evalset = EvalSet(keys=["a"], batches=[torch.zeros(1, 5, 80)], means=torch.zeros(1, 80),
        ...     pairs=[], labels=np.array([]))
        >>> evalset.batches_for("kaldi")[0].shape
        torch.Size([1, 5, 80])
        >>> evalset.batches_for("speechbrain")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: this EvalSet holds kaldi fbank only (no audio_dir to make 'speechbrain' ...
        """
        if front_end == "kaldi":
            return self.batches
        if front_end not in FRONT_ENDS:
            raise ValueError(f"unknown front end {front_end!r}; known: {sorted(FRONT_ENDS)}")
        if front_end not in self.other_front_ends:
            if self.audio_dir is None:
                raise ValueError(
                    f"this EvalSet holds kaldi fbank only (no audio_dir to make {front_end!r} "
                    "features)"
                )
            batches, start = [], 0
            for batch in self.batches:
                feats = [
                    featurize(self._wave(key), front_end)[0]
                    for key in self.keys[start : start + len(batch)]
                ]
                frames = min(f.shape[0] for f in feats)
                batches.append(torch.stack([f[:frames] for f in feats]))
                start += len(batch)
            self.other_front_ends[front_end] = batches
        return self.other_front_ends[front_end]

    def _wave(self, key: str) -> torch.Tensor:
        wave = load_audio(Path(self.audio_dir) / key)
        return wave if self.max_seconds is None else wave[: int(self.max_seconds * 16000)]

    @torch.no_grad()
    def embed(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Every utterance's embedding (on the CPU), computed in eval mode on the model's device
        from features of the model's front end (:func:`svlab.features.front_end_of`)."""
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        batches = self.batches_for(front_end_of(model))
        outputs = [model(batch.to(device)).float().cpu() for batch in batches]
        model.train(was_training)
        return dict(zip(self.keys, torch.cat(outputs), strict=True))

    def score_embeddings(
        self,
        embeddings: dict[str, torch.Tensor],
        backend: str = "cosine",
        cohort: torch.Tensor | None = None,
        top_n: int = 300,
    ) -> dict:
        """Score the trials with given embeddings: ``eer``, ``min_dcf``, scores, labels.

        ``backend`` is plain ``"cosine"``, or with ``cohort`` embeddings ``"mean"`` (their mean
        subtracted first) or ``"asnorm"`` (then AS-norm, ``top_n``): see
        :func:`svlab.scorenorm.backend_scores`.
        """
        scores = backend_scores(embeddings, self.pairs, backend, cohort, top_n)
        return verification_result(scores, self.labels)

    def score(
        self,
        model: nn.Module,
        backend: str = "cosine",
        cohort: torch.Tensor | None = None,
        top_n: int = 300,
    ) -> dict:
        """EER and minDCF (p_target 0.01) of ``model`` with cosine scoring (or another
        ``backend``, see :meth:`score_embeddings`), plus the raw scores."""
        return self.score_embeddings(self.embed(model), backend, cohort, top_n)

    def score_mean_fbank(self) -> dict:
        """The baseline: each utterance's mean fbank vector (centred over the set) as embedding."""
        centred = self.means - self.means.mean(dim=0)
        return self.score_embeddings(dict(zip(self.keys, centred, strict=True)))


@torch.no_grad()
def cohort_embeddings(
    model: nn.Module,
    root: str | os.PathLike,
    listing: str | os.PathLike,
    per_speaker: int = 0,
    max_seconds: float | None = None,
) -> torch.Tensor:
    """Per-speaker mean embeddings of the utterances in a train list (``<speaker> <path under
    root/wav>`` per line; wespeaker uses VoxCeleb2-dev), from ``model``'s front end: the
    cohort of the ``"mean"`` and ``"asnorm"`` back-ends. ``per_speaker`` > 0 keeps only each
    speaker's first utterances.

    >>> from svlab.models import build
    >>> cohort_embeddings(build("resnet18", base_width=2), "/no/corpus", "/no/corpus/train.txt")
    Traceback (most recent call last):
    ...
    svlab.data.voxceleb.CorpusError: list file /no/corpus/train.txt does not exist
    """
    utterances = read_train_list(Path(listing))
    if per_speaker:
        kept, counts = [], dict.fromkeys((u.speaker for u in utterances), 0)
        for u in utterances:
            if counts[u.speaker] < per_speaker:
                kept.append(u)
                counts[u.speaker] += 1
        utterances = kept
    device = next(model.parameters()).device
    front_end, was_training = front_end_of(model), model.training
    model.eval()
    embeddings = []
    for u in utterances:
        wave = load_audio(wav_dir(Path(root)) / u.path)
        if max_seconds is not None:
            wave = wave[: int(max_seconds * 16000)]
        embeddings.append(model(featurize(wave, front_end).to(device)).float().cpu()[0])
    model.train(was_training)
    return speaker_means(torch.stack(embeddings), [u.speaker for u in utterances])


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``svlab evaluate``.

    >>> parser = argparse.ArgumentParser(); register_cli(parser.add_subparsers())
    >>> args = parser.parse_args(["evaluate", "m.pt", "--root", "vox1", "--backend", "mean"])
    >>> args.model, args.backend, args.trials, args.front_end, args.store, args.workers
    ('m.pt', 'mean', 'test.txt', 'auto', None, 0)
    """
    parser = subparsers.add_parser(
        "evaluate",
        help="score a model (svlab, wespeaker or SpeechBrain checkpoint) on a trial list",
        description="EER and minDCF of a model file on a corpus's trials, with the model's own "
        "front end and a chosen scoring back-end.",
    )
    parser.add_argument(
        "model", help="svlab model.pt, wespeaker avg_model.pt or SpeechBrain embedding_model.ckpt"
    )
    parser.add_argument("--root", required=True, help="corpus root holding wav/ (and trials/)")
    parser.add_argument(
        "--trials", default="test.txt", help="trial list: a file, or a name under ROOT/trials"
    )
    parser.add_argument(
        "--front-end",
        default="auto",
        choices=["auto", *FRONT_ENDS],
        help="features to embed from (auto: the model's own)",
    )
    parser.add_argument("--backend", default="cosine", choices=BACKENDS,
                        help="scoring: cosine, cohort-mean cosine or AS-norm")
    parser.add_argument(
        "--cohort",
        help="train list of cohort utterances under ROOT/wav "
        "(needed by the mean and asnorm back-ends)",
    )
    parser.add_argument(
        "--cohort-per-speaker",
        type=int,
        default=0,
        help="use only this many utterances per cohort speaker (0: all)",
    )
    parser.add_argument("--top-n", type=int, default=300, help="AS-norm cohort size")
    parser.add_argument("--max-seconds", type=float, help="keep only each utterance's start")
    parser.add_argument("--device", default="cpu", help="torch device to embed on")
    parser.add_argument(
        "--store",
        metavar="DIR",
        help="extract the embeddings once into DIR (a memory-mapped array and its index) and "
        "score from there; reused by later runs of the same model. Without it a list of more "
        f"than {LARGE_LIST_KEYS:,} utterances goes through a temporary store",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=32,
        help="utterances embedded at once, sorted by length, each batch cut to its shortest "
        "(lower it for long utterances on a wide model: one batch's activations)",
    )
    parser.add_argument("--workers", type=int, default=0,
                        help="DataLoader processes reading and featurizing audio for a store")
    parser.add_argument(
        "--resamples",
        type=int,
        default=1000,
        help="speaker-bootstrap resamples for the EER interval (95%%)",
    )
    parser.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from svlab.models.pretrained import read_pretrained

    loaded = read_pretrained(args.model)
    model = loaded.model.to(args.device)
    if args.front_end != "auto":
        model.front_end = args.front_end
    if args.workers < 0 or args.batch_size < 1:
        raise ValueError(f"--workers must be 0 or more and --batch-size 1 or more, got "
                         f"{args.workers} and {args.batch_size}")  # fmt: skip
    evalset = EvalSet.from_corpus(args.root, args.trials, args.batch_size, args.max_seconds,
                                  store=args.store, workers=args.workers)  # fmt: skip
    cohort = None
    if args.backend != "cosine":
        if not args.cohort:
            raise ValueError(f"--backend {args.backend} needs --cohort")
        cohort = cohort_embeddings(
            model, args.root, args.cohort, args.cohort_per_speaker, args.max_seconds
        )
    result = evalset.score(model, args.backend, cohort, args.top_n)
    _, low, high = eer_interval(
        result["scores"], result["labels"], *trial_speakers(evalset.pairs),
        resamples=args.resamples,
    )
    report = {
        "model": str(args.model),
        "source": loaded.source,
        "architecture": loaded.name,
        "front_end": front_end_of(model),
        "backend": args.backend,
        "trials": len(evalset.pairs),
        "store": (args.store or "temporary") if isinstance(evalset, StoredEvalSet) else None,
        "eer_percent": round(100 * result["eer"], 4),
        "eer_interval_percent": [round(100 * low, 4), round(100 * high, 4)],
        "min_dcf": round(result["min_dcf"], 4),
    }
    print(json.dumps(report, indent=2))
    return 0
