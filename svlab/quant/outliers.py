"""Outlier-heavy layers: a small LSTM speaker encoder whose input weights reach |w| = 60.

Pretrained LSTM speaker encoders (d-vector style) often have a few huge input weights: input
features with a tiny spread get weights large enough to matter. One per-tensor codebook then
spends its levels on the outliers and rounds the bulk of the weights coarsely. Here the
situation is made exactly, without changing what the model computes: some input channels are
scaled down by a fixed gain and the matching columns of the LSTM input weights scaled up.
"""

from __future__ import annotations

import torch
from torch import nn

from svlab.quant.quantize import clone_model


class LSTMEncoder(nn.Module):
    """fbank ``[B, T, F]`` -> fixed per-channel input gain -> LSTM -> mean over time -> Linear.

    >>> LSTMEncoder(n_mels=40, hidden=16, embed_dim=8)(torch.randn(2, 30, 40)).shape
    torch.Size([2, 8])
    """

    def __init__(
        self, n_mels: int = 80, hidden: int = 128, layers: int = 1, embed_dim: int = 64
    ) -> None:
        super().__init__()
        self.register_buffer("input_gain", torch.ones(n_mels))
        self.lstm = nn.LSTM(n_mels, hidden, num_layers=layers, batch_first=True)
        self.embedding = nn.Linear(hidden, embed_dim)
        self.embed_dim = embed_dim

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.lstm(feats * self.input_gain)
        return self.embedding(hidden.mean(dim=1))


def with_outlier_inputs(
    model: LSTMEncoder, max_weight: float = 60.0, channels: int = 2
) -> LSTMEncoder:
    """The same function with the first LSTM layer's largest input columns blown up.

    The ``channels`` input channels whose weight columns are largest get their input gain
    divided by ``s`` and their ``weight_ih_l0`` columns multiplied by ``s``, with ``s`` chosen
    so the largest weight is ``max_weight``. Outputs are unchanged (up to float rounding).

    >>> _ = torch.manual_seed(0); m = LSTMEncoder(n_mels=40, hidden=16, embed_dim=8).eval()
    >>> x = torch.randn(2, 30, 40); o = with_outlier_inputs(m).eval()
    >>> round(o.lstm.weight_ih_l0.abs().max().item(), 3), torch.allclose(o(x), m(x), atol=1e-5)
    (60.0, True)
    """
    changed = clone_model(model)
    with torch.no_grad():
        weight = changed.lstm.weight_ih_l0
        column_max = weight.abs().amax(dim=0)
        chosen = column_max.topk(channels).indices
        scale = max_weight / float(column_max[chosen].max())
        weight[:, chosen] *= scale
        changed.input_gain[chosen] /= scale
    return changed
