"""Fine-tuning a quantized model through its quantizers with ``svlab.train.train``."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from torch import nn

from svlab.quant.quantize import quantizers

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
    from svlab.train import train

    train(cfg, model=model, progress=progress, head=starting_head(head))
    return model.eval()
