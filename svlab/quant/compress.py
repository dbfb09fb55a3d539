"""Post-training quantization without labels: ``compress(model, bits, calibration)``.

A user who brings a pretrained encoder has its weights and some audio, but no speaker labels to
fine-tune with. Everything here uses only unlabelled feature batches (the *calibration* set) and
the fp32 model itself as the reference. The steps, each a keyword of :func:`compress`:

- ``granularity="channel"``: a codebook per output channel instead of one per tensor;
- ``weighting``: the k-means levels minimise a weighted error, each weight weighted by how
  much it matters: ``"inputs"`` by the second moment of the input it multiplies (the diagonal
  of the layer's input Hessian ``X X^T``), ``"fisher"`` by the diagonal of the embedding's
  Gauss-Newton matrix ``J^T J`` (squared gradients of random projections of the normalised
  embedding), still solved exactly by the 1-D dynamic program;
- ``rounding="gptq"``: instead of rounding each weight to its nearest level, the weights of a
  layer are rounded one input column at a time and the error of each column is spread over the
  columns not yet rounded, weighted by the inverse input Hessian (GPTQ, Frantar et al. 2023,
  with the layer's own codebook levels in place of a uniform grid);
- ``batchnorm="correct"``: each BatchNorm's running mean and variance are moved so that its
  output on the calibration audio has the fp32 model's mean and spread
  (:func:`correct_batchnorm`): the statistics stay the fp32 model's, corrected for what
  quantization changed, not re-learnt on the calibration domain; ``"reestimate"`` re-learns
  them outright (domain adaptation, not compression);
- ``bias_correction``: a layer with a bias subtracts the mean output error its quantized
  weights cause on the calibration inputs;
- ``distill_steps``: fine-tuning through the quantizer (STE) so the quantized model's normalised
  embeddings match the fp32 model's on the calibration batches: distillation, no labels.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from svlab.quant.calibration import (
    CalibrationError,
    calibration_batches,
    check_calibration,
    embedding_fisher,
    input_statistics,
    run_with_input_hooks,
)
from svlab.quant.kmeans import weighted_cluster_rows
from svlab.quant.quantize import clone_model, latent_weight, quantize_model, quantizers

__all__ = ["CalibrationError", "calibration_batches", "compress", "correct_batchnorm", "distill",
           "gptq_round", "reestimate_batchnorm"]
WEIGHTINGS = ("none", "inputs", "fisher")
ROUNDINGS = ("nearest", "gptq")
BATCHNORMS = ("keep", "correct", "reestimate")


# ----------------------------------------------------------------------------- rounding


def _nearest(column: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Each entry of ``column`` ``[rows]`` rounded to the nearest of its row's ``levels``."""
    index = (column.unsqueeze(1) - levels).abs().argmin(dim=1)
    return levels.gather(1, index.unsqueeze(1)).squeeze(1)


