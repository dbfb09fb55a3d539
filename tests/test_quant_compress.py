"""svlab.quant.compress: label-free post-training quantization, each step against brute force
or autograd, bad calibration input, the input model untouched, the result usable downstream."""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from svlab.models import build
from svlab.quant import load_packed, quantize_model, quantizers, save_packed
from svlab.quant.calibration import (
    CalibrationError,
    check_calibration,
    columns_of,
    embedding_fisher,
    input_statistics,
)
from svlab.quant.compress import compress, correct_batchnorm, gptq_round
from svlab.quant.kmeans import weighted_cluster_rows


def small_model() -> nn.Module:
    torch.manual_seed(0)
    model = build("campplus", feat_dim=16, embed_dim=8, head_width=4, init_channels=16,
                  growth_rate=4, dense_layers=(2, 2, 2))  # fmt: skip
    with torch.no_grad():  # BatchNorm statistics as a trained model has them, not 0 / 1
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.normal_(0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def calibration(n: int = 3) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(4, 120, 16, generator=generator) for _ in range(n)]


def embedding_error(quantized: nn.Module, reference: nn.Module, batches) -> float:
    with torch.no_grad():
        return float(sum((1 - F.cosine_similarity(quantized(b), reference(b))).mean()
                         for b in batches) / len(batches))  # fmt: skip


@pytest.mark.parametrize(
    "bad, message",
    [
        ([], "empty"),
        ([torch.randn(4, 120)], r"shape \[4, 120\]"),
        ([torch.randn(4, 120, 16), torch.randn(4, 120, 20)], "batch 1 has 20 bins"),
        ([torch.full((4, 120, 16), float("nan"))], "NaN"),
        ([torch.randn(4, 120, 20)] * 2, "does not accept"),
        ([torch.zeros(4, 120, 16, dtype=torch.int64)], "not a float tensor"),
        (["features.npy"], "is a str"),
    ],
)
def test_bad_calibration_input_gets_a_named_error(bad, message):
    with pytest.raises(CalibrationError, match=message):
        compress(small_model(), 4, bad)


def test_the_input_model_is_untouched():
    model = small_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    compress(model, 3, calibration(), distill_steps=2)
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert not quantizers(model) and not model.training


def test_compress_beats_plain_kmeans_on_held_out_features():
    model, held_out = small_model(), calibration(5)[3:]
    plain = quantize_model(model, 2, granularity="channel")
    compressed = compress(model, 2, calibration(3))
    assert embedding_error(compressed, model, held_out) < 0.8 * embedding_error(
        plain, model, held_out
    )


def test_result_saves_packed_and_loads_back_exactly(tmp_path):
    model = small_model()
    compressed = compress(model, 3, calibration(), granularity="tensor")
    save_packed(compressed, tmp_path / "q.svq")
    loaded = load_packed(tmp_path / "q.svq", model)
    x = calibration(1)[0]
    with torch.no_grad():
        assert torch.allclose(loaded(x), compressed(x), atol=1e-5)


@pytest.mark.parametrize("layer", [
    nn.Linear(5, 3),
    nn.Conv1d(4, 3, 3, stride=2, padding=2, dilation=2),
    nn.Conv2d(2, 3, 3, stride=(2, 1), padding=1),
])  # fmt: skip
def test_input_columns_times_the_weight_are_the_layers_output(layer):
    torch.manual_seed(0)
    x = {nn.Linear: torch.randn(2, 7, 5), nn.Conv1d: torch.randn(2, 4, 11),
         nn.Conv2d: torch.randn(2, 2, 6, 5)}[type(layer)]  # fmt: skip
    columns = columns_of(layer, x)
    product = columns @ layer.weight.reshape(layer.weight.shape[0], -1).T + layer.bias
    output = layer(x) if isinstance(layer, nn.Linear) else layer(x).movedim(1, -1)
    assert torch.allclose(product, output.reshape(-1, 3), atol=1e-5)
    mean, second = input_statistics(nn.Sequential(layer), [x], ["0.weight"])["0.weight"]
    assert torch.allclose(second, columns.double().T @ columns.double() / columns.shape[0])
    assert torch.allclose(mean, columns.double().mean(dim=0))


