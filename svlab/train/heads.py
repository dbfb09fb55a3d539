"""The AAM-softmax head a model trains with: the classifier pair, imprinting, choosing a head."""

from __future__ import annotations

import torch
from torch import nn

from svlab.data import SpeakerCrops
from svlab.losses import AAMSoftmax
from svlab.train.config import ConfigError, TrainConfig


class SpeakerClassifier(nn.Module):
    """An embedding model with its AAM-softmax head: what the optimizer trains.

    >>> from svlab.models import build
    >>> net = SpeakerClassifier(build("resnet18", base_width=2, embed_dim=4), AAMSoftmax(4, 3))
    >>> loss, correct = net(torch.randn(2, 20, 80), torch.tensor([0, 2]))
    >>> loss.shape, int(correct) <= 2
    (torch.Size([]), True)
    """

    def __init__(self, encoder: nn.Module, head: AAMSoftmax) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(
        self, feats: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean loss and the number of crops whose highest logit (margin applied) is right."""
        logits = self.head.logits(self.encoder(feats).float(), labels)
        loss = nn.functional.cross_entropy(logits, labels)
        return loss, (logits.argmax(dim=1) == labels).sum()


@torch.no_grad()
def imprint_head(
    model: nn.Module,
    crops: SpeakerCrops,
    scale: float = 32.0,
    margin: float = 0.2,
    batch_size: int = 64,
) -> AAMSoftmax:
    """An AAM-softmax head imprinted with ``model``'s embeddings of the training utterances.

    Each speaker's centre is the mean direction of the embeddings (eval mode) of the middle
    crop of each of their utterances (:meth:`AAMSoftmax.imprinted`). This is the head to
    fine-tune a trained or quantized encoder with when its own trained head is not at hand.

    >>> from pathlib import Path
    >>> from svlab.models import build
    >>> model = build("resnet18", base_width=2, embed_dim=4)
    >>> crops = SpeakerCrops([Path("a.wav"), Path("b.wav")], [0, 1], crop_frames=5,
    ...                      features=[torch.randn(8, 80), torch.randn(12, 80)])
    >>> imprint_head(model, crops).weight.shape
    torch.Size([2, 4])
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    count = len(crops.paths)
    embeddings = []
    for start in range(0, count, batch_size):
        feats = crops.centre_crops(list(range(start, min(start + batch_size, count))))
        embeddings.append(model(feats.to(device)).float().cpu())
    model.train(was_training)
    return AAMSoftmax.imprinted(
        torch.cat(embeddings), crops.labels, crops.n_speakers, scale, margin
    )


def pretrained_head(trained: AAMSoftmax | None, crops: SpeakerCrops) -> AAMSoftmax | str:
    """The head to fine-tune a saved model with: its own ``trained`` head when it has one row
    per label of ``crops``; its first ``crops.n_speakers`` rows when it has a whole multiple of
    them (a head trained with speed perturbation, whose unperturbed labels come first, now
    fine-tuned without it, as the large-margin stage is); else ``"imprint"``.

    >>> from pathlib import Path
    >>> crops = SpeakerCrops([Path("a.wav")] * 2, [0, 1], features=[torch.zeros(8, 80)] * 2)
    >>> pretrained_head(AAMSoftmax(4, 6), crops).weight.shape, pretrained_head(None, crops)
    (torch.Size([2, 4]), 'imprint')
    """
    if trained is None:
        return "imprint"
    rows, labels = trained.weight.shape[0], crops.n_speakers
    if rows == labels:
        return trained
    if rows % labels == 0:
        head = AAMSoftmax(trained.weight.shape[1], labels, trained.scale, trained.margin)
        head.weight.data.copy_(trained.weight.data[:labels])
        return head
    return "imprint"


def training_head(
    head: AAMSoftmax | str | None, model: nn.Module, crops: SpeakerCrops, cfg: TrainConfig
) -> AAMSoftmax:
    """The head :func:`svlab.train.train` uses: a fresh one (``None``), an imprinted one
    (``"imprint"``), or ``head`` checked against the corpus and the model; its scale set to
    ``cfg.scale``.

    >>> from pathlib import Path
    >>> crops = SpeakerCrops([Path("a.wav")] * 3, [0, 1, 2], features=[torch.zeros(8, 80)] * 3)
    >>> model = nn.Linear(1, 1); model.embed_dim = 16
    >>> training_head(None, model, crops, TrainConfig(scale=30.0)).weight.shape
    torch.Size([3, 16])
    """
    if head is None:
        return AAMSoftmax(model.embed_dim, crops.n_speakers, cfg.scale, cfg.margin)
    if isinstance(head, str):
        if head != "imprint":
            raise ConfigError(f"head must be an AAMSoftmax, 'imprint' or None, got {head!r}")
        return imprint_head(model, crops, cfg.scale, cfg.margin)
    expected = (crops.n_speakers, model.embed_dim)
    if tuple(head.weight.shape) != expected:
        raise ConfigError(
            f"the head has {head.weight.shape[0]} speakers x {head.weight.shape[1]} dimensions, "
            f"but this corpus has {expected[0]} speakers and the model embeds in {expected[1]}; "
            "pass head='imprint' to make one for this corpus"
        )
    head.scale = cfg.scale
    return head
