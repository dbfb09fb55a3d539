"""Distributed training under ``torchrun``: process group, device, BatchNorm over all ranks."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn

from svlab.train.config import ConfigError, TrainConfig


def setup_distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank), joining the process group that torchrun describes.

    >>> setup_distributed()  # not under torchrun
    (0, 1, 0)
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))
    return 0, 1, 0


def pick_device(cfg: TrainConfig, local_rank: int = 0) -> torch.device:
    """The device ``cfg.device`` asks for (``auto``: this process's GPU if there is one).

    >>> pick_device(TrainConfig(device="cpu"))
    device(type='cpu')
    >>> pick_device(TrainConfig(device="tpu"))
    Traceback (most recent call last):
    ...
    svlab.train.config.ConfigError: device must be auto, cpu or cuda, got 'tpu'
    """
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda, got {cfg.device!r}")
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError("device = 'cuda' but no CUDA device is available")
    return torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")


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


def use_global_batchnorm(module: nn.Module, on: bool) -> nn.Module:
    """Swap every BatchNorm1d/2d for a :class:`GlobalBatchNorm` (``on``) or back, in place.

    >>> net = use_global_batchnorm(nn.Sequential(nn.BatchNorm1d(3)), on=True)
    >>> type(net[0]).__name__, type(use_global_batchnorm(net, on=False)[0]).__name__
    ('GlobalBatchNorm', 'BatchNorm1d')
    """
    for name, child in module.named_children():
        if on and isinstance(child, (nn.BatchNorm1d, nn.BatchNorm2d)):
            swapped = GlobalBatchNorm(child.num_features, child.eps, child.momentum, child.affine)
            swapped.plain_kind = type(child)
        elif not on and isinstance(child, GlobalBatchNorm):
            swapped = child.plain_kind(child.num_features, child.eps, child.momentum, child.affine)
        else:
            use_global_batchnorm(child, on)
            continue
        swapped.load_state_dict(child.state_dict())
        setattr(module, name, swapped.to(child.running_mean.device))
    return module


def sync_batchnorm(net: nn.Module, device: torch.device) -> nn.Module:
    """``net`` with BatchNorm over the global batch: SyncBatchNorm on CUDA, else
    :class:`GlobalBatchNorm`. Call it before making the optimizer: the swap makes new
    parameters.

    >>> type(sync_batchnorm(nn.Sequential(nn.BatchNorm2d(2)), torch.device("cpu"))[0]).__name__
    'GlobalBatchNorm'
    """
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(net)
    return use_global_batchnorm(net, on=True)
