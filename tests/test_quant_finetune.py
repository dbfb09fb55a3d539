"""Fine-tuning through the quantizer with svlab.train; the outlier demo keeps the function."""

import pytest
import torch
from torch import nn

from svlab.models import build
from svlab.quant import latent_weight, quantize_model, quantizers, sse
from svlab.quant.finetune import finetune, finetune_config
from svlab.quant.outliers import LSTMEncoder, with_outlier_inputs
from svlab.train import TrainConfig

torch.set_num_threads(1)


@pytest.fixture
def corpus(training_corpus):
    return training_corpus


def test_finetune_trains_latent_weights_and_codebooks_and_stays_quantized(corpus, tmp_path):
    torch.manual_seed(0)
    model = build("resnet18", base_width=2, depths=[1, 1, 1, 1], embed_dim=8)
    quantized = quantize_model(model, 2)
    before = {
        n: (latent_weight(quantized, n).detach().clone(), q.codebook.detach().clone())
        for n, q in quantizers(quantized).items()
    }
    base = TrainConfig(model="resnet18", data_root=str(corpus), crop_frames=20, batch_size=4)
    cfg = finetune_config(base, epochs=1, out_dir=str(tmp_path), lr=0.05)
    assert cfg.margin_end_epoch == 0 and cfg.eval_every == 0
    assert finetune(quantized, cfg) is quantized and not quantized.training
    moved_latent = moved_codebook = 0
    for name, quantizer in quantizers(quantized).items():
        latent, codebook = before[name]
        moved_latent += not torch.equal(latent, latent_weight(quantized, name))
        moved_codebook += not torch.equal(codebook, quantizer.codebook)
        module_name, _, attr = name.rpartition(".")
        values = getattr(quantized.get_submodule(module_name), attr).detach()
        assert len(values.unique()) <= 4, name
    assert moved_latent == moved_codebook == len(before)


def test_outlier_inputs_keep_the_function_and_hurt_one_codebook_per_tensor():
    torch.manual_seed(0)
    model = LSTMEncoder(n_mels=40, hidden=32, embed_dim=8).eval()
    outliers = with_outlier_inputs(model, "lstm.weight_ih_l0", max_weight=60.0).eval()
    x = torch.randn(3, 20, 40)
    torch.testing.assert_close(outliers(x), model(x), rtol=1e-4, atol=1e-5)
    weight = outliers.model.lstm.weight_ih_l0.detach()
    assert weight.abs().max().item() == pytest.approx(60.0)
    assert (weight.abs() > 10).sum() <= 2 * weight.shape[0]  # two columns of outliers
    per_tensor = quantizers(quantize_model(outliers, 4))["model.lstm.weight_ih_l0"]
    per_row = quantizers(quantize_model(outliers, 4, granularity="channel"))[
        "model.lstm.weight_ih_l0"
    ]
    bulk = weight.abs() < 10
    err_tensor = sse(weight[bulk], per_tensor.levels()[0])
    levels = per_row.levels()
    err_rows = sum(sse(weight[r][bulk[r]], levels[r]) for r in range(weight.shape[0]))
    assert err_rows < err_tensor / 10


def test_outlier_inputs_work_on_an_ecapa_input_conv_and_name_bad_weights():
    torch.manual_seed(0)
    ecapa = build("ecapa_c512", channels=16, mfa_channels=24, embed_dim=8, scale=4).eval()
    first = next(n for n, p in ecapa.named_parameters() if p.dim() == 3)
    outliers = with_outlier_inputs(ecapa, first).eval()
    x = torch.randn(2, 50, 80)
    torch.testing.assert_close(outliers(x), ecapa(x), rtol=1e-3, atol=1e-4)
    with pytest.raises(ValueError, match="no parameter 'nope.weight'"):
        with_outlier_inputs(ecapa, "nope.weight")
    with pytest.raises(ValueError, match="no input-channel dimension"):
        with_outlier_inputs(nn.Sequential(nn.LayerNorm(4)), "0.weight")


def test_finetune_refuses_a_plain_model():
    with pytest.raises(ValueError, match="quantized model"):
        finetune(nn.Linear(2, 2), None)


@pytest.mark.slow
def test_four_bit_tutorial_resnet_fine_tuned_from_its_head_is_within_half_a_point_of_fp32():
    """The issue's target, on the committed checkpoint: 4-bit k-means, one epoch of fine-tuning
    from the trained AAM head, EER at most 0.5% (absolute) above fp32's."""
    import tempfile

    from svlab import checkpoint
    from svlab.evaluate import EvalSet
    from svlab.profiles import REPO_ROOT, get_profile

    path = REPO_ROOT / "checkpoints" / "tutorial_resnet.pt"
    fp32 = checkpoint.load_model(path).eval()
    eval_set = EvalSet.from_corpus(get_profile("ci").ensure_corpus())
    torch.manual_seed(0)
    quantized = quantize_model(fp32, 4)
    recipe = TrainConfig.from_toml(REPO_ROOT / "configs" / "tutorial_resnet.toml", "ci")
    cfg = finetune_config(recipe, epochs=1, out_dir=tempfile.mkdtemp(), threads=1)
    finetune(quantized, cfg, head=checkpoint.load_head(path))
    assert eval_set.score(quantized)["eer"] <= eval_set.score(fp32)["eer"] + 0.005
