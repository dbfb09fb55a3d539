"""Tests for svlab.losses: AAM-softmax against a direct angle computation, and the margin ramp."""

import math

import numpy as np
import pytest
import torch

from svlab.losses import AAMSoftmax, margin_ramp


def reference_aam(emb, weight, labels, scale, margin):
    """Per-sample angles with numpy: target logit s*cos(theta + m) (theta + m < pi)."""
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    w = weight / np.linalg.norm(weight, axis=1, keepdims=True)
    losses = []
    for i, y in enumerate(labels):
        cos = w @ e[i]
        logits = scale * cos
        theta = math.acos(cos[y])
        assert theta + margin < math.pi
        logits[y] = scale * math.cos(theta + margin)
        logits -= logits.max()
        losses.append(-logits[y] + math.log(np.exp(logits).sum()))
    return float(np.mean(losses))


@pytest.mark.parametrize("margin", [0.0, 0.2, 0.5])
def test_matches_angle_reference(margin):
    torch.manual_seed(0)
    loss_fn = AAMSoftmax(embed_dim=6, n_classes=5, scale=32.0, margin=margin).double()
    emb = torch.randn(8, 6, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    ref = reference_aam(emb.numpy(), loss_fn.weight.detach().numpy(), labels.numpy(), 32.0, margin)
    assert loss_fn(emb, labels).item() == pytest.approx(ref, rel=1e-9)


def test_margin_zero_is_normalized_softmax():
    torch.manual_seed(1)
    loss_fn = AAMSoftmax(4, 3, scale=10.0, margin=0.0)
    emb, labels = torch.randn(5, 4), torch.tensor([0, 1, 2, 1, 0])
    cos = torch.nn.functional.normalize(emb) @ torch.nn.functional.normalize(loss_fn.weight).T
    ref = torch.nn.functional.cross_entropy(10.0 * cos, labels)
    assert torch.allclose(loss_fn(emb, labels), ref, atol=1e-6)


def test_margin_makes_the_loss_larger_and_past_pi_stays_monotonic():
    torch.manual_seed(2)
    loss_fn = AAMSoftmax(4, 3)
    emb, labels = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    loss_fn.margin = 0.0
    plain = loss_fn(emb, labels)
    loss_fn.margin = 0.2
    assert loss_fn(emb, labels) > plain
    # an embedding opposite its centre: the target logit is the lowest possible
    opposite = -loss_fn.weight.detach()[:1]
    target = loss_fn.logits(opposite, torch.tensor([0]))[0, 0]
    assert target.item() == pytest.approx(32 * (-1 - 0.2 * math.sin(0.2)), rel=1e-5)


def test_gradients_reach_embeddings_and_centres():
    loss_fn = AAMSoftmax(4, 3)
    emb = torch.randn(5, 4, requires_grad=True)
    loss_fn(emb, torch.tensor([0, 1, 2, 1, 0])).backward()
    assert emb.grad.abs().sum() > 0 and loss_fn.weight.grad.abs().sum() > 0


def test_labels_out_of_range_are_rejected():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        AAMSoftmax(4, 3)(torch.randn(2, 4), torch.tensor([0, 3]))


def test_margin_ramp():
    assert margin_ramp(0, 0.2, 2, 4) == 0.0
    assert margin_ramp(3, 0.2, 2, 4) == pytest.approx(0.1)
    assert margin_ramp(10, 0.2, 2, 4) == 0.2
    assert margin_ramp(5, 0.2, 0, 0) == 0.2


def test_imprinted_head_points_at_class_means_and_needs_every_class():
    torch.manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(3, 16), dim=1)
    labels = torch.arange(3).repeat_interleave(20)
    embeddings = (centres[labels] + 0.1 * torch.randn(60, 16)) * torch.rand(60, 1) * 5
    head = AAMSoftmax.imprinted(embeddings, labels)
    cosine = head.weight.detach() @ centres.T
    assert torch.equal(cosine.argmax(dim=1), torch.arange(3)) and cosine.diagonal().min() > 0.98
    assert head(embeddings, labels) < AAMSoftmax(16, 3)(embeddings, labels)
    with pytest.raises(ValueError, match=r"classes \[3\] have none"):
        AAMSoftmax.imprinted(embeddings, labels, n_classes=4)
