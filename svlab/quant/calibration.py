"""Calibration without labels: unlabelled feature batches, checked, and what a calibration pass
measures (each layer's input statistics, the embedding's Fisher diagonal) for
:func:`svlab.quant.compress.compress`."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from svlab.data.audio import load_audio
from svlab.data.voxceleb import read_train_list, wav_dir
from svlab.features import featurize
from svlab.quant.quantize import latent_weight

LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)


class CalibrationError(ValueError):
    """Calibration input that cannot calibrate the model (names what is wrong)."""


def calibration_batches(
    root: str | os.PathLike, front_end: str = "kaldi", utterances: int = 64,
    seconds: float = 2.0, batch_size: int = 16, seed: int = 0,
) -> list[torch.Tensor]:  # fmt: skip
    """Unlabelled calibration batches: ``utterances`` files drawn (with ``seed``) from the train
    list ``root/train.txt``, a random ``seconds``-long crop of each (whole if shorter, then
    the batch is cut to its shortest), featurized by ``front_end``; speakers are never read.

    >>> calibration_batches("/no/corpus")
    Traceback (most recent call last):
    ...
    svlab.data.voxceleb.CorpusError: corpus root /no/corpus does not exist
    """
    listing = read_train_list(Path(root) / "train.txt", root)
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(listing), generator=generator)[:utterances].tolist()
    samples = int(seconds * 16000)
    crops = []
    for i in chosen:
        wave = load_audio(wav_dir(root) / listing[i].path)
        start = int(torch.randint(max(wave.numel() - samples, 0) + 1, (1,), generator=generator))
        crops.append(featurize(wave[start : start + samples], front_end)[0])
    batches = []
    for first in range(0, len(crops), batch_size):
        group = crops[first : first + batch_size]
        frames = min(c.shape[0] for c in group)
        batches.append(torch.stack([c[:frames] for c in group]))
    return batches


def check_calibration(model: nn.Module, calibration: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """The calibration batches as a list, each checked: a float tensor ``[batch, frames, bins]``
    that the model accepts, finite, with the same number of bins in every batch.

    >>> from svlab.models import build
    >>> net = build("resnet18", base_width=2, embed_dim=4)
    >>> len(check_calibration(net, [torch.randn(2, 50, 80)]))
    1
    >>> check_calibration(net, [torch.randn(2, 50)])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    svlab.quant.calibration.CalibrationError: calibration batch 0 has shape [2, 50], not ...
    """
    if isinstance(calibration, torch.Tensor):
        calibration = [calibration]
    batches = list(calibration)
    if not batches:
        raise CalibrationError("the calibration set is empty: give at least one feature batch")
    for i, batch in enumerate(batches):
        if not isinstance(batch, torch.Tensor) or not batch.is_floating_point():
            raise CalibrationError(f"calibration batch {i} is a {type(batch).__name__}, "
                                   "not a float tensor of features")  # fmt: skip
        if batch.dim() != 3:
            raise CalibrationError(f"calibration batch {i} has shape {list(batch.shape)}, "
                                   "not [batch, frames, bins]")  # fmt: skip
        if batch.shape[-1] != batches[0].shape[-1]:
            raise CalibrationError(f"calibration batch {i} has {batch.shape[-1]} bins, batch 0 "
                                   f"has {batches[0].shape[-1]}")  # fmt: skip
        if not bool(torch.isfinite(batch).all()):
            raise CalibrationError(f"calibration batch {i} holds NaN or infinite values")
    try:
        with torch.no_grad():
            model.eval()(batches[0][:1])
    except RuntimeError as err:
        raise CalibrationError(
            f"the model does not accept calibration batch 0 ({list(batches[0].shape)}): {err}"
        ) from err
    return batches


# ----------------------------------------------------------------------------- statistics


def columns_of(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as the columns its weight (flattened to ``[out, -1]``) multiplies:
    ``[positions, in_features * kernel]``.

    >>> conv = nn.Conv1d(2, 3, 3, padding=1)
    >>> columns_of(conv, torch.zeros(4, 2, 10)).shape  # 4 utterances x 10 frames, 2 x 3 taps
    torch.Size([40, 6])
    """
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if isinstance(module, nn.Conv1d):
        x = x.unsqueeze(2)
        kernel, dilation = (1, module.kernel_size[0]), (1, module.dilation[0])
        padding, stride = (0, module.padding[0]), (1, module.stride[0])
    else:
        kernel, dilation, padding, stride = (module.kernel_size, module.dilation, module.padding,
                                             module.stride)  # fmt: skip
    cols = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def roundable_layers(model: nn.Module, names: Iterable[str]) -> dict[str, nn.Module]:
    """The weights in ``names`` that GPTQ can round: of Linear, Conv1d or Conv2d layers with
    one group and numeric padding.

    >>> net = nn.Sequential(nn.Conv1d(4, 4, 3, groups=2), nn.Linear(4, 2))
    >>> list(roundable_layers(net, ["0.weight", "1.weight"]))
    ['1.weight']
    """
    layers = {}
    for name in names:
        module = model.get_submodule(name.rpartition(".")[0])
        if not name.endswith(".weight") or not isinstance(module, LAYERS):
            continue
        if isinstance(module, nn.Linear) or (
            module.groups == 1 and not isinstance(module.padding, str)
        ):
            layers[name] = module
    return layers


