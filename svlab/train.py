"""Training speaker-embedding models with AAM-softmax: config, data crops, loop, resume, DDP."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from svlab import checkpoint
from svlab.data import load_audio, read_train_list, wav_dir
from svlab.evaluate import EvalSet
from svlab.features import featurize, front_end_of
from svlab.losses import AAMSoftmax, margin_ramp
from svlab.models import build
from svlab.optim import make_optimizer
from svlab.profiles import REPO_ROOT, get_profile, seed_everything

_FEATURE_CACHE: dict[tuple, list[torch.Tensor]] = {}
HOP = 160  # samples per fbank frame (10 ms)
WINDOW = 400  # samples in one fbank frame (25 ms)


class ConfigError(ValueError):
    """A training config with an unknown key or a value of the wrong type."""


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN); the message names the step."""


# ----------------------------------------------------------------------------- configuration


@dataclass
class TrainConfig:
    """Everything one training run depends on. Defaults follow wespeaker's VoxCeleb recipe.

    Epochs are passes over the training utterances, one random crop of ``crop_frames`` fbank
    frames from each. The learning rate rises linearly over ``warmup_epochs`` and decays
    exponentially from ``lr`` to ``final_lr`` over the run; the AAM margin rises linearly
    from 0 to ``margin`` between ``margin_start_epoch`` and ``margin_end_epoch``.

    >>> cfg = TrainConfig(epochs=2, lr=0.05)
    >>> cfg.optimizer, cfg.batch_size, cfg.margin
    ('sgd', 128, 0.2)
    """

    name: str = "run"
    model: str = "resnet34"
    model_args: dict[str, Any] = field(default_factory=dict)
    profile: str = "ci"
    data_root: str = ""  # empty: the profile's corpus
    precompute_features: bool = True  # fbank of all training utterances once, in memory
    crop_frames: int = 200
    dither: float = 1.0
    epochs: int = 150
    batch_size: int = 128
    optimizer: str = "sgd"  # sgd | adam | sgd8bit | adam8bit (svlab.optim.make_optimizer)
    optimizer_backend: str = "svlab"
    lr: float = 0.1
    final_lr: float = 5e-5
    warmup_epochs: float = 6.0
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    scale: float = 32.0
    margin: float = 0.2
    margin_start_epoch: float = 20.0
    margin_end_epoch: float = 40.0
    eval_trials: str = "test.txt"
    eval_every: int = 10  # epochs between validation EERs (the last epoch is always scored)
    eval_seconds: float = 0.0  # 0: whole test utterances
    log_every: int = 10  # steps between history rows
    checkpoint_every: int = 100  # steps between training-state checkpoints
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = False  # fp16 autocast on CUDA
    sync_batchnorm: bool = True  # BatchNorm over the global batch in distributed runs
    workers: int = 0  # DataLoader worker processes
    threads: int = 0  # torch CPU threads; 0 leaves torch's default
    out_dir: str = ""  # empty: runs/<name>-<profile>
    stop_after_steps: int = 0  # stop early (as if interrupted); 0: run to the end
    init_from: str = ""  # svlab / wespeaker / SpeechBrain checkpoint: its encoder, head if it fits
    quantize_bits: int = 0  # 1..8: quantize every conv/linear weight, fine-tune through it
    quantize_granularity: str = "tensor"  # tensor | channel (svlab.quant.quantize_model)
    quantize_method: str = "kmeans"  # kmeans | uniform

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        """Build from plain values, naming any unknown key or ill-typed value.

        >>> TrainConfig.from_dict({"lr": 0.01}).lr
        0.01
        >>> TrainConfig.from_dict({"learning_rate": 0.01})
        Traceback (most recent call last):
        ...
        svlab.train.ConfigError: config: unknown key 'learning_rate'
        """
        defaults = dataclasses.asdict(cls())
        converted = {}
        for key, value in values.items():
            if key not in defaults:
                raise ConfigError(f"{source}: unknown key {key!r}")
            kind = type(defaults[key])
            allowed = (int, float) if kind is float else kind
            if isinstance(value, bool) != (kind is bool) or not isinstance(value, allowed):
                raise ConfigError(f"{source}: {key} must be {kind.__name__}, got {value!r}")
            converted[key] = float(value) if kind is float else value
        return cls(**converted)

    @classmethod
    def from_toml(
        cls, path: str | os.PathLike, profile: str | None = None, sets: list[str] = ()
    ) -> TrainConfig:
        """Read a TOML recipe: top-level keys, then ``[profiles.<profile>]`` over them, then
        ``key=value`` strings from ``sets`` (values in TOML syntax; ``model_args.x=1`` works).

        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "r.toml"
        >>> _ = p.write_text('lr = 0.1\\n[profiles.ci]\\nlr = 0.5\\n')
        >>> TrainConfig.from_toml(p, "ci", ["epochs=3"]).lr, TrainConfig.from_toml(p, "gpu").lr
        (0.5, 0.1)
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no training config at {path}")
        try:
            values = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path}: {err}") from err
        profiles = values.pop("profiles", {})
        profile = profile or os.environ.get("SVLAB_PROFILE", "ci")
        get_profile(profile)  # an unknown profile name fails here
        values = _merge(values, profiles.get(profile, {}))
        values["profile"] = profile
        values.setdefault("name", path.stem)
        for item in sets:
            key, sep, text = item.partition("=")
            if not sep:
                raise ConfigError(f"--set {item!r}: expected key=value")
            try:
                value = tomllib.loads(f"v = {text}")["v"]
            except tomllib.TOMLDecodeError:
                value = text  # a bare word is a string
            *parents, leaf = key.strip().split(".")
            target = values
            for parent in parents:
                target = target.setdefault(parent, {})
            target[leaf] = value
        return cls.from_dict(values, source=str(path))

    def run_dir(self) -> Path:
        """Where checkpoints and logs go: ``out_dir`` or ``runs/<name>-<profile>``."""
        return (
            Path(self.out_dir)
            if self.out_dir
            else REPO_ROOT / "runs" / f"{self.name}-{self.profile}"
        )


def _merge(base: dict, override: dict) -> dict:
    """``base`` with ``override``'s keys replacing its own, recursively for tables."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            value = _merge(merged[key], value)
        merged[key] = value
    return merged


