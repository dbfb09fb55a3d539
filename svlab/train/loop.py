"""``train()``: the AAM-softmax training loop, in named steps, resumable and DDP-ready."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from svlab import checkpoint
from svlab.data import SpeakerCrops, read_trials
from svlab.evaluate import EvalSet
from svlab.features import front_end_of
from svlab.losses import AAMSoftmax, margin_ramp
from svlab.models import build
from svlab.optim import make_optimizer
from svlab.profiles import get_profile, seed_everything
from svlab.train.config import ConfigError, TrainConfig
from svlab.train.crops import training_crops
from svlab.train.distributed import (
    pick_device,
    setup_distributed,
    sync_batchnorm,
    use_global_batchnorm,
)
from svlab.train.heads import SpeakerClassifier, pretrained_head, training_head
from svlab.train.schedule import learning_rate
from svlab.train.state import TrainingInterrupted, hold_ctrl_c, restore_state, save_state

Prepare = Callable[[nn.Module], nn.Module]
ModelWriter = Callable[[Path, nn.Module, str, dict], None]


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN); the message names the step."""


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


class EpochBatches(torch.utils.data.Dataset):
    """The batches of one epoch from ``first`` on, for a DataLoader (a worker makes a batch).

    >>> from svlab.data.dataset import _example_crops
    >>> batches = EpochBatches(_example_crops(), epoch=0, first=0, batch_size=2, rank=0, world=1)
    >>> len(batches), batches[0][0].shape
    (1, torch.Size([2, 5, 80]))
    """

    def __init__(
        self, crops: SpeakerCrops, epoch: int, first: int, batch_size: int, rank: int, world: int
    ) -> None:
        self.crops, self.epoch, self.first = crops, epoch, first
        self.batch_size, self.rank, self.world = batch_size, rank, world

    def __len__(self) -> int:
        return self.crops.batches_per_epoch(self.batch_size) - self.first

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.crops.batch(self.epoch, self.first + i, self.batch_size, self.rank, self.world)


@dataclass
class _Run:
    """One run's objects and its progress; what the steps of :func:`train` share."""

    cfg: TrainConfig
    root: Path
    crops: SpeakerCrops
    model: nn.Module
    head: AAMSoftmax
    net: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    device: torch.device
    rank: int
    world: int
    steps_per_epoch: int
    total: int
    stop: int
    step: int = 0
    rows: list[dict] = field(default_factory=list)
    meter: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    started: float = 0.0
    eval_set: EvalSet | None = None

    @property
    def state_path(self) -> Path:
        return self.cfg.run_dir() / "checkpoint.pt"


def _corpus_root(cfg: TrainConfig, rank: int, world: int) -> Path:
    """``cfg.data_root``, or the profile's corpus (made by rank 0 if it is missing)."""
    if cfg.data_root:
        return Path(cfg.data_root)
    if rank == 0:
        get_profile(cfg.profile).ensure_corpus()
    if world > 1:
        dist.barrier()
    return get_profile(cfg.profile).data_root


def _step_counts(cfg: TrainConfig, crops: SpeakerCrops, world: int) -> tuple[int, int, int]:
    """Steps per epoch, steps of the whole run, and the step this call stops at."""
    if cfg.batch_size % world:
        raise ConfigError(f"batch_size {cfg.batch_size} does not split over {world} processes")
    steps_per_epoch = crops.batches_per_epoch(cfg.batch_size)
    if steps_per_epoch == 0:
        raise ConfigError(f"batch_size {cfg.batch_size} exceeds the {len(crops.paths)} utterances")
    total = steps_per_epoch * cfg.epochs
    return steps_per_epoch, total, min(total, cfg.stop_after_steps or total)


def _starting_model(
    cfg: TrainConfig, head: AAMSoftmax | str | None, crops: SpeakerCrops, prepare: Prepare | None
) -> tuple[nn.Module, AAMSoftmax | str | None, str, dict]:
    """The model :func:`train` builds: new, or ``cfg.init_from``'s, then ``prepare``'d, with
    the head to start from, the registry name and the overrides to save it under."""
    name, overrides = cfg.model, dict(cfg.model_args)
    if not cfg.init_from:
        model = build(name, **overrides)
    else:  # an svlab checkpoint, or a wespeaker / SpeechBrain one (wespeaker's head comes along)
        from svlab.models.pretrained import read_pretrained

        model, trained, name, overrides, _ = read_pretrained(cfg.init_from)
        if head is None:  # its own head if it was trained on these speakers, else imprint one
            head = pretrained_head(trained, crops)
    if prepare is not None:
        model = prepare(model)
    return model, head, name, overrides


