"""Fine-tuning a quantized model through its quantizers with ``svlab.train.train``.

This module builds on ``svlab.train`` (the loop) and so is not imported by ``svlab.quant``'s
``__init__``: import it as ``svlab.quant.finetune``.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from svlab.data import SpeakerCrops
from svlab.profiles import get_profile
from svlab.quant.quantize import quantizers
from svlab.train import TrainConfig, train

FINETUNE_LR_SCALE = (0.1, 0.01)  # start / final learning rate, as fractions of the recipe's lr
FINETUNE_DEFAULTS = {
    "warmup_epochs": 0.5,
    "margin_start_epoch": 0.0,  # the model was trained already: full AAM margin from the start
    "margin_end_epoch": 0.0,
    "eval_every": 0,
}


def finetune_config(cfg: Any, epochs: float = 2, **overrides: Any) -> Any:
    """``cfg`` (a ``svlab.train.TrainConfig``) turned into a short fine-tuning run.

    The learning rate decays from a tenth of the recipe's ``lr`` to a hundredth
    (``FINETUNE_LR_SCALE``: relative, so SGD and Adam recipes both get a gentle rate), the AAM
    margin is at its full value from the first step; ``overrides`` replace any field.

    >>> from svlab.train import TrainConfig
    >>> ft = finetune_config(TrainConfig(epochs=150, lr=0.1), epochs=3, name="ft")
    >>> ft.epochs, round(ft.lr, 6), round(ft.final_lr, 6), ft.margin_end_epoch, ft.name
    (3, 0.01, 0.001, 0.0, 'ft')
    >>> round(finetune_config(TrainConfig(optimizer="adam", lr=0.003)).lr, 6)
    0.0003
    """
    start, final = FINETUNE_LR_SCALE
    rates = {"lr": cfg.lr * start, "final_lr": cfg.lr * final}
    return dataclasses.replace(cfg, **{**FINETUNE_DEFAULTS, **rates, "epochs": epochs, **overrides})


def starting_head(head: nn.Module | None) -> nn.Module | str:
    """The ``head`` argument of ``svlab.train.train`` for fine-tuning: a copy of the model's
    trained head (which stays unchanged), or ``"imprint"`` when there is none.

    >>> starting_head(None)
    'imprint'
    """
    return copy.deepcopy(head) if head is not None else "imprint"


def finetune(
    model: nn.Module, cfg: Any, head: nn.Module | None = None, progress: bool = False
) -> nn.Module:
    """Train the quantized ``model`` in place with ``svlab.train.train(cfg, model=model)``.

    The forward pass uses the quantized weights; gradients reach the latent weights through the
    straight-through estimator (moving weights between levels) and, where they are trainable
    (k-means by default), the codebook entries. Uniform grids stay as fitted. ``head`` is the
    AAM-softmax head the full-precision model was trained with
    (:func:`svlab.checkpoint.load_head`); without one, a head is imprinted from the quantized
    model's own embeddings of the training speakers. A random head would not do: its loss
    gradients first move the encoder towards arbitrary speaker centres, and a short run ends
    worse than it began. The head is copied, never changed. Returns ``model``, in eval mode.

    >>> finetune(nn.Linear(2, 2), None)
    Traceback (most recent call last):
    ...
    ValueError: finetune needs a quantized model (see svlab.quant.quantize_model)
    """
    found = quantizers(model)
    if not found:
        raise ValueError("finetune needs a quantized model (see svlab.quant.quantize_model)")
    train(cfg, model=model, progress=progress, head=starting_head(head))
    return model.eval()


def fine_tuner(
    profile: str = "ci",
    *,
    data_root: str | os.PathLike = "",
    optimizer: str = "adam",
    lr: float = 3e-4,
    batch_size: int = 32,
    crop_frames: int = 200,
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
    head: nn.Module | None = None,
) -> Callable[[int, nn.Module], nn.Module]:
    """A trainer for :func:`svlab.quant.msft.msft`: ``trainer(steps, model)`` fine-tunes
    ``model`` in place.

    Each call is one ``svlab.train.train`` run of ``steps`` steps, set up by
    :func:`finetune_config` (full margin, no validation) without warm-up
    and with the learning rate decaying from ``lr`` towards ``lr / 10``. The defaults, Adam at
    3e-4, are a tenth of the tutorial recipes' rate: a trained model is near a minimum, and
    a larger step (SGD at 0.01 takes the tutorial ECAPA from 17.6% to 44% EER in 60 steps)
    throws away more than the run can win back. Each call writes its files under ``out_dir``
    (default: a temporary directory) and starts its AAM-softmax head
    afresh: a copy of ``head`` (the full-precision model's trained head, from
    :func:`svlab.checkpoint.load_head`) or, without one, a head imprinted from the model as it
    is at that call; a random head would undo what the short run is meant to recover. Pass the
    number of steps per stage as ``msft``'s ``train_cfg``. Returns the model in eval mode.

    >>> fine_tuner(data_root="/no/corpus")
    Traceback (most recent call last):
    ...
    svlab.data.voxceleb.CorpusError: list file /no/corpus/train.txt does not exist
    """
    root = Path(data_root) if data_root else get_profile(profile).ensure_corpus()
    steps_per_epoch = SpeakerCrops.from_corpus(root, crop_frames, seed).batches_per_epoch(
        batch_size
    )
    folder = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="svlab-finetune-"))
    runs = [0]

    def trainer(steps: int, model: nn.Module) -> nn.Module:
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"fine-tuning needs a positive whole number of steps, got {steps!r}")
        runs[0] += 1
        base = TrainConfig(
            name=f"finetune{runs[0]}",
            profile=profile,
            data_root=str(root),
            crop_frames=crop_frames,
            batch_size=batch_size,
            optimizer=optimizer,
            seed=seed,
            out_dir=str(folder / f"run{runs[0]}"),
        )
        cfg = finetune_config(
            base,
            epochs=steps // steps_per_epoch + 1,  # the run stops before its last step
            stop_after_steps=steps,
            lr=lr,
            final_lr=lr / 10,
            warmup_epochs=0,
            checkpoint_every=10**9,
        )
        train(cfg, model=model, progress=False, head=starting_head(head))
        return model.eval()

    return trainer