def gptq_round(
    weight: torch.Tensor, hessian: torch.Tensor, levels: torch.Tensor, damping: float = 0.01,
    block: int = 128,
) -> torch.Tensor:  # fmt: skip
    """``weight`` ``[rows, columns]`` rounded to ``levels`` (``[rows, K]``, or ``[1, K]`` shared)
    column by column, each column's error spread over the columns not yet rounded through the
    inverse of ``hessian`` (``[columns, columns]``, the input's second moment): GPTQ's update,
    columns taken in order of decreasing Hessian diagonal. ``damping`` (a fraction of the mean
    diagonal) is added to the diagonal so the inverse exists.

    The result minimises ``tr((W_q - W) H (W_q - W)^T)`` far better than nearest rounding when
    inputs are correlated; every entry is one of its row's levels.

    >>> _ = torch.manual_seed(0); w = torch.randn(4, 6); x = torch.randn(6, 100)
    >>> x[1] = x[0] + 0.1 * x[1]  # correlated inputs
    >>> h = x @ x.T / 100; levels = torch.linspace(-2, 2, 4).expand(4, 4)
    >>> q = gptq_round(w, h, levels)
    >>> def err(v): return float(torch.trace((v - w) @ h @ (v - w).T))
    >>> near = levels.gather(1, (w.unsqueeze(2) - levels.unsqueeze(1)).abs().argmin(2))
    >>> err(q) < err(near), bool(torch.isin(q, levels[0]).all())
    (True, True)
    """
    rows, n = weight.shape
    w = weight.detach().double().clone()
    h = hessian.detach().double().clone()
    levels = levels.detach().double().expand(rows, -1)
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    order = torch.argsort(h.diagonal(), descending=True)
    w, h = w[:, order], h[order][:, order]
    h += damping * h.diagonal().mean() * torch.eye(n, dtype=h.dtype)
    upper = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    quantized = torch.zeros_like(w)
    for start in range(0, n, block):
        stop = min(start + block, n)
        chunk, inverse = w[:, start:stop].clone(), upper[start:stop, start:stop]
        errors = torch.zeros_like(chunk)
        for i in range(stop - start):
            q = _nearest(chunk[:, i], levels)
            quantized[:, start + i] = q
            errors[:, i] = (chunk[:, i] - q) / inverse[i, i]
            chunk[:, i:] -= errors[:, i : i + 1] * inverse[i : i + 1, i:]
        w[:, stop:] -= errors @ upper[start:stop, stop:]
    return quantized[:, torch.argsort(order)].to(weight.dtype)


# ----------------------------------------------------------------------------- batchnorm


def _batchnorms(model: nn.Module) -> dict[str, nn.Module]:
    """The BatchNorm layers that keep running statistics, by name."""
    kind = nn.modules.batchnorm._BatchNorm
    return {n: m for n, m in model.named_modules() if isinstance(m, kind) and m.track_running_stats}


@torch.no_grad()
def _batchnorm_inputs(model: nn.Module, batches: list[torch.Tensor]) -> dict[str, tuple]:
    """Each BatchNorm's input mean and (biased) variance per channel over the batches."""
    sums: dict[str, list] = {}

    def hook(name: str):
        def record(module: nn.Module, args: tuple) -> None:
            x = args[0].detach().double().transpose(0, 1).reshape(args[0].shape[1], -1)
            total = sums.setdefault(name, [0, 0.0, 0.0])
            total[0] += x.shape[1]
            total[1] = total[1] + x.sum(dim=1)
            total[2] = total[2] + (x * x).sum(dim=1)
        return record

    run_with_input_hooks(model, batches, {n: hook(n) for n in _batchnorms(model)})
    return {n: (s / c, q / c - (s / c) ** 2) for n, (c, s, q) in sums.items()}


