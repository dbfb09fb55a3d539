"""Tests of multi-stage fine-tuning: stage order, freezing, bits, and bad stage lists."""

import pytest
import torch
from torch import nn

from svlab.quant import quantizers
from svlab.quant.msft import check_stages, make_stages, msft

BITS = {"0.weight": 2, "2.weight": 4, "4.weight": 3, "6.weight": 1}


def net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 16),
        nn.ReLU(),
        nn.Linear(16, 16),
        nn.ReLU(),
        nn.Linear(16, 8),
        nn.ReLU(),
        nn.Linear(8, 3),
    )


class RecordingTrainer:
    """A few SGD steps on a fixed regression task; records what each call saw."""

    def __init__(self, steps=5):
        g = torch.Generator().manual_seed(1)
        self.x, self.y = torch.randn(64, 6, generator=g), torch.randn(64, 3, generator=g)
        self.steps, self.calls = steps, []

    def __call__(self, cfg, model):
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        self.calls.append({"quantized": sorted(quantizers(model)), "trainable": trainable})
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
        for _ in range(self.steps):
            optimizer.zero_grad()
            ((model(self.x) - self.y) ** 2).mean().backward()
            optimizer.step()


def weight(model, i):
    return model[i].weight.detach().clone()


def test_stages_quantize_in_order_with_the_mapped_bits():
    trainer = RecordingTrainer()
    stages = [["4.weight", "6.weight"], ["0.weight"], ["2.weight"]]
    model, history = msft(net(), BITS, stages, None, trainer=trainer)
    assert [c["quantized"] for c in trainer.calls] == [
        ["4.weight", "6.weight"],
        ["0.weight", "4.weight", "6.weight"],
        ["0.weight", "2.weight", "4.weight", "6.weight"],
    ]
    assert {name: q.bits for name, q in quantizers(model).items()} == BITS
    for i, bits in [(0, 2), (2, 4), (4, 3), (6, 1)]:
        assert model[i].weight.unique().numel() <= 2**bits
    assert [h["layers"] for h in history] == stages
    assert [h["bits"] for h in history] == [[3, 1], [2], [4]]
    assert [h["quantized_layers"] for h in history] == [2, 3, 4]


def test_frozen_stages_stay_put_and_full_precision_layers_learn():
    trainer = RecordingTrainer()
    original = net()
    stages = [["0.weight"], ["2.weight"], ["4.weight", "6.weight"]]
    snapshots = []

    def evaluate(model):
        snapshots.append(weight(model, 0))
        return len(snapshots)

    model, history = msft(original, BITS, stages, None, trainer=trainer, eval_fn=evaluate)
    assert [h["eval"] for h in history] == [1, 2, 3]
    assert all(torch.equal(s, snapshots[0]) for s in snapshots)  # stage 1 frozen from then on
    first = trainer.calls[0]["trainable"]
    assert "0.parametrizations.weight.original" not in first
    assert "2.weight" in first and "0.bias" in first
    assert "2.parametrizations.weight.original" not in trainer.calls[1]["trainable"]
    assert not torch.equal(weight(model, 2), weight(original, 2))


def test_without_freezing_quantized_layers_keep_training():
    trainer = RecordingTrainer(steps=20)
    stages = [["0.weight"], ["2.weight", "4.weight", "6.weight"]]
    snapshots = []
    msft(
        net(),
        BITS,
        stages,
        None,
        trainer=trainer,
        freeze_quantized=False,
        eval_fn=lambda m: snapshots.append(m[0].parametrizations.weight.original.detach().clone()),
    )
    assert "0.parametrizations.weight.original" in trainer.calls[1]["trainable"]
    assert not torch.equal(snapshots[0], snapshots[1])


def test_make_stages_orders():
    sensitivity = {
        "0.weight": {2: 0.3},
        "2.weight": {4: 0.01},
        "4.weight": {3: 0.2},
        "6.weight": {1: 5.0},
    }
    assert make_stages(BITS, "shallow_to_deep", 2) == [
        ["0.weight", "2.weight"],
        ["4.weight", "6.weight"],
    ]
    assert make_stages(BITS, "deep_to_shallow", 3) == [
        ["6.weight", "4.weight"],
        ["2.weight"],
        ["0.weight"],
    ]
    assert make_stages(BITS, "sensitive_first", 4, sensitivity) == [
        ["6.weight"],
        ["0.weight"],
        ["4.weight"],
        ["2.weight"],
    ]
    assert make_stages(BITS, "sensitive_last", 1, sensitivity) == [
        ["2.weight", "4.weight", "0.weight", "6.weight"]
    ]
    trainer = RecordingTrainer()
    msft(net(), BITS, "sensitive_first", None, n_stages=2, sensitivity=sensitivity, trainer=trainer)
    assert trainer.calls[0]["quantized"] == ["0.weight", "6.weight"]


