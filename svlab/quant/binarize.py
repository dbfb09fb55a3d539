"""1-bit weights: plain sign, static scale, and learned scale and threshold, with packed storage.

The three schemes (after arXiv:2406.05359, which reports that scaled binary quantizers beat
plain binarization by a wide margin; the formulas below are svlab's reading of them):

- ``"sign"``: ``w_b = sign(w)``, values +-1; the classic BinaryConnect binarization.
- ``"static"``: ``w_b = a * sign(w)``, with ``a`` the mean ``|w|`` of the pretrained layer (or of
  each output channel), fixed when the model is binarized. It is the scale that minimises
  ``||w - a * sign(w)||^2`` (XNOR-Net), so the binary layer keeps the weight's magnitude and
  the BatchNorm statistics that follow it stay roughly valid.
- ``"adaptive"``: ``w_b = a * sign(w - t)``, with a scale ``a`` and a threshold ``t`` per output
  channel (or per layer) learned during fine-tuning, starting from the static scale and
  ``t = 0``. The trainable parameters are ``log_scale`` (``a = exp(log_scale)``) and
  ``threshold`` (``t / a``). In log space the scale stays positive and an optimizer step
  changes it by a fraction of itself: Adam moves every parameter by about its learning rate,
  which for a plain ``a`` would be a large part of a small layer's mean ``|w|`` (a first
  version learning ``a`` directly ended worse than the static scheme). For the same reason the
  threshold is learned relative to the scale.

``sign`` here maps 0 to +1, so every weight is one of two values. Gradients use the
straight-through estimator of the clipped identity: ``d sign(u) / du = 1`` where ``|u| <= 1``,
0 elsewhere, with ``u = w`` (sign, static) or ``u = w - t`` (adaptive): the latent weights of
every scheme get the same gradient, and the adaptive scheme differs only in what it learns
besides. ``a`` and ``t`` get their exact gradients through ``a * sign(...)`` and the
straight-through one through ``sign``; as in learned-step-size quantization (Esser et al.
2020) those gradients, sums over a whole group of weights, are scaled by
``1 / sqrt(weights per group)`` so that under SGD they move at the pace of the latent weights.

Storage is one bit per weight plus, per group, one fp32 scale (none for ``"sign"``); the
threshold is needed only to decide the bits, so it is not stored. :func:`save_binary` writes
exactly that, bit-packed; :func:`load_binary` rebuilds the binarized model from it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from svlab import checkpoint
from svlab.quant.quantize import Patterns, bit_map, clone_model, parametrizations_of

SCHEMES = ("sign", "static", "adaptive")
GRANULARITIES = ("tensor", "channel")
BINARY_FORMAT = "svlab-binary-v1"
SCALE_BITS = 32


class _SignSTE(torch.autograd.Function):
    """sign with 0 -> +1; backward: the gradient where ``|u| <= 1``, zero elsewhere."""

    @staticmethod
    def forward(ctx, u: Tensor) -> Tensor:
        ctx.save_for_backward(u)
        return torch.where(u >= 0, 1.0, -1.0).to(u.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (u,) = ctx.saved_tensors
        return grad * (u.abs() <= 1).to(grad.dtype)


def sign_ste(u: Tensor) -> Tensor:
    """+-1 by the sign of ``u`` (0 gives +1), with the clipped straight-through gradient.

    >>> u = torch.tensor([-2.0, -0.5, 0.0, 0.5, 3.0], requires_grad=True)
    >>> sign_ste(u).tolist()
    [-1.0, -1.0, 1.0, 1.0, 1.0]
    >>> sign_ste(u).sum().backward(); u.grad.tolist()
    [0.0, 1.0, 1.0, 1.0, 0.0]
    """
    return _SignSTE.apply(u)


def _scaled_grad(x: Tensor, factor: float) -> Tensor:
    """``x`` in the forward pass, ``factor`` times its gradient in the backward pass."""
    return (x - x * factor).detach() + x * factor


class Binarizer(nn.Module):
    """Parametrization turning a latent fp32 weight into a 1-bit weight (see module docstring).

    Scales and thresholds have shape ``[groups, 1]``: one group per layer (``"tensor"``) or
    per output channel (``"channel"``). ``scale`` is a fixed buffer (static; None for sign)
    or ``exp(log_scale)`` (adaptive); ``threshold`` is relative to the scale (0 but for
    adaptive): read them with :meth:`magnitudes` and ``threshold``.

    >>> w = torch.tensor([[0.2, -0.4], [1.0, -3.0]])
    >>> Binarizer(w, "static", "channel")(w).tolist()
    [[0.30000001192092896, -0.30000001192092896], [2.0, -2.0]]
    """

    def __init__(
        self, weight: Tensor, scheme: str, granularity: str = "channel", scale: Tensor | None = None
    ) -> None:
        super().__init__()
        if scheme not in SCHEMES:
            raise ValueError(f"binary scheme must be one of {SCHEMES}, got {scheme!r}")
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
        self.scheme = scheme
        self.granularity = granularity
        self.groups = weight.shape[0] if granularity == "channel" and weight.dim() > 1 else 1
        rows = weight.detach().reshape(self.groups, -1)
        if not torch.isfinite(rows).all():
            raise ValueError("cannot binarize a weight holding NaN or infinite values")
        if scale is None:
            scale = rows.abs().mean(dim=1, keepdim=True).clamp_min(torch.finfo(rows.dtype).tiny)
        elif tuple(scale.shape) != (self.groups, 1):
            raise ValueError(f"scale must have shape {(self.groups, 1)}, got {tuple(scale.shape)}")
        scale = scale.to(rows.device, rows.dtype)
        if scheme == "adaptive":
            self.log_scale = nn.Parameter(scale.log())
            self.threshold = nn.Parameter(torch.zeros_like(scale))
        else:
            self.register_buffer("scale", scale.clone() if scheme == "static" else None)
            self.register_buffer("threshold", torch.zeros_like(scale))

    def signs(self, latent: Tensor) -> Tensor:
        """The stored bits: ``True`` where the binary weight is positive, as ``[groups, m]``."""
        with torch.no_grad():
            return self(latent).reshape(self.groups, -1) > 0

    def magnitudes(self) -> Tensor | None:
        """The stored scales ``|a|``, ``[groups, 1]`` (``None`` for ``"sign"``): weight = +-|a|."""
        if self.scheme == "adaptive":
            return self.log_scale.detach().exp()
        return None if self.scale is None else self.scale.detach().abs()

    def forward(self, latent: Tensor) -> Tensor:
        rows = latent.reshape(self.groups, -1)
        if self.scheme == "sign":
            binary = sign_ste(rows)
        elif self.scheme == "static":
            binary = self.scale * sign_ste(rows)
        else:
            factor = rows.shape[1] ** -0.5
            scale = _scaled_grad(self.log_scale, factor).exp()
            threshold = scale * _scaled_grad(self.threshold, factor)
            binary = scale * sign_ste(rows - threshold)
        return binary.reshape(latent.shape)

    def storage_bits(self, numel: int) -> int:
        """Bits to store this layer: one per weight plus one fp32 scale per group."""
        return numel + (0 if self.scheme == "sign" else self.groups * SCALE_BITS)

    def extra_repr(self) -> str:
        return f"scheme={self.scheme}, granularity={self.granularity}, groups={self.groups}"


def binarize(
    model: nn.Module,
    scheme: str = "static",
    *,
    granularity: str = "channel",
    include: Patterns = None,
    exclude: Patterns = None,
) -> nn.Module:
    """A copy of ``model`` with its Linear/Conv/RNN weights made 1-bit by ``scheme``.

    ``include`` / ``exclude`` choose weights by glob as in :func:`svlab.quant.quantize_model`;
    biases and normalisation layers stay fp32. The copy trains like any model: latent weights
    (``module.parametrizations.weight.original``) get straight-through gradients, and for
    ``"adaptive"`` so do each layer's ``scale`` and ``threshold``.

    >>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> b = binarize(net, "sign")
    >>> sorted(b[0].weight.unique().tolist()), b[0].bias.equal(net[0].bias)
    ([-1.0, 1.0], True)
    """
    if scheme not in SCHEMES:
        raise ValueError(f"binary scheme must be one of {SCHEMES}, got {scheme!r}")
    names = list(bit_map(model, 1, include=include, exclude=exclude))
    if not names:
        raise ValueError("no weight is chosen for binarization (check include and exclude)")
    binary = clone_model(model)
    for name in names:
        module_name, _, attr = name.rpartition(".")
        module = binary.get_submodule(module_name)
        if parametrize.is_parametrized(module, attr):
            raise ValueError(f"{name} is already quantized; binarize the fp32 model instead")
        weight = getattr(module, attr)
        try:
            binarizer = Binarizer(weight, scheme, granularity).to(weight.device)
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from err
        parametrize.register_parametrization(module, attr, binarizer)
    return binary


def binarizers(model: nn.Module) -> dict[str, Binarizer]:
    """``{parameter name: binarizer}`` for every binarized weight of ``model``.

    >>> list(binarizers(binarize(nn.Sequential(nn.Linear(3, 3)), "sign")))
    ['0.weight']
    """
    return parametrizations_of(model, Binarizer)


@contextmanager
def track_binary(model: nn.Module) -> Iterator[list[dict]]:
    """Record every binarized layer's scale and threshold at each training forward pass.

    Inside the ``with`` block each forward pass that builds a binary weight with gradients
    on, in training mode (one per layer per training step), appends ``{"layer", "pass",
    "scale", "threshold"}`` (means of ``|a|`` and of ``t / |a|`` over the layer's groups) to the
    yielded list; so any training loop, ``svlab.train.train`` included, can be watched.

    >>> b = binarize(nn.Sequential(nn.Linear(4, 2)), "adaptive")
    >>> with track_binary(b) as log:
    ...     b(torch.randn(3, 4)).sum().backward()
    >>> [(r["layer"], r["pass"]) for r in log]
    [('0.weight', 0)]
    """
    log: list[dict] = []
    passes: dict[str, int] = {}
    handles = []
    for name, binarizer in binarizers(model).items():

        def hook(module: Binarizer, args: tuple, output: Tensor, name: str = name) -> None:
            if not (module.training and torch.is_grad_enabled()):
                return
            scale = module.magnitudes()
            log.append(
                {
                    "layer": name,
                    "pass": passes.get(name, 0),
                    "scale": 1.0 if scale is None else float(scale.mean()),
                    "threshold": float(module.threshold.detach().mean()),
                }
            )
            passes[name] = passes.get(name, 0) + 1

        handles.append(binarizer.register_forward_hook(hook))
    try:
        yield log
    finally:
        for handle in handles:
            handle.remove()


def _latent(model: nn.Module, name: str) -> Tensor:
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name)
    return module.parametrizations[attr].original


def binary_size(model: nn.Module) -> dict[str, int]:
    """Real storage in bytes of a binarized model, split into what makes it up.

    ``binary``: the packed bits and scales of the binarized weights (a whole number of bytes
    per layer); ``fp32``: every other parameter and floating-point buffer at 4 bytes (integer
    buffers such as BatchNorm's batch counter at their own size); ``total``: both.

    >>> b = binarize(nn.Sequential(nn.Linear(16, 4)), "static", granularity="tensor")
    >>> binary_size(b)      # 64 bits + one scale; bias 4 floats
    {'binary': 12, 'fp32': 16, 'total': 28}
    """
    found = binarizers(model)
    if not found:
        raise ValueError("the model has no binarized weight; call binarize() first")
    binary = 0
    for name, binarizer in found.items():
        binary += (binarizer.storage_bits(_latent(model, name).numel()) + 7) // 8
    rest = sum(t.numel() * t.element_size() for t in _plain_state(model).values())
    return {"binary": binary, "fp32": rest, "total": binary + rest}


def _plain_state(model: nn.Module) -> dict[str, Tensor]:
    """The state of everything that is not binarized (biases, BatchNorm, other weights)."""
    skip = []
    for name in binarizers(model):
        module_name, _, attr = name.rpartition(".")
        skip.append(f"{module_name}.parametrizations.{attr}.".lstrip("."))
    return {k: v for k, v in model.state_dict().items() if not k.startswith(tuple(skip))}


def save_binary(path: str | os.PathLike, model: nn.Module) -> Path:
    """Write a binarized model packed: 8 weights a byte, fp32 scales, the rest of its state.

    The file (written atomically) holds, per binarized weight, its shape, scheme, granularity,
    the packed sign bits and the scales, plus the state of all other parameters and buffers.

    >>> import tempfile, pathlib
    >>> net = nn.Sequential(nn.Linear(16, 8))
    >>> p = save_binary(pathlib.Path(tempfile.mkdtemp()) / "b.pt", binarize(net, "adaptive"))
    >>> load_binary(p, net)[0].weight.unique().numel() <= 16
    True
    """
    found = binarizers(model)
    if not found:
        raise ValueError("the model has no binarized weight; call binarize() first")
    layers = {}
    for name, binarizer in found.items():
        latent = _latent(model, name)
        bits = binarizer.signs(latent).reshape(-1).cpu().numpy()
        scale = binarizer.magnitudes()  # None for "sign"
        layers[name] = {
            "shape": list(latent.shape),
            "scheme": binarizer.scheme,
            "granularity": binarizer.granularity,
            "packed": torch.from_numpy(np.packbits(bits)),
            "scale": None if scale is None else scale.cpu().clone(),
        }
    return checkpoint.save(
        path, {"format": BINARY_FORMAT, "layers": layers, "state": _plain_state(model)}
    )


def _unpack(path: Path, name: str, entry: Mapping, weight: Tensor) -> Tensor:
    shape = list(weight.shape)
    if list(entry["shape"]) != shape:
        raise ValueError(f"{path}: layer {name} has shape {entry['shape']}, the model {shape}")
    numel = weight.numel()
    packed = entry["packed"].numpy()
    if packed.size != (numel + 7) // 8:
        raise ValueError(
            f"{path}: layer {name} holds {packed.size} packed bytes, expected {(numel + 7) // 8}"
            " (truncated or corrupt file)"
        )
    signs = torch.from_numpy(np.unpackbits(packed)[:numel].astype(np.float32)) * 2 - 1
    groups = shape[0] if entry["granularity"] == "channel" and len(shape) > 1 else 1
    rows = signs.reshape(groups, -1)
    if entry["scale"] is not None:
        scale = entry["scale"]
        if tuple(scale.shape) != (groups, 1):
            raise ValueError(f"{path}: layer {name} has scales of shape {tuple(scale.shape)}")
        rows = rows * scale
    return rows.reshape(shape).to(weight.dtype)


def load_binary(path: str | os.PathLike, model: nn.Module) -> nn.Module:
    """Rebuild the binarized model saved in ``path``; ``model``: an fp32 model of its architecture.

    The latent weights are set to the stored binary values (threshold 0), so the result computes
    exactly what the saved model computed and can be fine-tuned further. A file of another
    model, a truncated one, or one that is not a binary checkpoint fails with a ``ValueError``
    naming the file and the layer.
    """
    path = Path(path)
    saved = checkpoint.load(path)
    if not isinstance(saved, dict) or saved.get("format") != BINARY_FORMAT:
        raise ValueError(f"{path} is not an svlab binary checkpoint")
    plain = clone_model(model)
    weights = dict(plain.named_parameters())
    layers = saved["layers"]
    unknown = [name for name in layers if name not in weights]
    if unknown:
        raise ValueError(f"{path}: the model has no weights {unknown}: a file of another model?")
    with torch.no_grad():
        for name, entry in layers.items():
            weights[name].copy_(_unpack(path, name, entry, weights[name]))
    try:
        missing, unexpected = plain.load_state_dict(saved["state"], strict=False)
    except RuntimeError as err:
        raise ValueError(f"{path}: the saved state does not fit the model: {err}") from err
    missing = [key for key in missing if key not in layers]
    if missing or unexpected:
        raise ValueError(f"{path}: state keys missing {missing}, unexpected {unexpected}")
    for name, entry in layers.items():
        module_name, _, attr = name.rpartition(".")
        module = plain.get_submodule(module_name)
        binarizer = Binarizer(weights[name], entry["scheme"], entry["granularity"], entry["scale"])
        parametrize.register_parametrization(module, attr, binarizer)
    return plain
