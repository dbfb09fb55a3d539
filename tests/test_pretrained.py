"""Tests for svlab.models.load_pretrained and the front ends: wespeaker's own outputs (fixtures)
and SpeechBrain's ECAPA_TDNN and Fbank as references; bad files; the path through svlab."""

import dataclasses
import json
import zipfile
from pathlib import Path

import pytest
import torch
import torchaudio.compliance.kaldi as kaldi

from svlab import checkpoint
from svlab.data import load_audio
from svlab.evaluate import EvalSet
from svlab.features import fbank, featurize, front_end_of, speechbrain_fbank
from svlab.losses import AAMSoftmax
from svlab.models import build, load_pretrained
from svlab.models.pretrained import PretrainedError, export_state, read_pretrained
from svlab.quant import quantize_model
from svlab.train import TrainConfig, train

from equivalence import hashed_state, rel_err

FIXTURES = Path(__file__).parent / "fixtures"
RESNET_FILE = FIXTURES / "wespeaker_resnet34_m4_avg_model.pt"
IO = torch.load(FIXTURES / "wespeaker_io.pt", weights_only=True)

sb_ecapa = pytest.importorskip("speechbrain.lobes.models.ECAPA_TDNN")
sb_features = pytest.importorskip("speechbrain.lobes.features")
sb_processing = pytest.importorskip("speechbrain.processing.features")


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random biases, BatchNorm scales and shifts, and random BN running statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if not t.dtype.is_floating_point or t.dim() != 1:
                continue
            if name.endswith("running_var") or name.endswith("norm.weight"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.copy_(0.2 * torch.randn(t.shape, generator=g))
    return module.eval()


def embed(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


# ----------------------------------------------------------------------------- wespeaker


def test_wespeaker_resnet34_matches_wespeakers_output():
    loaded = read_pretrained(RESNET_FILE)
    assert (loaded.name, loaded.source) == ("resnet34_wespeaker", "wespeaker")
    assert loaded.overrides == dict(base_width=4, feat_dim=80, embed_dim=16, depths=(3, 4, 6, 3))
    assert rel_err(embed(loaded.model, IO["input"]), IO["resnet34_m4_output"]) <= 1e-5
    assert loaded.model.front_end == "kaldi"
    projection = torch.load(RESNET_FILE, weights_only=True)["projection.weight"]
    assert torch.equal(loaded.head.weight.detach(), projection)


def test_svlab_resnet_with_population_std_would_not_match():
    """The variant is needed: svlab's own ResNet (population std in TSTP) is 2% off here."""
    wespeaker = load_pretrained(RESNET_FILE)
    plain = build("resnet34", base_width=4, embed_dim=16)
    plain.load_state_dict(wespeaker.state_dict())
    assert rel_err(embed(plain, IO["input"]), IO["resnet34_m4_output"]) > 1e-3


@pytest.mark.parametrize("prefix", ["module.", "front.", "module.front."])
def test_wespeaker_prefixes_are_stripped(tmp_path, prefix):
    state = torch.load(RESNET_FILE, weights_only=True)
    torch.save({prefix + k: v for k, v in state.items()}, tmp_path / "avg_model.pt")
    model = load_pretrained(tmp_path / "avg_model.pt")
    assert rel_err(embed(model, IO["input"]), IO["resnet34_m4_output"]) <= 1e-5


def test_wespeaker_ecapa_matches_wespeakers_output(tmp_path):
    torch.save(hashed_state(IO["ecapa_c16_shapes"]), tmp_path / "avg_model.pt")
    loaded = read_pretrained(tmp_path / "avg_model.pt", source="wespeaker")
    assert loaded.name == "ecapa_c512_wespeaker"
    assert loaded.overrides["channels"] == 16 and loaded.overrides["global_context"]
    assert rel_err(embed(loaded.model, IO["input"]), IO["ecapa_c16_output"]) <= 1e-5
    assert loaded.head is None


def test_export_inverts_the_wespeaker_mapping():
    state = torch.load(RESNET_FILE, weights_only=True)
    loaded = read_pretrained(RESNET_FILE)
    exported = export_state(loaded.model, loaded.head)
    assert list(exported) == list(state)
    assert all(torch.equal(exported[k], v) for k, v in state.items())


def test_kaldi_front_end_is_wespeakers():
    """svlab.features.fbank equals wespeaker's compute_fbank + CMN (dither 0 at test time)."""
    wave = 0.1 * torch.randn(16000 + 123, generator=torch.Generator().manual_seed(1))
    ref = kaldi.fbank(
        wave.unsqueeze(0) * (1 << 15),
        num_mel_bins=80,
        frame_length=25,
        frame_shift=10,
        dither=0.0,
        sample_frequency=16000,
        window_type="hamming",
        use_energy=False,
    )
    ref = ref - ref.mean(dim=0)
    assert rel_err(fbank(wave)[0], ref) <= 1e-6


# ----------------------------------------------------------------------------- SpeechBrain

SMALL = dict(
    channels=[16, 16, 16, 16, 48],
    lin_neurons=8,
    attention_channels=8,
    res2net_scale=4,
    se_channels=8,
)
PUBLISHED = dict(
    channels=[1024, 1024, 1024, 1024, 3072],
    lin_neurons=192,
    attention_channels=128,
    res2net_scale=8,
    se_channels=128,
    global_context=True,
)


@pytest.mark.parametrize(
    "config, frames",
    [(SMALL, 120), (dict(SMALL, global_context=False), 50), (PUBLISHED, 40)],
    ids=["small", "small-no-context", "published"],
)
def test_speechbrain_ecapa_matches_speechbrain(tmp_path, config, frames):
    torch.manual_seed(0)
    reference = randomize(sb_ecapa.ECAPA_TDNN(80, **config))
    torch.save(reference.state_dict(), tmp_path / "embedding_model.ckpt")
    loaded = read_pretrained(tmp_path / "embedding_model.ckpt")
    assert (loaded.name, loaded.source, loaded.head) == (
        "ecapa_c1024_speechbrain",
        "speechbrain",
        None,
    )
    assert loaded.overrides["mfa_channels"] == config["channels"][-1]
    x = torch.randn(3, frames, 80)
    with torch.no_grad():
        expected = reference(x).squeeze(1)
    assert rel_err(embed(loaded.model, x), expected) <= 1e-5
    exported = export_state(loaded.model)
    assert list(exported) == list(reference.state_dict())


def test_speechbrain_fbank_matches_speechbrain():
    wave = 0.1 * torch.randn(2, 24000 + 37, generator=torch.Generator().manual_seed(2))
    wave[1, :8000] = 0.0  # silence: the top_db floor is reached
    feats = sb_features.Fbank(n_mels=80)(wave)
    norm = sb_processing.InputNormalization(norm_type="sentence", std_norm=False)
    assert rel_err(speechbrain_fbank(wave), norm(feats, torch.ones(2))) <= 1e-5
    assert rel_err(speechbrain_fbank(wave, cmn=False), feats) <= 1e-5
    assert (feats[1] == feats[1].max() - 80).any()


def test_speechbrain_model_carries_its_front_end(tmp_path):
    torch.save(
        export_state(
            build("ecapa_c1024_speechbrain", channels=8, scale=4, mfa_channels=16, embed_dim=4)
        ),
        tmp_path / "e.ckpt",
    )
    assert front_end_of(load_pretrained(tmp_path / "e.ckpt")) == "speechbrain"


def test_svlab_checkpoints_load_too(tmp_path):
    model = build("resnet18", base_width=2, embed_dim=8)
    checkpoint.save_model(tmp_path / "m.pt", model, "resnet18", {"base_width": 2, "embed_dim": 8})
    loaded = read_pretrained(tmp_path / "m.pt")
    assert (loaded.name, loaded.source) == ("resnet18", "svlab")
    assert torch.equal(loaded.model.embedding.weight, model.embedding.weight)


# ----------------------------------------------------------------------------- bad files


def resnet_state() -> dict:
    return torch.load(RESNET_FILE, weights_only=True)


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="/no/such.pt"):
        load_pretrained("/no/such.pt")


@pytest.mark.parametrize(
    "content, message",
    [
        ([torch.ones(1)], "is not a state dict: it holds a list"),
        ({"conv1.weight": torch.ones(1), "meta": "x"}, "is not a state dict: 'meta' holds a str"),
        ({"encoder.w": torch.ones(1)}, "no known architecture has the key 'encoder.w'"),
    ],
)
def test_not_a_state_dict_or_unknown(tmp_path, content, message):
    torch.save(content, tmp_path / "bad.pt")
    with pytest.raises(PretrainedError, match=f"{tmp_path / 'bad.pt'}.*{message}"):
        load_pretrained(tmp_path / "bad.pt")


def test_a_pickled_module_is_refused(tmp_path):
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")
    with pytest.raises(checkpoint.CheckpointError, match="module.pt holds Python objects other"):
        load_pretrained(tmp_path / "module.pt")


def test_truncated_file(tmp_path):
    data = RESNET_FILE.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(checkpoint.CheckpointError, match="cut.pt is truncated or corrupt"):
        load_pretrained(tmp_path / "cut.pt")
    assert not zipfile.is_zipfile(tmp_path / "cut.pt")


def test_shape_mismatch_names_the_key(tmp_path):
    state = resnet_state()
    state["layer2.1.conv1.weight"] = torch.zeros(8, 8, 3, 1)
    torch.save(state, tmp_path / "avg_model.pt")
    with pytest.raises(PretrainedError, match=r"avg_model.pt: 'layer2.1.conv1.weight' has shape"):
        load_pretrained(tmp_path / "avg_model.pt")


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda s: s.update({"seg_2.weight": torch.zeros(16, 16)}),
            "key 'seg_2.weight' has no place",
        ),
        (lambda s: s.update({"layer1.0.conv3.weight": torch.zeros(1)}), "'layer1.0.conv3.weight'"),
        (lambda s: s.pop("layer3.2.bn2.running_var"), "lacks a tensor for 'stages.2.2.branch.2.1"),
        (lambda s: s.pop("conv1.weight"), "no known architecture has the key 'bn1.weight'"),
        (
            lambda s: s.update({"seg_1.weight": torch.zeros(16)}),
            "'seg_1.weight' has shape \\[16\\]",
        ),
        (
            lambda s: s.update({"projection.weight": torch.zeros(10, 8)}),
            "'projection.weight' has shape",
        ),
    ],
    ids=["two-emb-layer", "bottleneck", "missing", "no-signature", "1-d", "head"],
)
def test_wrong_keys_are_named(tmp_path, change, message):
    state = resnet_state()
    change(state)
    torch.save(state, tmp_path / "avg_model.pt")
    with pytest.raises(PretrainedError, match=f"avg_model.pt.*{message}"):
        load_pretrained(tmp_path / "avg_model.pt")