def test_gptq_is_nearest_rounding_when_inputs_are_uncorrelated():
    torch.manual_seed(0)
    weight, levels = torch.randn(6, 10), torch.linspace(-1.5, 1.5, 4).expand(6, 4)
    hessian = torch.diag(torch.rand(10) + 0.5)
    nearest = levels.gather(1, (weight.unsqueeze(2) - levels.unsqueeze(1)).abs().argmin(2))
    assert torch.equal(gptq_round(weight, hessian, levels, damping=0.0), nearest)


def test_gptq_comes_near_the_brute_force_optimum_on_small_correlated_layers():
    levels, ratios, gains = torch.tensor([[-1.0, 0.0, 1.0]]), [], []
    for seed in range(40):
        torch.manual_seed(seed)
        weight, x = torch.randn(1, 4), torch.randn(4, 200)
        x[1] = x[0] + 0.2 * x[1]
        x[3] = x[2] - 0.3 * x[3]
        hessian = x @ x.T / 200

        def error(q, weight=weight, hessian=hessian):
            d = (q - weight).double()
            return float(d @ hessian.double() @ d.T)

        best = min(error(torch.tensor([c])) for c in itertools.product([-1.0, 0.0, 1.0], repeat=4))
        nearest = levels.gather(1, (weight.unsqueeze(2) - levels.unsqueeze(1)).abs().argmin(2))
        gptq = error(gptq_round(weight, hessian, levels, damping=0.0))
        assert gptq >= best - 1e-12
        ratios.append(gptq / best)
        gains.append(error(nearest) / gptq)
    assert np.mean(ratios) < 1.2 and np.mean(gains) > 1.5


def test_weighted_kmeans_equals_brute_force_over_contiguous_splits():
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(1, 9, generator=generator).double()
    weights = torch.rand(1, 9, generator=generator).double() * 5
    order = values[0].argsort()
    v, w = values[0][order].numpy(), weights[0][order].numpy()

    def cost(split):
        total = 0.0
        for part in np.split(np.arange(9), split):
            centre = (w[part] * v[part]).sum() / w[part].sum()
            total += (w[part] * (v[part] - centre) ** 2).sum()
        return total

    best = min(cost(list(s)) for s in itertools.combinations(range(1, 9), 2))
    levels = weighted_cluster_rows(values, weights, 3)[0].numpy()
    nearest = np.abs(v[:, None] - levels[None]).argmin(1)
    assert (w * (v - levels[nearest]) ** 2).sum() == pytest.approx(best, rel=1e-9)


def test_embedding_fisher_matches_the_exact_jacobian_diagonal():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3))
    x = torch.randn(2, 3)
    estimate = embedding_fisher(model, [x], ["0.weight"], probes=4000)["0.weight"]
    weight = model[0].weight

    def normalised(w):
        hidden = torch.tanh(x @ w.T + model[0].bias)
        return F.normalize(model[2](hidden), dim=-1)

    jacobian = torch.autograd.functional.jacobian(normalised, weight.detach())  # [2, 3, 4, 3]
    exact = (jacobian**2).sum(dim=(0, 1))
    assert torch.allclose(estimate, exact, rtol=0.15, atol=1e-4 * float(exact.max()))


def test_batchnorm_correction_restores_the_fp32_statistics_downstream():
    model = small_model()
    quantized = quantize_model(model, 2, granularity="channel")
    batches = calibration()
    corrected = correct_batchnorm(quantize_model(model, 2, granularity="channel"), model, batches)
    name = "xvector.dense.nonlinear.batchnorm"
    means = {}
    for label, net in (("fp32", model), ("plain", quantized), ("corrected", corrected)):
        with torch.no_grad():
            means[label] = torch.cat([net(b) for b in batches]).mean(dim=0)
    assert corrected.get_submodule(name).running_mean.shape == (8,)
    assert (means["corrected"] - means["fp32"]).norm() < (means["plain"] - means["fp32"]).norm()


def test_check_calibration_accepts_one_tensor_as_one_batch():
    assert len(check_calibration(small_model(), torch.randn(2, 50, 16))) == 1