@torch.no_grad()
def correct_batchnorm(
    quantized: nn.Module, reference: nn.Module, batches: list[torch.Tensor]
) -> nn.Module:
    """Move each BatchNorm's running statistics in ``quantized`` (in place) so that, on
    ``batches``, each normalised channel has the mean and spread it has in ``reference``.

    With ``s = sqrt(running_var + eps)`` and the input's mean and standard deviation ``m, d``
    (fp32) and ``m_q, d_q`` (quantized) over the batches, the scale becomes ``s * d_q / d`` and
    the mean ``m_q - (m - running_mean) * d_q / d``: ``(x - mean) / scale`` then has the same
    mean and deviation for both models. A channel that is nearly constant in fp32 (``d`` under
    1e-3 of ``s``) keeps its scale and only has its mean moved. The fp32 model's statistics stay
    the reference: nothing is re-learnt on the calibration data's domain.

    >>> _ = torch.manual_seed(0); ref = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)).eval()
    >>> q = clone_model(ref); _ = q[0].bias.data.add_(1.0); _ = q[0].weight.data.mul_(1.5)
    >>> x = [torch.randn(64, 3)]
    >>> _ = correct_batchnorm(q, ref, x)
    >>> bool(torch.allclose(q(x[0]), ref(x[0]), atol=1e-4))
    True
    """
    before, after = _batchnorm_inputs(reference, batches), _batchnorm_inputs(quantized, batches)
    norms = _batchnorms(quantized)
    for name, (mean_fp, var_fp) in before.items():
        mean_q, var_q = after[name]
        norm = norms[name]
        scale = (norm.running_var.double() + norm.eps).sqrt()
        spread = var_fp.clamp(min=0).sqrt()
        ratio = var_q.clamp(min=0).sqrt() / spread.clamp(min=1e-30)
        ratio = torch.where(spread > 1e-3 * scale, ratio.clamp(0.25, 4.0), torch.ones_like(ratio))
        new_mean = mean_q - (mean_fp - norm.running_mean.double()) * ratio
        new_var = (scale * ratio) ** 2 - norm.eps
        norm.running_mean.copy_(new_mean.to(norm.running_mean.dtype))
        norm.running_var.copy_(new_var.clamp(min=0).to(norm.running_var.dtype))
    return quantized


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, batches: list[torch.Tensor]) -> nn.Module:
    """Recompute every BatchNorm's running statistics (in place) as the plain average over
    ``batches`` in train mode: the model adapts to the calibration data's domain.

    >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    >>> _ = reestimate_batchnorm(net, [torch.randn(16, 2)]); int(net[1].num_batches_tracked)
    1
    """
    norms = _batchnorms(model)
    momenta = {n: m.momentum for n, m in norms.items()}
    for norm in norms.values():
        norm.reset_running_stats()
        norm.momentum = None
    model.train()
    try:
        for batch in batches:
            model(batch)
    finally:
        for name, norm in norms.items():
            norm.momentum = momenta[name]
        model.eval()
    return model


# ----------------------------------------------------------------------------- distillation


