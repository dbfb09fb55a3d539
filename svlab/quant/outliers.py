"""Outlier-heavy layers: the same model, with input weights that reach |w| = 60.

Pretrained speaker encoders often have a few huge input weights (an LSTM d-vector encoder's
input weights can reach |w| = 60 at a standard deviation of 1.4): input features with a tiny
spread get weights large enough to matter. One per-tensor codebook then spends its levels on the
outliers and rounds the bulk of the weights coarsely. :func:`with_outlier_inputs` makes that
situation exactly, without changing what a trained model computes: a few input channels are
scaled down by a fixed gain and the matching input columns of the first layer scaled up.
"""

from __future__ import annotations

import torch
from torch import nn

from svlab.quant.quantize import clone_model


class LSTMEncoder(nn.Module):
    """A small d-vector style encoder: fbank ``[B, T, F]`` -> LSTM -> mean over time -> Linear.

    >>> LSTMEncoder(n_mels=40, hidden=16, embed_dim=8)(torch.randn(2, 30, 40)).shape
    torch.Size([2, 8])
    """

    def __init__(
        self, n_mels: int = 80, hidden: int = 128, layers: int = 1, embed_dim: int = 64
    ) -> None:
        super().__init__()
        self.lstm = nn.LSTM(n_mels, hidden, num_layers=layers, batch_first=True)
        self.embedding = nn.Linear(hidden, embed_dim)
        self.embed_dim = embed_dim

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.lstm(feats)
        return self.embedding(hidden.mean(dim=1))


class InputGain(nn.Module):
    """``model(feats * gain)``: a fixed gain per feature channel (the last input dimension).

    >>> InputGain(nn.Identity(), torch.tensor([1.0, 0.5]))(torch.ones(1, 2)).tolist()
    [[1.0, 0.5]]
    """

    def __init__(self, model: nn.Module, gain: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("gain", gain.detach().clone())
        self.embed_dim = getattr(model, "embed_dim", None)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.model(feats * self.gain)


def with_outlier_inputs(
    model: nn.Module, weight: str, max_weight: float = 60.0, channels: int = 2
) -> InputGain:
    """The same function, with the input weight ``weight`` given a few huge columns.

    ``weight`` names the first layer's weight, whose dimension 1 is the feature channel
    (``lstm.weight_ih_l0`` of an LSTM, ``<conv>.weight`` of a Conv1d over fbank channels). The
    ``channels`` channels with the largest columns get their input divided by ``s`` and their
    columns multiplied by ``s``, so the largest weight becomes ``max_weight``. Returns an
    :class:`InputGain` around a copy (weight names gain a ``model.`` prefix); outputs are
    unchanged up to float rounding.

    >>> _ = torch.manual_seed(0); m = LSTMEncoder(n_mels=40, hidden=16, embed_dim=8).eval()
    >>> x = torch.randn(2, 30, 40); o = with_outlier_inputs(m, "lstm.weight_ih_l0").eval()
    >>> w = o.model.lstm.weight_ih_l0.detach()
    >>> round(w.abs().max().item(), 3), torch.allclose(o(x), m(x), atol=1e-5)
    (60.0, True)
    """
    changed = clone_model(model)
    try:
        tensor = changed.get_parameter(weight)
    except AttributeError as err:
        raise ValueError(f"{type(model).__name__} has no parameter {weight!r}") from err
    if tensor.dim() < 2:
        raise ValueError(f"{weight} has shape {tuple(tensor.shape)}: no input-channel dimension")
    gain = torch.ones(tensor.shape[1], device=tensor.device)
    with torch.no_grad():
        column_max = tensor.abs().transpose(0, 1).reshape(tensor.shape[1], -1).amax(dim=1)
        chosen = column_max.topk(channels).indices
        scale = max_weight / float(column_max[chosen].max())
        tensor[:, chosen] *= scale
        gain[chosen] /= scale
    return InputGain(changed, gain)