# ----------------------------------------------------------------------------- training crops


def _generator(*key: int) -> torch.Generator:
    """A torch generator seeded from a tuple of integers (seed, epoch, batch, ...)."""
    seed = int(np.random.SeedSequence(list(key)).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(seed % 2**63)


class SpeakerCrops:
    """The training utterances of a corpus and their speaker labels, served as random crops.

    Batch ``b`` of epoch ``e`` is a pure function of ``(seed, e, b)``: which utterances
    (one shuffle per epoch) and where each crop starts. So a resumed run sees the data of an
    uninterrupted one, and ranks of a distributed run take disjoint slices of one global
    batch. With ``features`` (fbank of whole utterances, computed once) crops are cut from
    them; otherwise crops are cut from the audio and featurized with dither, which here is
    Gaussian noise of ``dither`` (in 16-bit sample units) added to the crop before fbank.
    Mean normalisation is applied per crop, as when featurizing the crop's audio.
    ``front_end`` names the features (``svlab.features.FRONT_ENDS``): kaldi fbank, or the
    front end a loaded model was trained on.
    """

    def __init__(
        self,
        paths: list[Path],
        labels: list[int],
        crop_frames: int,
        seed: int = 0,
        features: list[torch.Tensor] | None = None,
        dither: float = 0.0,
        front_end: str = "kaldi",
    ) -> None:
        if not paths:
            raise ValueError("no training utterances")
        self.paths, self.labels = paths, torch.tensor(labels)
        self.crop_frames, self.seed = crop_frames, seed
        self.features, self.dither, self.front_end = features, dither, front_end

    @classmethod
    def from_corpus(
        cls,
        root: str | os.PathLike,
        crop_frames: int,
        seed: int = 0,
        precompute: bool = True,
        dither: float = 0.0,
        front_end: str = "kaldi",
    ) -> SpeakerCrops:
        """Read ``root/train.txt`` (``<speaker> <path under wav/>`` per line).

        Speakers are numbered in sorted order. With ``precompute`` the fbank of every
        utterance is computed once per process (and kept as float16) before any crop.

        >>> SpeakerCrops.from_corpus("/no/corpus", crop_frames=200)
        Traceback (most recent call last):
        ...
        svlab.data.voxceleb.CorpusError: list file /no/corpus/train.txt does not exist
        """
        root = Path(root)
        listing = root / "train.txt"
        utterances = read_train_list(listing)
        speakers = {spk: i for i, spk in enumerate(sorted({u.speaker for u in utterances}))}
        paths = [wav_dir(root) / u.path for u in utterances]
        labels = [speakers[u.speaker] for u in utterances]
        features = None
        if precompute:
            key = (str(listing.resolve()), listing.stat().st_mtime_ns, front_end)
            if key not in _FEATURE_CACHE:
                _FEATURE_CACHE[key] = [
                    featurize(load_audio(p), front_end, cmn=False)[0].half() for p in paths
                ]
            features = _FEATURE_CACHE[key]
        return cls(paths, labels, crop_frames, seed, features, dither, front_end)

    @property
    def n_speakers(self) -> int:
        """The number of training speakers (labels run from 0 to ``n_speakers - 1``)."""
        return int(self.labels.max()) + 1

    def batches_per_epoch(self, batch_size: int) -> int:
        """Full batches in one pass over the utterances (the rest is dropped).

        >>> _example_crops().batches_per_epoch(2)
        1
        """
        return len(self.paths) // batch_size

    def batch(
        self, epoch: int, index: int, batch_size: int, rank: int = 0, world: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's share of global batch ``index`` of ``epoch``: fbank ``[B/world, T, F]``
        and speaker labels.

        >>> crops = _example_crops()
        >>> feats, labels = crops.batch(epoch=0, index=0, batch_size=2)
        >>> feats.shape, sorted(labels.tolist())
        (torch.Size([2, 5, 80]), [0, 1])
        >>> half, _ = crops.batch(epoch=0, index=0, batch_size=2, rank=1, world=2)
        >>> torch.equal(half[0], feats[1])
        True
        """
        order = torch.randperm(len(self.paths), generator=_generator(self.seed, epoch))
        chosen = order[index * batch_size : (index + 1) * batch_size]
        starts = torch.rand(
            batch_size, generator=_generator(self.seed, epoch, index), dtype=torch.float64
        )
        chosen, starts = chosen[rank::world], starts[rank::world]
        noise = _generator(self.seed, epoch, index, rank) if self.dither else None
        return self._features(chosen.tolist(), starts.tolist(), noise), self.labels[chosen]

    def centre_crops(self, indices: list[int]) -> torch.Tensor:
        """fbank ``[len(indices), crop_frames, F]`` of the middle of each utterance, no dither.

        >>> _example_crops().centre_crops([0, 1])[:, :, 0].tolist()
        [[-2.0, -1.0, 0.0, 1.0, 2.0], [-2.0, -1.0, 0.0, 1.0, 2.0]]
        """
        return self._features(indices, [0.5] * len(indices))

    def _features(
        self, indices: list[int], starts: list[float], noise: torch.Generator | None = None
    ) -> torch.Tensor:
        """fbank of one crop of each utterance, starting at ``starts`` (fractions of the slack);
        audio crops get dither drawn from ``noise``, if given."""
        pairs = zip(indices, starts, strict=True)
        if self.features is not None:
            feats = torch.stack(
                [_crop(self.features[i].float(), self.crop_frames, s) for i, s in pairs]
            )
            return feats - feats.mean(dim=1, keepdim=True)
        samples = (self.crop_frames - 1) * HOP + WINDOW
        waves = torch.stack([_crop(load_audio(self.paths[i]), samples, s) for i, s in pairs])
        if noise is not None:
            waves = waves + torch.randn(waves.shape, generator=noise) * (self.dither / 2**15)
        return featurize(waves, self.front_end)


def _example_crops() -> SpeakerCrops:
    """Two in-memory utterances of two speakers, for the examples."""
    features = [torch.arange(8.0).repeat(80, 1).T, torch.arange(12.0).repeat(80, 1).T]
    return SpeakerCrops([Path("a.wav"), Path("b.wav")], [0, 1], crop_frames=5, features=features)


def _crop(x: torch.Tensor, length: int, start_fraction: float) -> torch.Tensor:
    """``length`` items of ``x`` (along dim 0) from a start at ``start_fraction`` of the slack;
    a shorter ``x`` is repeated to length first."""
    if x.shape[0] < length:
        x = x.repeat(math.ceil(length / x.shape[0]), *[1] * (x.dim() - 1))
    start = int(start_fraction * (x.shape[0] - length + 1))
    return x[start : start + length]


class _EpochBatches(torch.utils.data.Dataset):
    """The batches of one epoch from ``first`` on, for a DataLoader (a worker makes a batch)."""

    def __init__(
        self, crops: SpeakerCrops, epoch: int, first: int, batch_size: int, rank: int, world: int
    ) -> None:
        self.crops, self.epoch, self.first = crops, epoch, first
        self.batch_size, self.rank, self.world = batch_size, rank, world

    def __len__(self) -> int:
        return self.crops.batches_per_epoch(self.batch_size) - self.first

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.crops.batch(self.epoch, self.first + i, self.batch_size, self.rank, self.world)


# ----------------------------------------------------------------------------- model, schedules


class SpeakerClassifier(nn.Module):
    """An embedding model with its AAM-softmax head: what the optimizer trains.

    >>> net = SpeakerClassifier(build("resnet18", base_width=2, embed_dim=4), AAMSoftmax(4, 3))
    >>> loss, correct = net(torch.randn(2, 20, 80), torch.tensor([0, 2]))
    >>> loss.shape, int(correct) <= 2
    (torch.Size([]), True)
    """

    def __init__(self, encoder: nn.Module, head: AAMSoftmax) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(
        self, feats: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean loss and the number of crops whose highest logit (margin applied) is right."""
        logits = self.head.logits(self.encoder(feats).float(), labels)
        loss = nn.functional.cross_entropy(logits, labels)
        return loss, (logits.argmax(dim=1) == labels).sum()


@torch.no_grad()
def imprint_head(
    model: nn.Module,
    crops: SpeakerCrops,
    scale: float = 32.0,
    margin: float = 0.2,
    batch_size: int = 64,
) -> AAMSoftmax:
    """An AAM-softmax head imprinted with ``model``'s embeddings of the training utterances.

    Each speaker's centre is the mean direction of the embeddings (eval mode) of the middle
    crop of each of their utterances (:meth:`AAMSoftmax.imprinted`). This is the head to
    fine-tune a trained or quantized encoder with when its own trained head is not at hand.

    >>> model = build("resnet18", base_width=2, embed_dim=4)
    >>> imprint_head(model, _example_crops()).weight.shape
    torch.Size([2, 4])
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    count = len(crops.paths)
    embeddings = []
    for start in range(0, count, batch_size):
        feats = crops.centre_crops(list(range(start, min(start + batch_size, count))))
        embeddings.append(model(feats.to(device)).float().cpu())
    model.train(was_training)
    return AAMSoftmax.imprinted(
        torch.cat(embeddings), crops.labels, crops.n_speakers, scale, margin
    )


def learning_rate(cfg: TrainConfig, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """The learning rate of (0-based) ``step``: exponential decay from ``lr`` to ``final_lr``
    over the run, times a linear warm-up factor over ``warmup_epochs``.

    >>> cfg = TrainConfig(lr=0.1, final_lr=0.001, warmup_epochs=1)
    >>> [round(learning_rate(cfg, s, 10, 2), 4) for s in (0, 1, 5, 10)]
    [0.05, 0.0631, 0.01, 0.001]
    """
    lr = cfg.lr * (cfg.final_lr / cfg.lr) ** (step / total_steps)
    warmup_steps = cfg.warmup_epochs * steps_per_epoch
    return lr * min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else lr


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics cover the batches of all processes.

    For distributed runs on the CPU (gloo), where ``torch.nn.SyncBatchNorm`` is not
    available: per-channel sums, then sums of squared deviations from the global mean, are
    all-reduced (with gradients), so N processes with batch B/N normalise like one process
    with batch B. In eval mode it is a plain BatchNorm.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"GlobalBatchNorm needs [B, C, ...] input, got {list(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        channels = x.shape[1]
        dims = [0, *range(2, x.dim())]
        count = x.new_tensor([x.numel() // channels])
        sums = all_reduce(torch.cat([x.sum(dims), count]))
        total = sums[-1]
        mean = sums[:channels] / total
        shape = [1, channels] + [1] * (x.dim() - 2)
        centred = x - mean.view(shape)
        var = all_reduce((centred * centred).sum(dims)) / total
        with torch.no_grad():
            self.num_batches_tracked += 1
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var * total / (total - 1), self.momentum)
        normed = centred * torch.rsqrt(var.view(shape) + self.eps)
        if not self.affine:
            return normed
        return normed * self.weight.view(shape) + self.bias.view(shape)


def _use_global_batchnorm(module: nn.Module, on: bool) -> nn.Module:
    """Swap every BatchNorm1d/2d for a :class:`GlobalBatchNorm` (``on``) or back, in place."""
    for name, child in module.named_children():
        if on and isinstance(child, (nn.BatchNorm1d, nn.BatchNorm2d)):
            swapped = GlobalBatchNorm(child.num_features, child.eps, child.momentum, child.affine)
            swapped.plain_kind = type(child)
        elif not on and isinstance(child, GlobalBatchNorm):
            swapped = child.plain_kind(child.num_features, child.eps, child.momentum, child.affine)
        else:
            _use_global_batchnorm(child, on)
            continue
        swapped.load_state_dict(child.state_dict())
        setattr(module, name, swapped.to(child.running_mean.device))
    return module


# ----------------------------------------------------------------------------- the loop


def _initial_model(
    cfg: TrainConfig, head: AAMSoftmax | str | None, crops: SpeakerCrops
) -> tuple[nn.Module, AAMSoftmax | str | None, str, dict]:
    """The model :func:`train` builds: new, or ``cfg.init_from``'s (quantized if asked), with
    the head to start from, the registry name and the overrides to save it under."""
    name, overrides = cfg.model, dict(cfg.model_args)
    if not cfg.init_from:
        model = build(name, **overrides)
    else:  # an svlab checkpoint, or a wespeaker / SpeechBrain one (wespeaker's head comes along)
        from svlab.models.pretrained import read_pretrained

        model, trained, name, overrides, _ = read_pretrained(cfg.init_from)
        if head is None:  # its own head if it was trained on these speakers, else imprint one
            fits = trained is not None and trained.weight.shape[0] == crops.n_speakers
            head = trained if fits else "imprint"
    if cfg.quantize_bits:
        from svlab.quant import quantize_model

        model = quantize_model(
            model, cfg.quantize_bits, granularity=cfg.quantize_granularity,
            method=cfg.quantize_method,
        )  # fmt: skip
    return model, head, name, overrides


def _training_head(
    head: AAMSoftmax | str | None, model: nn.Module, crops: SpeakerCrops, cfg: TrainConfig
) -> AAMSoftmax:
    """The head :func:`train` uses: a fresh one, an imprinted one, or ``head`` checked."""
    if head is None:
        return AAMSoftmax(model.embed_dim, crops.n_speakers, cfg.scale, cfg.margin)
    if isinstance(head, str):
        if head != "imprint":
            raise ConfigError(f"head must be an AAMSoftmax, 'imprint' or None, got {head!r}")
        return imprint_head(model, crops, cfg.scale, cfg.margin)
    expected = (crops.n_speakers, model.embed_dim)
    if tuple(head.weight.shape) != expected:
        raise ConfigError(
            f"the head has {head.weight.shape[0]} speakers x {head.weight.shape[1]} dimensions, "
            f"but this corpus has {expected[0]} speakers and the model embeds in {expected[1]}; "
            "pass head='imprint' to make one for this corpus"
        )
    head.scale = cfg.scale
    return head


STATE_FORMAT = "svlab-train-state-v1"
# settings that may change between an interrupted run and its resumption
RESUMABLE_CHANGES = {"stop_after_steps", "workers", "threads", "device", "out_dir", "eval_every"}


@dataclass
class TrainResult:
    """What :func:`train` returns: the trained model and head, the history, where files went."""

    model: nn.Module
    head: AAMSoftmax
    history: pd.DataFrame
    config: TrainConfig
    run_dir: Path

    @property
    def evaluations(self) -> pd.DataFrame:
        """The history rows with a validation EER."""
        if "eer" not in self.history:
            return self.history.iloc[0:0]
        return self.history.dropna(subset=["eer"])[["step", "epoch", "eer", "min_dcf"]]


def _setup_distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank), joining the process group that torchrun describes."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))
    return 0, 1, 0


def _device(cfg: TrainConfig, local_rank: int) -> torch.device:
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda, got {cfg.device!r}")
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError("device = 'cuda' but no CUDA device is available")
    return torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")


def _restore(path: Path, cfg: TrainConfig, net: nn.Module, optimizer, scaler) -> dict:
    """Load a training state saved by :func:`train` into the objects; return its bookkeeping."""
    state = checkpoint.load(path)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path} is not an svlab training state")
    mine = dataclasses.asdict(cfg)
    changed = sorted(
        k for k, v in state["config"].items() if mine.get(k) != v and k not in RESUMABLE_CHANGES
    )
    if changed:
        key = changed[0]
        raise ValueError(
            f"{path} was written by a run with {key}={state['config'][key]!r}, "
            f"not {mine[key]!r}: resume with the same config (changed: {', '.join(changed)})"
        )
    try:
        net.load_state_dict(state["net"])
    except RuntimeError as err:
        raise ValueError(f"{path}: the saved weights do not fit this model: {err}") from err
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"])
    return state


def train(
    cfg: TrainConfig,
    model: nn.Module | None = None,
    resume: bool = False,
    progress: bool = True,
    head: AAMSoftmax | str | None = None,
) -> TrainResult:
    """Train ``model`` (default: ``build(cfg.model, **cfg.model_args)``) with AAM-softmax.

    ``head`` is the AAM-softmax head to train with: by default a fresh random one (right for
    a new model); to fine-tune a trained encoder pass its trained head (a checkpoint's, see
    :func:`svlab.checkpoint.load_head`, trained on this corpus's speakers) or ``"imprint"``
    (:func:`imprint_head`), since a random head would first pull the encoder off its minimum.
    The head's scale is set to ``cfg.scale``; its margin follows the config's ramp.

    Writes to ``cfg.run_dir()``: ``checkpoint.pt`` (the whole training state, every
    ``checkpoint_every`` steps and at the end, atomically), ``history.csv`` (one row per
    ``log_every`` steps: loss, accuracy, lr, margin; plus validation EER rows),
    ``summary.json`` and, for a registry model that finished, ``model.pt``
    (:func:`svlab.checkpoint.load_model` reads it; the head is kept beside the encoder).
    ``cfg.init_from`` starts from a saved model, svlab's or a wespeaker / SpeechBrain one
    (:func:`svlab.models.pretrained.read_pretrained`; and its head, when it was trained on the
    same speakers; else an imprinted one; crops then come from the model's own front end);
    with ``cfg.quantize_bits`` the model is quantized first (:func:`svlab.quant.quantize_model`),
    trained through its quantizers, and saved packed as ``model.svq``
    (:func:`svlab.quant.load_packed`): quantization-aware fine-tuning from the command line.
    With ``resume`` it continues from ``checkpoint.pt`` and ends with exactly the weights of an
    uninterrupted run. Under ``torchrun`` each process trains on its share of every global
    batch (DDP).

    >>> import tempfile, pathlib
    >>> from svlab.data import synthesize_corpus
    >>> tmp = pathlib.Path(tempfile.mkdtemp())
    >>> root = synthesize_corpus(tmp / "c", n_train_speakers=2, n_test_speakers=2,
    ...     sessions_per_speaker=2, utterances_per_session=1, train_seconds=(0.5, 0.5),
    ...     test_seconds=(0.5, 0.5), workers=1)
    >>> cfg = TrainConfig(model="resnet18", model_args={"base_width": 2, "embed_dim": 8},
    ...     data_root=str(root), epochs=2, batch_size=2, crop_frames=20, log_every=1,
    ...     out_dir=str(tmp / "run"))
    >>> result = train(cfg, progress=False)
    >>> result.history["step"].max(), list(result.evaluations.columns)
    (np.int64(4), ['step', 'epoch', 'eer', 'min_dcf'])
    >>> sorted(p.name for p in result.run_dir.iterdir())
    ['checkpoint.pt', 'history.csv', 'model.pt', 'summary.json']
    """
    rank, world, local_rank = _setup_distributed()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = _device(cfg, local_rank)
    seed_everything(cfg.seed)
    if cfg.data_root:
        root = Path(cfg.data_root)
    else:
        if rank == 0:
            get_profile(cfg.profile).ensure_corpus()
        if world > 1:
            dist.barrier()
        root = get_profile(cfg.profile).data_root
    if cfg.batch_size % world:
        raise ConfigError(f"batch_size {cfg.batch_size} does not split over {world} processes")
    crops = SpeakerCrops.from_corpus(
        root, cfg.crop_frames, cfg.seed, cfg.precompute_features, cfg.dither
    )
    steps_per_epoch = crops.batches_per_epoch(cfg.batch_size)
    if steps_per_epoch == 0:
        raise ConfigError(f"batch_size {cfg.batch_size} exceeds the {len(crops.paths)} utterances")
    total = steps_per_epoch * cfg.epochs
    stop = min(total, cfg.stop_after_steps) if cfg.stop_after_steps else total

    built_here = model is None
    if not built_here and (cfg.init_from or cfg.quantize_bits):
        raise ConfigError("init_from and quantize_bits apply to the model train builds; "
                          "a model was given: load or quantize it yourself")  # fmt: skip
    name, overrides = cfg.model, cfg.model_args
    if built_here:
        model, head, name, overrides = _initial_model(cfg, head, crops)
    front_end = front_end_of(model)
    if front_end != crops.front_end:  # e.g. a SpeechBrain model: crops of its own features
        crops = SpeakerCrops.from_corpus(
            root, cfg.crop_frames, cfg.seed, cfg.precompute_features, cfg.dither, front_end
        )
    head = _training_head(head, model, crops, cfg)
    net = SpeakerClassifier(model, head).to(device)
    if world > 1 and cfg.sync_batchnorm:  # before the optimizer: the swap makes new parameters
        if device.type == "cuda":
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        else:
            _use_global_batchnorm(net, on=True)
    optimizer = make_optimizer(
        net.parameters(),
        cfg.optimizer,
        cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
        weight_decay=cfg.weight_decay,
        betas=tuple(cfg.betas),
        backend=cfg.optimizer_backend,
    )
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp and device.type == "cuda")

    run_dir = cfg.run_dir()
    state_path = run_dir / "checkpoint.pt"
    step, rows, meter, elapsed = 0, [], [0.0, 0.0, 0.0], 0.0
    if resume:
        state = _restore(state_path, cfg, net, optimizer, scaler)
        step, rows, meter, elapsed = (
            state["step"],
            state["history"],
            state["meter"],
            state["elapsed"],
        )

    ddp = net
    if world > 1:
        ddp = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )
    eval_set = None
    bar = tqdm(total=total, initial=step, disable=not progress or rank != 0, desc=cfg.name)
    started = time.perf_counter() - elapsed
    net.train()
    while step < stop:
        epoch, first = divmod(step, steps_per_epoch)
        batches = _EpochBatches(crops, epoch, first, cfg.batch_size, rank, world)
        loader = torch.utils.data.DataLoader(batches, batch_size=None, num_workers=cfg.workers)
        for feats, labels in loader:
            lr = learning_rate(cfg, step, total, steps_per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            head.margin = margin_ramp(
                step / steps_per_epoch, cfg.margin, cfg.margin_start_epoch, cfg.margin_end_epoch
            )
            with torch.autocast(device.type, torch.float16, enabled=scaler.is_enabled()):
                loss, correct = ddp(feats.to(device), labels.to(device))
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"loss became {loss.item()} at step {step + 1} (epoch {epoch + 1}) of "
                    f"{cfg.name!r}; the last checkpoint, if any, is {state_path}"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            step += 1
            bar.update(1)
            meter = [
                meter[0] + loss.item() * len(labels),
                meter[1] + correct.item(),
                meter[2] + len(labels),
            ]
            if step % cfg.log_every == 0 or step == total:
                sums = torch.tensor(meter, dtype=torch.float64)
                if world > 1:
                    dist.all_reduce(sums)
                rows.append(
                    {
                        "step": step,
                        "epoch": step / steps_per_epoch,
                        "lr": lr,
                        "margin": head.margin,
                        "loss": float(sums[0] / sums[2]),
                        "accuracy": float(sums[1] / sums[2]),
                        "seconds": time.perf_counter() - started,
                    }
                )
                bar.set_postfix(loss=f"{rows[-1]['loss']:.3f}")
                meter = [0.0, 0.0, 0.0]
            epoch_done = step % steps_per_epoch == 0
            if epoch_done and (
                step == total
                or (cfg.eval_every and (step // steps_per_epoch) % cfg.eval_every == 0)
            ):
                if rank == 0:
                    eval_set = eval_set or EvalSet.from_corpus(
                        root, cfg.eval_trials, max_seconds=cfg.eval_seconds or None
                    )
                    scores = eval_set.score(model)
                    rows.append(
                        {
                            "step": step,
                            "epoch": step / steps_per_epoch,
                            "eer": scores["eer"],
                            "min_dcf": scores["min_dcf"],
                        }
                    )
                    bar.set_postfix(
                        loss=f"{rows[-2]['loss']:.3f}" if len(rows) > 1 else "",
                        eer=f"{scores['eer']:.3f}",
                    )
                    net.train()
                if world > 1:
                    dist.barrier()
            if step % cfg.checkpoint_every == 0 or step == stop:
                if rank == 0:
                    checkpoint.save(
                        state_path,
                        {
                            "format": STATE_FORMAT,
                            "step": step,
                            "config": dataclasses.asdict(cfg),
                            "net": net.state_dict(),
                            "optimizer": optimizer.state_dict(),
                            "scaler": scaler.state_dict(),
                            "rng": torch.get_rng_state(),
                            "history": rows,
                            "meter": meter,
                            "elapsed": time.perf_counter() - started,
                        },
                    )
            if step >= stop:
                break
    bar.close()
    if world > 1 and cfg.sync_batchnorm and device.type == "cpu":
        _use_global_batchnorm(net, on=False)
    history = pd.DataFrame(rows)
    if rank == 0:
        history.to_csv(run_dir / "history.csv", index=False)
        final = {
            k: float(history[k].dropna().iloc[-1])
            for k in ("loss", "eer", "min_dcf")
            if k in history and history[k].notna().any()
        }
        summary = {
            "config": dataclasses.asdict(cfg),
            "steps": step,
            "total_steps": total,
            "seconds": time.perf_counter() - started,
            **final,
        }
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        if built_here and step == total and cfg.quantize_bits:
            from svlab.quant import save_packed

            save_packed(model, run_dir / "model.svq", name=name, overrides=overrides)
        elif built_here and step == total:
            checkpoint.save_model(run_dir / "model.pt", model, name, overrides, head=head, **final)
    return TrainResult(model, head, history, cfg, run_dir)


# ----------------------------------------------------------------------------- command line


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", required=True, help="a TOML recipe, e.g. configs/tutorial_resnet.toml"
    )
    parser.add_argument(
        "--profile", default=None, help="ci, laptop or gpu (default: $SVLAB_PROFILE or ci)"
    )
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value (TOML syntax), e.g. --set lr=0.01",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from the run's checkpoint.pt"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _run(args: argparse.Namespace) -> int:
    cfg = TrainConfig.from_toml(args.config, args.profile, args.sets)
    result = train(cfg, resume=args.resume, progress=not args.quiet)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"wrote {result.run_dir}")
        if not result.evaluations.empty:
            last = result.evaluations.iloc[-1]
            print(f"EER {100 * last['eer']:.2f}%  minDCF {last['min_dcf']:.3f}")
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``svlab train``.

    >>> parser = argparse.ArgumentParser(); register_cli(parser.add_subparsers())
    >>> parser.parse_args(["train", "--config", "x.toml", "--set", "lr=1"]).sets
    ['lr=1']
    """
    parser = subparsers.add_parser(
        "train", help="train a speaker-embedding model from a TOML recipe"
    )
    _add_arguments(parser)
    parser.set_defaults(func=_run)


def main(argv: list[str] | None = None) -> int:
    """``python -m svlab.train`` (what ``torchrun`` runs), with the options of ``svlab train``."""
    parser = argparse.ArgumentParser(prog="python -m svlab.train", description=__doc__)
    _add_arguments(parser)
    return _run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
