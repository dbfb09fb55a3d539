"""Additive angular margin softmax (ArcFace / AAM-softmax) for training speaker embeddings."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class AAMSoftmax(nn.Module):
    """Cross-entropy over ``scale * cos(angle + margin)`` for the true speaker, ``scale * cos``
    for the others, with one learned unit-length centre per training speaker.

    ``margin`` is the current margin; the trainer ramps it from 0 to its final value with
    :func:`margin_ramp` (wespeaker's recipe: scale 32, margin 0.2). Past the angle
    ``pi - margin``, where ``cos(angle + margin)`` would grow again, the target logit
    continues as ``cos(angle) - margin * sin(margin)`` (ArcFace's "easy_margin=False").

    >>> loss_fn = AAMSoftmax(embed_dim=4, n_classes=3)
    >>> loss = loss_fn(torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1]))
    >>> loss.shape, bool(loss > 0)
    (torch.Size([]), True)
    """

    def __init__(
        self, embed_dim: int, n_classes: int, scale: float = 32.0, margin: float = 0.2
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_classes, embed_dim))
        nn.init.xavier_uniform_(self.weight)
        self.scale = scale
        self.margin = margin

    @classmethod
    def from_weight(cls, weight: torch.Tensor | None) -> AAMSoftmax | None:
        """A head with these class centres (``[classes, embed_dim]``), or None for None: how
        a head saved beside a model (or a wespeaker ``projection.weight``) comes back.

        >>> AAMSoftmax.from_weight(torch.ones(5, 3)).weight.shape, AAMSoftmax.from_weight(None)
        (torch.Size([5, 3]), None)
        """
        if weight is None:
            return None
        head = cls(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            head.weight.copy_(weight)
        return head

    @classmethod
    def imprinted(
        cls,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        n_classes: int | None = None,
        scale: float = 32.0,
        margin: float = 0.2,
    ) -> AAMSoftmax:
        """A head whose centre for each class is the mean direction of its ``embeddings``.

        "Weight imprinting": what a trained head converges to, without training. Fine-tuning a
        trained (or quantized) encoder against a random head first drags the encoder towards
        arbitrary centres; an imprinted head starts where the encoder already is. Every class
        in ``range(n_classes)`` (default: ``labels.max() + 1``) needs at least one embedding.

        >>> emb = torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.0, -3.0]])
        >>> head = AAMSoftmax.imprinted(emb, torch.tensor([0, 0, 1]))
        >>> head.weight.detach().round(decimals=3)
        tensor([[ 0.9240,  0.3830],
                [ 0.0000, -1.0000]])
        """
        n_classes = int(labels.max()) + 1 if n_classes is None else n_classes
        counts = torch.bincount(labels, minlength=n_classes)
        if len(counts) > n_classes or (counts == 0).any():
            missing = (counts[:n_classes] == 0).nonzero().flatten().tolist()
            raise ValueError(
                f"imprinting needs embeddings of every class in 0..{n_classes - 1}; "
                f"labels out of range or classes {missing} have none"
            )
        directions = F.normalize(embeddings.detach().float(), dim=1)
        sums = torch.zeros(n_classes, directions.shape[1]).index_add_(0, labels, directions)
        head = cls(directions.shape[1], n_classes, scale, margin)
        with torch.no_grad():
            head.weight.copy_(F.normalize(sums, dim=1))
        return head

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scaled cosine logits ``[B, n_classes]`` with the margin applied to the true class."""
        cosine = F.linear(F.normalize(embeddings), F.normalize(self.weight)).clamp(-1, 1)
        sine = torch.sqrt((1.0 - cosine * cosine).clamp(min=0))
        m = self.margin
        with_margin = cosine * math.cos(m) - sine * math.sin(m)
        with_margin = torch.where(
            cosine > math.cos(math.pi - m), with_margin, cosine - m * math.sin(m)
        )
        target = F.one_hot(labels, cosine.shape[1]).bool()
        return self.scale * torch.where(target, with_margin, cosine)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        n_classes = self.weight.shape[0]
        if labels.min() < 0 or labels.max() >= n_classes:
            raise ValueError(
                f"labels must lie in [0, {n_classes}), got {labels.min()}..{labels.max()}"
            )
        return F.cross_entropy(self.logits(embeddings, labels), labels)


def margin_ramp(epoch: float, margin: float, start: float, end: float) -> float:
    """The margin at (fractional) ``epoch``: 0 before ``start``, ``margin`` from ``end`` on,
    rising linearly in between.

    >>> [margin_ramp(e, 0.2, start=1, end=3) for e in (0, 1, 2, 3, 9)]
    [0.0, 0.0, 0.1, 0.2, 0.2]
    """
    if epoch <= start:
        return 0.0
    if epoch >= end:
        return margin
    return margin * (epoch - start) / (end - start)


class CosineClassifier(nn.Module):
    """Scaled cosine logits and cross-entropy: AAM-softmax's weights and memory, no margin.

    It stands in for the speaker classifier in :func:`svlab.memory.project` (and can be passed
    to :func:`svlab.memory.breakdown` as the loss): a meta tensor cannot branch on the margin,
    and the classifier's parameters (classes x embedding) count too.

    >>> head = CosineClassifier(4, num_classes=3)
    >>> head(torch.randn(2, 4), torch.tensor([0, 2])).shape
    torch.Size([])
    """

    def __init__(self, embed_dim: int, num_classes: int, scale: float = 32.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_classes, embed_dim) * embed_dim**-0.5)
        self.scale = scale

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cosine = F.linear(F.normalize(embeddings), F.normalize(self.weight))
        return F.cross_entropy(self.scale * cosine, labels)
