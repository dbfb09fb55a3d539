"""The learning-rate schedule of a run: linear warm-up, exponential decay (margin: losses)."""

from __future__ import annotations

from svlab.train.config import TrainConfig


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