def test_source_must_agree(tmp_path):
    with pytest.raises(PretrainedError, match="no known architecture of speechbrain"):
        load_pretrained(RESNET_FILE, source="speechbrain")
    with pytest.raises(ValueError, match="source must be one of"):
        load_pretrained(RESNET_FILE, source="kaldi")


# ----------------------------------------------------------------------------- through svlab


def stand_in(tmp_path: Path, fmt: str, n_head: int | None = None) -> Path:
    """A random small model saved as its toolkit saves it (wespeaker: with an AAM head)."""
    torch.manual_seed(3)
    if fmt == "wespeaker":
        model = build("resnet34_wespeaker", depths=(1, 1, 1, 1), base_width=4, embed_dim=8)
        path, head = tmp_path / "avg_model.pt", AAMSoftmax(8, n_head or 10)
    else:
        model = build(
            "ecapa_c1024_speechbrain",
            channels=8,
            scale=4,
            se_channels=4,
            mfa_channels=16,
            attention_channels=4,
            embed_dim=8,
        )
        path, head = tmp_path / "embedding_model.ckpt", None
    torch.save(export_state(randomize(model), head), path)
    return path


def tiny_train_config(corpus, out_dir, **changes) -> TrainConfig:
    values = dict(
        data_root=str(corpus),
        crop_frames=20,
        batch_size=4,
        epochs=1,
        lr=0.01,
        final_lr=0.001,
        warmup_epochs=0.0,
        eval_every=0,
        log_every=1,
        stop_after_steps=2,
        out_dir=str(out_dir),
    )
    values.update(changes)
    return TrainConfig(**values)


