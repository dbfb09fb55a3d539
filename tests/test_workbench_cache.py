"""The prefix cache on a model that declares its blocks: CAM++, cut at each dense layer."""

from __future__ import annotations

import numpy as np
import torch

from svlab.evaluate import EvalSet
from svlab.models.campplus import CAMPPlus
from svlab.quant import quantize_model
from svlab.workbench.cache import PrefixCache, default_cache_points
from svlab.workbench.engine import LiveQuantizer

torch.set_num_threads(1)


def small_campplus() -> CAMPPlus:
    """A small CAM++ with random BatchNorm statistics (a fresh one normalises by 0 and 1)."""
    torch.manual_seed(0)
    net = CAMPPlus(feat_dim=16, embed_dim=8, head_width=4, init_channels=16, growth_rate=4,
                   dense_layers=(2, 3, 2))  # fmt: skip
    for module in net.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return net.eval()


def small_evalset() -> EvalSet:
    gen = torch.Generator().manual_seed(1)
    keys = [f"s{s}/v/{u}.wav" for s in range(3) for u in range(3)]
    feats = torch.randn(len(keys), 230, 16, generator=gen)  # longer than one 100-frame segment
    pairs = [(a, b) for i, a in enumerate(keys) for b in keys[i + 1 :]]
    labels = np.array([int(a.split("/")[0] == b.split("/")[0]) for a, b in pairs])
    batches = [feats[:4], feats[4:]]  # used as CAM++'s own front end's features too
    return EvalSet(keys, batches, torch.zeros(len(keys), 16), pairs, labels,
                   other_front_ends={"speakerlab": batches})


def full_forward(model, batches) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(b) for b in batches])


def test_campplus_is_cut_at_each_dense_layer_and_covers_every_weight():
    net = small_campplus()
    points = default_cache_points(net)
    assert points == net.cache_points()
    assert [p for p in points if ".block2." in p] == [f"xvector.block2.tdnnd{i}" for i in (1, 2, 3)]
    owned = [n for n, _ in net.named_parameters() if any(n.startswith(p + ".") for p in points)]
    assert owned == [n for n, _ in net.named_parameters()]


def test_cached_campplus_embeddings_equal_a_full_forward_and_a_late_change_reruns_the_tail():
    net, evalset = small_campplus(), small_evalset()
    cache = PrefixCache(net, evalset.batches)
    assert torch.equal(cache.embed(), full_forward(net, evalset.batches))
    assert cache.order == net.cache_points()
    params = dict(net.named_parameters())
    for name in ["xvector.block3.tdnnd2.cam_layer.linear2.weight",
                 "xvector.block2.tdnnd2.linear1.weight", "xvector.transit1.linear.weight",
                 "head.layer2.0.conv1.weight"]:  # fmt: skip
        with torch.no_grad():
            params[name].mul_(-1.5)
        assert torch.equal(cache.embed([name]), full_forward(net, evalset.batches)), name
        owner = next(p for p in cache.order if name.startswith(p + "."))
        assert cache.last_recomputed == cache.order[cache.order.index(owner) :]
    assert cache.last_recomputed[0] == "head"
    cache.embed(["xvector.block3.tdnnd2.cam_layer.linear2.weight"])
    assert cache.last_recomputed == ["xvector.block3.tdnnd2", "xvector.transit3",
                                     "xvector.out_nonlinear", "xvector.stats", "xvector.dense"]


def test_live_campplus_move_equals_quantize_model_and_rescores_only_the_tail():
    net, evalset = small_campplus(), small_evalset()
    live = LiveQuantizer(net, evalset)
    layer = "xvector.block3.tdnnd1.linear1.weight"
    scores = live.set_bits(layer, 2).scores
    assert live.cache.last_recomputed[0] == "xvector.block3.tdnnd1"
    assert "head" not in live.cache.last_recomputed
    expected = evalset.score(quantize_model(net, {layer: 2}))["scores"]
    np.testing.assert_allclose(scores, expected, atol=1e-6)