@torch.no_grad()
def input_statistics(
    model: nn.Module, batches: list[torch.Tensor], names: Iterable[str]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """For each weight in ``names`` (Linear / Conv weights), the mean of its input columns and
    their second moment ``X X^T / n`` over the calibration batches (float64), in one pass.

    >>> net = nn.Sequential(nn.Linear(3, 2))
    >>> mean, hessian = input_statistics(net, [torch.ones(4, 5, 3)], ["0.weight"])["0.weight"]
    >>> mean.tolist(), hessian.diagonal().tolist()
    ([1.0, 1.0, 1.0], [1.0, 1.0, 1.0])
    """
    layers = roundable_layers(model, names)
    sums: dict[str, list] = {}

    def hook(name: str):
        def record(module: nn.Module, args: tuple) -> None:
            cols = columns_of(module, args[0].detach()).double()
            total = sums.setdefault(name, [0, 0.0, 0.0])
            total[0] += cols.shape[0]
            total[1] = total[1] + cols.sum(dim=0)
            total[2] = total[2] + cols.T @ cols
        return record

    run_with_input_hooks(model, batches, {n.rpartition(".")[0]: hook(n) for n in layers})
    return {name: (s / n, h / n) for name, (n, s, h) in sums.items()}


@torch.no_grad()
def run_with_input_hooks(model: nn.Module, batches: list[torch.Tensor], hooks: dict) -> None:
    """Run ``model`` in eval mode over ``batches`` with ``hooks[name]`` as a forward pre-hook
    of the submodule ``name`` (each sees the module's inputs); the hooks are removed after.

    >>> seen = []
    >>> net = nn.Sequential(nn.Linear(2, 2))
    >>> run_with_input_hooks(net, [torch.ones(3, 2)], {"0": lambda m, a: seen.append(a[0].shape)})
    >>> seen
    [torch.Size([3, 2])]
    """
    handles = [model.get_submodule(n).register_forward_pre_hook(h) for n, h in hooks.items()]
    try:
        model.eval()
        for batch in batches:
            model(batch)
    finally:
        for handle in handles:
            handle.remove()


def embedding_fisher(
    model: nn.Module, batches: list[torch.Tensor], names: Iterable[str], probes: int = 2,
    seed: int = 0,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """The diagonal of ``J^T J`` for each weight in ``names``, ``J`` the Jacobian of the
    normalised embedding: the mean squared gradient of ``r . e / |e|`` for random Gaussian
    ``r`` (one per utterance and probe), in eval mode. No labels are involved.

    >>> _ = torch.manual_seed(0); net = nn.Sequential(nn.Linear(3, 2))
    >>> embedding_fisher(net, [torch.randn(8, 3)], ["0.weight"])["0.weight"].shape
    torch.Size([2, 3])
    """
    params = {name: _weight_tensor(model, name) for name in names}
    totals = {name: torch.zeros_like(p) for name, p in params.items()}
    generator = torch.Generator().manual_seed(seed)
    model.eval()
    count = 0
    for batch in batches:
        for _ in range(probes):
            embedding = F.normalize(model(batch), dim=-1)
            direction = torch.randn(embedding.shape, generator=generator)
            grads = torch.autograd.grad((embedding * direction).sum(), list(params.values()))
            for name, grad in zip(params, grads, strict=True):
                totals[name] += grad.detach() ** 2
            count += 1
    return {name: total / count for name, total in totals.items()}


def _weight_tensor(model: nn.Module, name: str) -> torch.Tensor:
    """The trainable tensor behind ``name``: the latent weight if quantized, else the weight."""
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name)
    if parametrize.is_parametrized(module, attr):
        return latent_weight(model, name)
    return getattr(module, attr)
