"""Fine-tuning a quantized model through its quantizers with ``svlab.train.train``."""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from svlab.quant.quantize import quantizers

FINETUNE_DEFAULTS = {
    "lr": 0.01,
    "final_lr": 0.001,
    "warmup_epochs": 0.5,
    "margin_start_epoch": 0.0,  # the model was trained already: full AAM margin from the start
    "margin_end_epoch": 0.0,
    "eval_every": 0,
}


def finetune_config(cfg: Any, epochs: float = 2, **overrides: Any) -> Any:
    """``cfg`` (a ``svlab.train.TrainConfig``) turned into a short fine-tuning run.

    The learning rate starts low (``FINETUNE_DEFAULTS``), the AAM margin is at its full value
    from the first step; ``overrides`` replace any field.

    >>> from svlab.train import TrainConfig
    >>> ft = finetune_config(TrainConfig(epochs=150, lr=0.1), epochs=3, name="ft")
    >>> ft.epochs, ft.lr, ft.margin_end_epoch, ft.name
    (3, 0.01, 0.0, 'ft')
    """
    return dataclasses.replace(cfg, **{**FINETUNE_DEFAULTS, "epochs": epochs, **overrides})


def finetune(model: nn.Module, cfg: Any, progress: bool = False) -> nn.Module:
    """Train the quantized ``model`` in place with ``svlab.train.train(cfg, model=model)``.

    The forward pass uses the quantized weights; gradients reach the latent weights through the
    straight-through estimator (moving weights between levels) and, where they are trainable
    (k-means by default), the codebook entries. Uniform grids stay as fitted. Returns
    ``model``, in eval mode.

    >>> finetune(nn.Linear(2, 2), None)
    Traceback (most recent call last):
    ...
    ValueError: finetune needs a quantized model (see svlab.quant.quantize_model)
    """
    found = quantizers(model)
    if not found:
        raise ValueError("finetune needs a quantized model (see svlab.quant.quantize_model)")
    from svlab.train import train

    train(cfg, model=model, progress=progress)
    return model.eval()