def _check_hooks(cfg: TrainConfig, given: bool, prepare: Prepare | None) -> None:
    if given and (cfg.init_from or cfg.quantize_bits or prepare):
        raise ConfigError("init_from, quantize_bits and prepare apply to the model train builds; "
                          "a model was given: load or quantize it yourself")  # fmt: skip
    if cfg.quantize_bits and prepare is None:
        raise ConfigError(
            f"quantize_bits = {cfg.quantize_bits} needs the quantizer: train() does not import "
            "svlab.quant; run `svlab train` or svlab.train.train_recipe(cfg), which pass it in"
        )


def _make_optimizer(cfg: TrainConfig, net: nn.Module) -> torch.optim.Optimizer:
    return make_optimizer(
        net.parameters(),
        cfg.optimizer,
        cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
        weight_decay=cfg.weight_decay,
        betas=tuple(cfg.betas),
        backend=cfg.optimizer_backend,
    )


def _gradients(
    run: _Run, ddp: nn.Module, feats: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The forward and backward pass of step ``run.step + 1`` at its learning rate and margin:
    ``(loss, correct, lr)``. Nothing the training state holds changes yet."""
    cfg, spe = run.cfg, run.steps_per_epoch
    lr = learning_rate(cfg, run.step, run.total, spe)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    run.head.margin = margin_ramp(
        run.step / spe, cfg.margin, cfg.margin_start_epoch, cfg.margin_end_epoch
    )
    with torch.autocast(run.device.type, torch.float16, enabled=run.scaler.is_enabled()):
        loss, correct = ddp(feats.to(run.device), labels.to(run.device))
    if not torch.isfinite(loss):
        raise TrainingError(
            f"loss became {loss.item()} at step {run.step + 1} (epoch {run.step // spe + 1}) of "
            f"{cfg.name!r}; the last checkpoint, if any, is {run.state_path}"
        )
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    return loss, correct, lr


def _update(run: _Run, loss: torch.Tensor, correct: torch.Tensor, batch: int) -> None:
    """The optimizer step that ends step ``run.step + 1``, and its count in the meter."""
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.step += 1
    run.meter = [
        run.meter[0] + loss.item() * batch,
        run.meter[1] + correct.item(),
        run.meter[2] + batch,
    ]


def _log(run: _Run, lr: float, bar: tqdm) -> None:
    """A history row of the loss and accuracy since the last row, summed over processes."""
    sums = torch.tensor(run.meter, dtype=torch.float64)
    if run.world > 1:
        dist.all_reduce(sums)
    run.rows.append(
        {
            "step": run.step,
            "epoch": run.step / run.steps_per_epoch,
            "lr": lr,
            "margin": run.head.margin,
            "loss": float(sums[0] / sums[2]),
            "accuracy": float(sums[1] / sums[2]),
            "seconds": time.perf_counter() - run.started,
        }
    )
    bar.set_postfix(loss=f"{run.rows[-1]['loss']:.3f}")
    run.meter = [0.0, 0.0, 0.0]


def _evaluate(run: _Run, bar: tqdm) -> None:
    """A history row with the validation EER and minDCF (rank 0 scores, the others wait)."""
    if run.rank == 0:
        cfg = run.cfg
        run.eval_set = run.eval_set or EvalSet.from_corpus(
            run.root, cfg.eval_trials, max_seconds=cfg.eval_seconds or None
        )
        scores = run.eval_set.score(run.model)
        run.rows.append(
            {
                "step": run.step,
                "epoch": run.step / run.steps_per_epoch,
                "eer": scores["eer"],
                "min_dcf": scores["min_dcf"],
            }
        )
        loss = f"{run.rows[-2]['loss']:.3f}" if len(run.rows) > 1 else ""
        bar.set_postfix(loss=loss, eer=f"{scores['eer']:.3f}")
        run.net.train()
    if run.world > 1:
        dist.barrier()


def _due_for_evaluation(run: _Run) -> bool:
    """Whether ``run.step`` is scored and has no score yet (a run interrupted while scoring)."""
    epoch, rest = divmod(run.step, run.steps_per_epoch)
    every = run.cfg.eval_every
    due = run.step and rest == 0 and (run.step == run.total or (every and epoch % every == 0))
    return bool(due) and not any("eer" in r and r["step"] == run.step for r in run.rows)


def _save(run: _Run) -> None:
    if run.rank == 0:
        save_state(
            run.state_path, run.cfg, run.net, run.optimizer, run.scaler,
            step=run.step, history=run.rows, meter=run.meter,
            elapsed=time.perf_counter() - run.started,
        )  # fmt: skip


def _loop(run: _Run, progress: bool) -> None:
    """Train from ``run.step`` to ``run.stop``: log, evaluate and checkpoint as configured.

    Ctrl-C saves the state of the last whole step and raises :class:`TrainingInterrupted`: it
    stops a forward or backward pass or a scoring at once (a resumed run scores again), and is
    held back while the optimizer steps and the step is logged.
    """
    cfg = run.cfg
    ddp = run.net
    if run.world > 1:
        device_ids = [run.device.index] if run.device.type == "cuda" else None
        ddp = nn.parallel.DistributedDataParallel(run.net, device_ids=device_ids)
    bar = tqdm(
        total=run.total, initial=run.step, disable=not progress or run.rank != 0, desc=cfg.name
    )
    run.net.train()
    try:
        if _due_for_evaluation(run):
            _evaluate(run, bar)
        while run.step < run.stop:
            epoch, first = divmod(run.step, run.steps_per_epoch)
            batches = EpochBatches(run.crops, epoch, first, cfg.batch_size, run.rank, run.world)
            loader = torch.utils.data.DataLoader(batches, batch_size=None, num_workers=cfg.workers)
            for feats, labels in loader:
                loss, correct, lr = _gradients(run, ddp, feats, labels)
                with hold_ctrl_c():
                    _update(run, loss, correct, len(labels))
                    bar.update(1)
                    if run.step % cfg.log_every == 0 or run.step == run.total:
                        _log(run, lr, bar)
                if _due_for_evaluation(run):
                    _evaluate(run, bar)
                if run.step % cfg.checkpoint_every == 0 or run.step == run.stop:
                    _save(run)
                if run.step >= run.stop:
                    break
    except KeyboardInterrupt as interrupt:
        _save(run)
        raise TrainingInterrupted(run.step, run.total, run.state_path) from interrupt
    finally:
        bar.close()


def _finish(
    run: _Run, built: tuple[str, dict] | None, write_model: ModelWriter | None
) -> pd.DataFrame:
    """Write ``history.csv``, ``summary.json`` and, for a finished built model, the model."""
    history = pd.DataFrame(run.rows)
    if run.rank != 0:
        return history
    run_dir = run.cfg.run_dir()
    history.to_csv(run_dir / "history.csv", index=False)
    final = {
        k: float(history[k].dropna().iloc[-1])
        for k in ("loss", "eer", "min_dcf")
        if k in history and history[k].notna().any()
    }
    summary = {
        "config": dataclasses.asdict(run.cfg),
        "steps": run.step,
        "total_steps": run.total,
        "seconds": time.perf_counter() - run.started,
        **final,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    if built is not None and run.step == run.total:
        if write_model is None:  # svlab's own format: the head and the scores come along
            checkpoint.save_model(run_dir / "model.pt", run.model, *built, head=run.head, **final)
        else:
            write_model(run_dir, run.model, *built)
    return history


def train(
    cfg: TrainConfig,
    model: nn.Module | None = None,
    resume: bool = False,
    progress: bool = True,
    head: AAMSoftmax | str | None = None,
    prepare: Prepare | None = None,
    write_model: ModelWriter | None = None,
    report: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train ``model`` (default: ``build(cfg.model, **cfg.model_args)``) with AAM-softmax.

    ``head`` is the AAM-softmax head to train with: by default a fresh random one (right for
    a new model); to fine-tune a trained encoder pass its trained head (a checkpoint's, see
    :func:`svlab.checkpoint.load_head`, trained on this corpus's speakers) or ``"imprint"``
    (:func:`svlab.train.heads.imprint_head`), since a random head would first pull the encoder
    off its minimum. The head's scale is set to ``cfg.scale``; its margin follows the ramp.

    Writes to ``cfg.run_dir()``: ``checkpoint.pt`` (the whole training state, every
    ``checkpoint_every`` steps and at the end, atomically), ``history.csv`` (one row per
    ``log_every`` steps: loss, accuracy, lr, margin; plus validation EER rows),
    ``summary.json`` and, for a registry model that finished, ``model.pt``
    (:func:`svlab.checkpoint.load_model` reads it; the head is kept beside the encoder).
    ``cfg.init_from`` starts from a saved model, svlab's or a wespeaker / SpeechBrain one
    (:func:`svlab.models.pretrained.read_pretrained`; and its head, when it was trained on the
    same speakers, :func:`svlab.train.heads.pretrained_head`; else an imprinted one; crops then
    come from the model's own front end). ``cfg.augment`` augments the crops
    (:func:`svlab.train.crops.training_crops`).

    Two hooks let other packages build on the loop without it importing them:
    ``prepare(model) -> model`` changes the model train builds before its head and optimizer
    are made (and before a resumed state is loaded), and ``write_model(run_dir, model, name,
    overrides)`` writes the finished model instead of ``model.pt``. Quantization-aware
    fine-tuning (``cfg.quantize_bits``) is these two from ``svlab.quant``:
    :func:`svlab.train.train_recipe` (what ``svlab train`` runs) passes them.
    With ``resume`` it continues from ``checkpoint.pt`` and ends with exactly the weights of an
    uninterrupted run; ``report(message)``, if given, is told where it resumes. Ctrl-C saves
    ``checkpoint.pt`` at the last whole step and raises :class:`TrainingInterrupted` (a
    ``KeyboardInterrupt``) naming it. A validation trial list that names a missing file fails
    before training starts. Under ``torchrun`` each process trains on its share of every global
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
    _check_hooks(cfg, model is not None, prepare)
    rank, world, local_rank = setup_distributed()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg, local_rank)
    seed_everything(cfg.seed)
    root = _corpus_root(cfg, rank, world)
    trials = Path(cfg.eval_trials)  # a validation file that is not there fails now, not later
    read_trials(trials if trials.is_file() else root / "trials" / trials, wav_root=root)
    crops = training_crops(cfg, root)
    steps_per_epoch, total, stop = _step_counts(cfg, crops, world)
    built = None
    if model is None:
        model, head, name, overrides = _starting_model(cfg, head, crops, prepare)
        built = (name, overrides)
    front_end = front_end_of(model)
    if front_end != crops.front_end:  # e.g. a SpeechBrain model: crops of its own features
        crops = training_crops(cfg, root, front_end)
    head = training_head(head, model, crops, cfg)
    net = SpeakerClassifier(model, head).to(device)
    if world > 1 and cfg.sync_batchnorm:
        net = sync_batchnorm(net, device)
    optimizer = _make_optimizer(cfg, net)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp and device.type == "cuda")
    run = _Run(cfg, root, crops, model, head, net, optimizer, scaler, device, rank, world,
               steps_per_epoch, total, stop)  # fmt: skip
    elapsed = 0.0
    if resume:
        state = restore_state(run.state_path, cfg, net, optimizer, scaler)
        run.step, run.rows, run.meter, elapsed = (
            state["step"], state["history"], state["meter"], state["elapsed"]
        )  # fmt: skip
        if report is not None and rank == 0:
            report(f"resuming {cfg.run_dir().resolve()} from step {run.step} of {total} "
                   f"({run.state_path.name})")  # fmt: skip
    run.started = time.perf_counter() - elapsed
    _loop(run, progress)
    if world > 1 and cfg.sync_batchnorm and device.type == "cpu":
        use_global_batchnorm(net, on=False)
    history = _finish(run, built, write_model)
    return TrainResult(model, head, history, cfg, cfg.run_dir())