@pytest.mark.parametrize(
    "stages, message",
    [
        (
            [["0.weight", "2.weight"], ["4.weight"]],
            r"leave out layers of the bit map: \['6.weight'\]",
        ),
        (
            [["0.weight", "2.weight"], ["4.weight", "6.weight", "2.weight"]],
            "'2.weight' is in stage 1 and again in stage 2",
        ),
        (
            [["0.weight", "2.weight", "4.weight", "6.weight", "8.weight"]],
            "stage 1 names '8.weight'",
        ),
        ([["0.weight", "2.weight", "4.weight", "6.weight"], []], "stage 2 must be a non-empty"),
        ([], "non-empty list"),
        ("0.weight", "order must be one of"),
    ],
)
def test_bad_stages(stages, message):
    trainer = RecordingTrainer()
    with pytest.raises(ValueError, match=message):
        msft(net(), BITS, stages, None, trainer=trainer)
    assert trainer.calls == []  # nothing trained before the error


def test_bad_bit_maps_and_orders():
    trainer = RecordingTrainer()
    with pytest.raises(ValueError, match="names no layer; quantizable weights are"):
        msft(net(), {}, [["0.weight"]], None, trainer=trainer)
    with pytest.raises(ValueError, match=r"names \['0.bias'\], not quantizable"):
        msft(net(), {"0.bias": 4}, [["0.bias"]], None, trainer=trainer)
    with pytest.raises(ValueError, match="bits for 0.weight must be an integer in 1..8"):
        msft(net(), {"0.weight": 9}, [["0.weight"]], None, trainer=trainer)
    with pytest.raises(ValueError, match="needs the sensitivity table"):
        make_stages(BITS, "sensitive_first", 2)
    with pytest.raises(ValueError, match=r"n_stages must be in 1..4"):
        make_stages(BITS, "shallow_to_deep", 5)
    with pytest.raises(
        ValueError, match=r"no sensitivity at the mapped bits for layers \['0.weight'\]"
    ):
        make_stages(
            BITS,
            "sensitive_last",
            2,
            {k: {b: 1.0} for k, b in BITS.items()} | {"0.weight": {8: 1.0}},
        )
    with pytest.raises(ValueError, match="lacks"):
        check_stages({"a": 1}, [["b"]])
    assert trainer.calls == []


def test_fine_tuner_starts_each_call_from_a_copy_of_the_given_head(training_corpus, tmp_path):
    from svlab.losses import AAMSoftmax
    from svlab.models import build
    from svlab.quant import quantize_model
    from svlab.quant.finetune import fine_tuner
    from svlab.train import ConfigError

    torch.manual_seed(0)
    model = build("resnet18", base_width=2, depths=[1, 1, 1, 1], embed_dim=8)
    head = AAMSoftmax(8, 4)  # the corpus's 4 training speakers
    kept = head.weight.detach().clone()
    tuner = fine_tuner(data_root=training_corpus, batch_size=4, crop_frames=20,
                       out_dir=tmp_path / "ft", head=head)  # fmt: skip
    quantized = quantize_model(model, 4)
    latent = quantized.get_parameter("stem.0.0.parametrizations.weight.original")
    before = latent.detach().clone()
    for _ in range(2):
        assert tuner(2, quantized) is quantized and not quantized.training
    assert torch.equal(head.weight, kept) and not torch.equal(before, latent)
    wrong = fine_tuner(data_root=training_corpus, batch_size=4, crop_frames=20,
                       out_dir=tmp_path / "x", head=AAMSoftmax(8, 3))  # fmt: skip
    with pytest.raises(ConfigError, match="this corpus has 4 speakers"):
        wrong(1, quantized)
    imprinting = fine_tuner(data_root=training_corpus, batch_size=4, crop_frames=20,
                            out_dir=tmp_path / "i")  # fmt: skip
    assert imprinting(1, quantized) is quantized