def distill(
    quantized: nn.Module, reference: nn.Module, batches: list[torch.Tensor], steps: int,
    lr: float = 1e-5, seed: int = 0,
) -> nn.Module:  # fmt: skip
    """Fine-tune ``quantized`` (in place, through its quantizers) for ``steps`` Adam steps so
    its normalised embeddings match ``reference``'s on the calibration batches (cosine loss,
    BatchNorm statistics frozen: eval mode). No labels.

    >>> _ = torch.manual_seed(0); ref = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 6))
    >>> q = quantize_model(ref, 2); x = [torch.randn(64, 16)]
    >>> def gap(): return float(1 - F.cosine_similarity(q(x[0]), ref(x[0])).mean().detach())
    >>> before = gap(); _ = distill(q, ref, x, steps=200, lr=1e-3); gap() < before
    True
    """
    with torch.no_grad():
        targets = [F.normalize(reference.eval()(batch), dim=-1) for batch in batches]
    params = [p for p in quantized.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    generator = torch.Generator().manual_seed(seed)
    quantized.eval()
    for _ in range(steps):
        i = int(torch.randint(len(batches), (1,), generator=generator))
        output = F.normalize(quantized(batches[i]), dim=-1)
        loss = (1 - (output * targets[i]).sum(dim=-1)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return quantized


# ----------------------------------------------------------------------------- compress


def compress(
    model: nn.Module,
    bits: int | Mapping[str, int | None],
    calibration: Iterable[torch.Tensor],
    *,
    granularity: str = "channel",
    method: str = "kmeans",
    weighting: str = "none",
    rounding: str = "gptq",
    batchnorm: str = "correct",
    bias_correction: bool = True,
    distill_steps: int = 0,
    distill_lr: float = 1e-5,
    kmeans_method: str = "auto",
    include=None,
    exclude=None,
) -> nn.Module:
    """A quantized copy of ``model`` (the input is untouched), calibrated on unlabelled feature
    batches ``calibration`` (``[batch, frames, bins]`` in the model's front end); see the module
    docstring for each step. ``bits``, ``include`` and ``exclude`` choose the weights, and
    ``kmeans_method`` how unweighted levels are found, as in :func:`svlab.quant.quantize_model`;
    the result works with ``save_packed``, ``to_onnx`` and the workbench like any
    ``quantize_model`` result.

    The defaults are the recipe svlab measured best on 3D-Speaker's CAM++ (README and
    ``benchmarks/bench_real.py``).

    >>> from svlab.models import build
    >>> _ = torch.manual_seed(0); net = build("resnet18", base_width=2, embed_dim=8).eval()
    >>> calibration = [torch.randn(4, 60, 80) for _ in range(2)]
    >>> q = compress(net, 3, calibration)
    >>> sorted({len(p.levels()[0]) for p in quantizers(q).values()}), net.training
    ([8], False)
    >>> compress(net, 3, [])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    svlab.quant.calibration.CalibrationError: the calibration set is empty: ...
    """
    for value, allowed, what in ((weighting, WEIGHTINGS, "weighting"),
                                 (rounding, ROUNDINGS, "rounding"),
                                 (batchnorm, BATCHNORMS, "batchnorm")):  # fmt: skip
        if value not in allowed:
            raise ValueError(f"{what} must be one of {allowed}, got {value!r}")
    if weighting != "none" and method != "kmeans":
        raise ValueError(f"weighting {weighting!r} weights k-means levels; method is {method!r}")
    reference = clone_model(model).eval()
    batches = check_calibration(reference, calibration)
    quantized = quantize_model(reference, bits, granularity=granularity, method=method,
                               include=include, exclude=exclude,
                               kmeans_method=kmeans_method).eval()  # fmt: skip
    names = list(quantizers(quantized))
    statistics = input_statistics(reference, batches, names)
    importance = None
    if weighting == "fisher":
        importance = embedding_fisher(reference, batches, names)
    for name, quantizer in quantizers(quantized).items():
        latent = latent_weight(quantized, name)
        rows = latent.detach().reshape(quantizer.codebook.shape[0], -1)
        if weighting != "none":
            weights = _importance(name, latent, statistics, importance)
            if weights is not None:
                groups = weights.reshape(rows.shape)
                with torch.no_grad():
                    quantizer.codebook.copy_(weighted_cluster_rows(rows, groups, 2**quantizer.bits))
        if rounding == "gptq" and name in statistics:
            flat = latent.detach().reshape(latent.shape[0], -1)
            levels = quantizer.levels().detach()
            rounded = gptq_round(flat, statistics[name][1], levels)
            with torch.no_grad():
                latent.copy_(rounded.reshape(latent.shape))
    if bias_correction:
        _correct_biases(quantized, reference, statistics)
    if batchnorm == "correct":
        correct_batchnorm(quantized, reference, batches)
    elif batchnorm == "reestimate":
        reestimate_batchnorm(quantized, batches)
    if distill_steps:
        distill(quantized, reference, batches, distill_steps, distill_lr)
    return quantized.eval()


def _importance(name, latent, statistics, fisher) -> torch.Tensor | None:
    """Each weight's k-means weight: the Fisher diagonal, or its input's second moment."""
    if fisher is not None:
        return fisher[name].reshape(latent.shape)
    if name not in statistics:
        return None
    diagonal = statistics[name][1].diagonal().float()
    return diagonal.expand(latent.shape[0], -1).reshape(latent.shape)


@torch.no_grad()
def _correct_biases(quantized: nn.Module, reference: nn.Module, statistics: dict) -> None:
    """Subtract from each quantized layer's bias the mean output error on its inputs."""
    for name, (mean, _) in statistics.items():
        module = quantized.get_submodule(name.rpartition(".")[0])
        if module.bias is None:
            continue
        original = reference.get_submodule(name.rpartition(".")[0]).weight
        error = (module.weight - original).reshape(original.shape[0], -1).double() @ mean
        module.bias -= error.to(module.bias.dtype)