@pytest.mark.parametrize("fmt", ["wespeaker", "speechbrain"])
def test_a_loaded_model_goes_through_svlab(training_corpus, tmp_path, capsys, fmt):
    from svlab.cli import main
    from svlab.quant import load_packed, model_size, plan_bits, quantizers, save_packed
    from svlab.quant.msft import msft
    from svlab.workbench.engine import LiveQuantizer

    torch.set_num_threads(1)
    path = stand_in(tmp_path, fmt)
    loaded = read_pretrained(path)
    model, front_end = loaded.model, "kaldi" if fmt == "wespeaker" else "speechbrain"
    evalset = EvalSet.from_corpus(training_corpus)
    assert evalset.embed(model)[evalset.keys[0]].shape == (8,)
    first = evalset.batches_for(front_end)[0][0]  # the model's own features, cut to the batch
    wave = load_audio(evalset.audio_dir / evalset.keys[0])
    assert torch.equal(first, featurize(wave, front_end)[0][: len(first)])

    argv = [
        "evaluate",
        str(path),
        "--root",
        str(training_corpus),
        "--backend",
        "asnorm",
        "--cohort",
        str(training_corpus / "train.txt"),
        "--top-n",
        "3",
        "--resamples",
        "100",
    ]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["front_end"], report["backend"], report["source"]) == (front_end, "asnorm", fmt)
    low, high = report["eer_interval_percent"]
    assert 0.0 <= low <= report["eer_percent"] <= high <= 100.0  # 2 test speakers: may be one point

    q = quantize_model(model, 4)
    assert front_end_of(q) == front_end and 0.0 <= evalset.score(q)["eer"] <= 1.0
    names = list(quantizers(q))
    sensitivity = {n: {2: float(i), 4: i / 10, 8: 0.0} for i, n in enumerate(names)}
    budget = model_size(model, dict.fromkeys(names, 4))
    bits = plan_bits(model, sensitivity, size=budget, choices=(2, 4, 8))
    assert set(bits) == set(names) and model_size(model, bits) <= budget

    packed = save_packed(q, tmp_path / "q.svq", name=loaded.name, overrides=loaded.overrides)
    back = load_packed(packed, loaded.name)
    x = evalset.batches_for(front_end)[0]
    assert torch.equal(embed(back, x), embed(q, x)) and front_end_of(back) == front_end

    cfg = tiny_train_config(training_corpus, tmp_path / "msft")
    tuned, history = msft(model, dict.fromkeys(names, 4), "deep_to_shallow", cfg, n_stages=2,
                          trainer=lambda c, m: train(c, model=m, progress=False))  # fmt: skip
    assert len(history) == 2 and set(quantizers(tuned)) == set(names)

    view = dataclasses.replace(evalset, batches=evalset.batches_for(front_end))
    layer = names[-2]
    live = LiveQuantizer(model, view).set_bits(layer, 2)
    assert live.eer == evalset.score(quantize_model(model, {layer: 2}))["eer"]

    recipe = tmp_path / "r.toml"
    recipe.write_text(
        f"model = 'resnet18'\ndata_root = '{training_corpus}'\ncrop_frames = 20\n"
        "batch_size = 4\nepochs = 1\nlr = 0.01\neval_every = 0\n"
    )
    sets = [f"init_from='{path}'", f"out_dir='{tmp_path / 'ft'}'"]
    argv = ["train", "--config", str(recipe), "--quiet"]
    assert main(argv + [arg for s in sets for arg in ("--set", s)]) == 0
    tuned, head, name, _ = checkpoint.load_trained(tmp_path / "ft" / "model.pt")
    assert name == loaded.name and front_end_of(tuned) == front_end
    assert head.weight.shape == (4, 8)  # imprinted for the corpus's 4 speakers
    assert not torch.equal(tuned.embedding.weight, model.embedding.weight)


def test_wespeakers_head_is_kept_when_it_fits(training_corpus, tmp_path):
    """A wespeaker file whose projection has one row per training speaker starts from it."""
    path = stand_in(tmp_path, "wespeaker", n_head=4)
    projection = torch.load(path, weights_only=True)["projection.weight"]
    cfg = tiny_train_config(
        training_corpus,
        tmp_path / "ft",
        init_from=str(path),
        lr=1e-6,
        final_lr=1e-7,
        stop_after_steps=1,
    )
    result = train(cfg, progress=False)
    assert torch.allclose(result.head.weight.detach(), projection, atol=1e-4)
    imprinted = stand_in(tmp_path, "wespeaker", n_head=5)  # 5 speakers: the corpus has 4
    cfg = dataclasses.replace(cfg, init_from=str(imprinted), out_dir=str(tmp_path / "ft5"))
    assert not torch.allclose(train(cfg, progress=False).head.weight[:4], projection, atol=0.1)
