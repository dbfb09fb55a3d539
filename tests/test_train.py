"""Tests for svlab.train: configs, schedules, data order, exact resume, NaN loss, DDP."""

import dataclasses
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from svlab import checkpoint
from svlab.checkpoint import load_model
from svlab.models import build
from svlab.train import (
    ConfigError,
    SpeakerCrops,
    TrainConfig,
    TrainingError,
    imprint_head,
    learning_rate,
    train,
)
from svlab.train.state import TrainingInterrupted

torch.set_num_threads(1)

TINY_MODEL = {"base_width": 2, "depths": [1, 1, 1, 1], "embed_dim": 8}


@pytest.fixture
def corpus(training_corpus):
    return training_corpus


def tiny_config(corpus, out_dir, **changes):
    values = dict(
        name="tiny",
        model="resnet18",
        model_args=dict(TINY_MODEL),
        data_root=str(corpus),
        crop_frames=20,
        batch_size=4,
        epochs=3,
        lr=0.05,
        final_lr=0.005,
        warmup_epochs=1.0,
        margin_start_epoch=0.5,
        margin_end_epoch=2.0,
        eval_every=2,
        log_every=2,
        checkpoint_every=100,
        out_dir=str(out_dir),
    )
    values.update(changes)
    return TrainConfig(**values)


def test_toml_profiles_sets_and_errors(tmp_path):
    path = tmp_path / "recipe.toml"
    path.write_text(
        'model = "resnet34"\nlr = 0.1\n[model_args]\nbase_width = 32\n'
        "[profiles.ci]\nlr = 0.5\nepochs = 2\n[profiles.ci.model_args]\nembed_dim = 8\n"
    )
    cfg = TrainConfig.from_toml(path, "ci", ["model_args.base_width=4", "optimizer=adam8bit"])
    assert (cfg.lr, cfg.epochs, cfg.optimizer, cfg.profile, cfg.name) == (
        0.5,
        2,
        "adam8bit",
        "ci",
        "recipe",
    )
    assert cfg.model_args == {"base_width": 4, "embed_dim": 8}
    assert TrainConfig.from_toml(path, "gpu").lr == 0.1
    with pytest.raises(ConfigError, match="'lrate'"):
        TrainConfig.from_toml(path, "ci", ["lrate=1"])
    with pytest.raises(ConfigError, match="epochs must be int"):
        TrainConfig.from_toml(path, "ci", ["epochs=2.5"])
    with pytest.raises(ValueError, match="unknown profile"):
        TrainConfig.from_toml(path, "cluster")
    path.write_text("[profiles.ci]\nbatchsize = 3\n")
    with pytest.raises(ConfigError, match=f"{path}: unknown key 'batchsize'"):
        TrainConfig.from_toml(path, "ci")


def test_learning_rate_warms_up_then_decays_exponentially():
    cfg = TrainConfig(lr=0.1, final_lr=0.001, warmup_epochs=2)
    lrs = [learning_rate(cfg, s, 100, 10) for s in range(100)]
    assert lrs[0] < lrs[10] < lrs[19]
    assert lrs[19] == pytest.approx(0.1 * 0.01 ** (19 / 100))
    ratios = [b / a for a, b in zip(lrs[20:], lrs[21:], strict=False)]
    assert max(ratios) == pytest.approx(min(ratios))


def test_batches_are_reproducible_and_partition_over_ranks(corpus):
    crops = SpeakerCrops.from_corpus(corpus, crop_frames=20, seed=3)
    feats, labels = crops.batch(1, 2, 4)
    again, _ = crops.batch(1, 2, 4)
    assert torch.equal(feats, again) and feats.shape == (4, 20, 80)
    assert not torch.equal(feats, crops.batch(2, 2, 4)[0])
    halves = [crops.batch(1, 2, 4, rank=r, world=2) for r in (0, 1)]
    assert torch.equal(torch.cat([halves[0][0], halves[1][0]]), feats[[0, 2, 1, 3]])
    assert torch.equal(torch.cat([halves[0][1], halves[1][1]]), labels[[0, 2, 1, 3]])
    # crops are mean-normalised, as fbank of the cropped audio would be
    assert feats.mean(dim=1).abs().max() < 1e-4
    # each epoch visits every utterance once
    seen = torch.cat([crops.batch(0, b, 4)[1] for b in range(crops.batches_per_epoch(4))])
    assert sorted(seen.tolist()) == sorted(crops.labels.tolist())


def test_online_crops_match_features_shape(corpus):
    crops = SpeakerCrops.from_corpus(corpus, crop_frames=20, precompute=False, dither=1.0)
    feats, labels = crops.batch(0, 0, 4)
    assert feats.shape == (4, 20, 80) and torch.isfinite(feats).all()
    assert torch.equal(feats, crops.batch(0, 0, 4)[0])


@pytest.mark.parametrize("optimizer", ["sgd", "adam8bit"])
def test_interrupted_and_resumed_equals_uninterrupted(corpus, tmp_path, optimizer):
    full = train(tiny_config(corpus, tmp_path / "full", optimizer=optimizer), progress=False)
    cut = tiny_config(corpus, tmp_path / "cut", optimizer=optimizer, stop_after_steps=5)
    first = train(cut, progress=False)
    assert first.history["step"].max() <= 5
    resumed = train(dataclasses.replace(cut, stop_after_steps=0), resume=True, progress=False)
    for (name, a), b in zip(
        full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    assert torch.equal(full.head.weight, resumed.head.weight)
    columns = ["step", "lr", "margin", "loss", "accuracy", "eer", "min_dcf"]
    assert full.history[columns].equals(resumed.history[columns])
    assert not full.evaluations.empty
    # the finished run's model file rebuilds the architecture with its weights
    model = load_model(tmp_path / "full" / "model.pt", "resnet18")
    assert torch.equal(model.embedding.weight, full.model.embedding.weight)


@pytest.fixture(scope="module")
def uninterrupted(training_corpus, tmp_path_factory):
    return train(tiny_config(training_corpus, tmp_path_factory.mktemp("full")), progress=False)


def interrupting_hook(training: bool, call: int):
    """A ``prepare`` hook whose model raises KeyboardInterrupt in its ``call``-th forward pass
    in training (or evaluation) mode, as Ctrl-C there would."""
    calls = []

    def hook(module, inputs):
        if module.training == training:
            calls.append(1)
            if len(calls) == call:
                raise KeyboardInterrupt

    def prepare(model):
        model.register_forward_pre_hook(hook)
        return model

    return prepare


def signalling_step(call: int):
    """GradScaler.step that sends SIGINT from inside its ``call``-th step, after the weights
    changed: Ctrl-C in the middle of an optimizer step."""
    original, calls = torch.amp.GradScaler.step, []

    def step(self, optimizer, *args, **kwargs):
        result = original(self, optimizer, *args, **kwargs)
        calls.append(1)
        if len(calls) == call:
            signal.raise_signal(signal.SIGINT)
        return result

    return step


@pytest.fixture
def terminal_sigint():
    """SIGINT raises KeyboardInterrupt, as in a terminal, even where pytest was started as a
    shell's background job (which inherits SIGINT ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize(
    "where, saved_step", [("forward", 5), ("optimizer-step", 6), ("scoring", 8)]
)
def test_ctrl_c_saves_the_last_whole_step_and_resuming_matches_uninterrupted(
    corpus, tmp_path, monkeypatch, uninterrupted, where, saved_step, terminal_sigint
):
    """Ctrl-C in the forward pass of step 6, in its optimizer step, or in the scoring at step 8
    saves checkpoint.pt at the last whole step (an optimizer step is finished first; a scoring
    is redone on resume), and the resumed run ends exactly as the uninterrupted one; resuming
    says where it starts."""
    cfg, prepare = tiny_config(corpus, tmp_path), None
    if where == "optimizer-step":
        monkeypatch.setattr(torch.amp.GradScaler, "step", signalling_step(call=6))
    elif where == "forward":
        prepare = interrupting_hook(training=True, call=6)
    else:
        prepare = interrupting_hook(training=False, call=1)
    with pytest.raises(TrainingInterrupted) as caught:
        train(cfg, progress=False, prepare=prepare)
    monkeypatch.undo()
    assert (caught.value.step, caught.value.total) == (saved_step, 12)
    assert str(caught.value) == (
        f"interrupted at step {saved_step} of 12: state saved to {tmp_path / 'checkpoint.pt'}"
    )
    assert checkpoint.load(tmp_path / "checkpoint.pt")["step"] == saved_step
    messages = []
    resumed = train(cfg, resume=True, progress=False, report=messages.append)
    assert messages == [f"resuming {tmp_path} from step {saved_step} of 12 (checkpoint.pt)"]
    for (name, a), b in zip(
        uninterrupted.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    columns = ["step", "lr", "margin", "loss", "accuracy", "eer", "min_dcf"]
    assert uninterrupted.history[columns].equals(resumed.history[columns])


def test_resume_with_another_config_is_refused(corpus, tmp_path):
    train(tiny_config(corpus, tmp_path, stop_after_steps=2), progress=False)
    with pytest.raises(ValueError, match="lr=0.05"):
        train(tiny_config(corpus, tmp_path, lr=0.01), resume=True, progress=False)


def test_nan_loss_stops_with_the_step(corpus, tmp_path):
    cfg = tiny_config(corpus, tmp_path)
    model = build("resnet18", **TINY_MODEL)
    with torch.no_grad():
        model.embedding.bias.fill_(float("nan"))
    with pytest.raises(TrainingError, match="at step 1 "):
        train(cfg, model=model, progress=False)


def test_trains_a_given_model_in_place(corpus, tmp_path):
    model = build("ecapa_c512", channels=8, mfa_channels=12, embed_dim=8, scale=4)
    before = model.embedding.weight.detach().clone()
    result = train(tiny_config(corpus, tmp_path, epochs=1), model=model, progress=False)
    assert result.model is model
    assert not torch.equal(before, model.embedding.weight)
    assert not (tmp_path / "model.pt").exists()  # not a registry build: the caller saves it


def test_training_with_a_given_or_imprinted_head(corpus, tmp_path):
    """A given head is the one trained; an imprinted head starts far below a random one's loss;
    a head for other speakers or dimensions, or an unknown kind, is refused."""
    first = train(tiny_config(corpus, tmp_path / "a", epochs=2), progress=False)
    given = first.head
    before = given.weight.detach().clone()
    again = train(tiny_config(corpus, tmp_path / "b", epochs=1), model=first.model,
                  progress=False, head=given)  # fmt: skip
    assert again.head is given and not torch.equal(before, given.weight)
    losses = {}
    for kind, head in [("imprint", "imprint"), ("random", None)]:
        frozen = dict(lr=1e-9, final_lr=1e-9, warmup_epochs=0.0, margin_start_epoch=0.0)
        cfg = tiny_config(corpus, tmp_path / kind, epochs=1, log_every=1, margin_end_epoch=0.0,
                          **frozen)  # fmt: skip
        model = load_model(tmp_path / "a" / "model.pt")
        losses[kind] = train(cfg, model=model, progress=False, head=head).history["loss"].iloc[0]
    assert losses["imprint"] < losses["random"] / 2, losses
    crops = SpeakerCrops.from_corpus(corpus, crop_frames=20)
    assert imprint_head(first.model, crops).weight.shape == (crops.n_speakers, 8)
    two_speakers = SpeakerCrops(crops.paths[:2], [0, 1], 20, features=crops.features[:2])
    with pytest.raises(ConfigError, match="this corpus has 4 speakers.*head='imprint'"):
        train(tiny_config(corpus, tmp_path / "x"), model=model,
              head=imprint_head(first.model, two_speakers))  # fmt: skip
    with pytest.raises(ConfigError, match="'imprint' or None, got 'trained'"):
        train(tiny_config(corpus, tmp_path / "x"), model=model, head="trained")


def test_ddp_two_processes_match_one(corpus, tmp_path):
    """2 CPU processes (gloo, global BatchNorm) == 1 process on the same global batch.

    Compared after 2 steps: the tiny network's training is chaotic enough to amplify the
    float rounding differences of the two reductions by ~10x per 2 steps.
    """
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        'model = "resnet18"\ncrop_frames = 20\nbatch_size = 4\nepochs = 1\nlr = 0.005\n'
        "warmup_epochs = 0.0\nmargin_start_epoch = 0.0\nmargin_end_epoch = 1.0\n"
        f'eval_every = 0\nstop_after_steps = 2\nlog_every = 1\ndata_root = "{corpus}"\n'
        "[model_args]\nbase_width = 2\ndepths = [1, 1, 1, 1]\nembed_dim = 8\n"
    )
    two = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
        "--master_port=29533", "-m", "svlab.train", "--config", str(recipe), "--quiet",
        "--set", f"out_dir='{tmp_path / 'two'}'",
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run(two, check=True, env=env, timeout=300, capture_output=True)
    train(TrainConfig.from_toml(recipe, "ci", [f"out_dir='{tmp_path / 'one'}'"]), progress=False)
    one = checkpoint.load(tmp_path / "one" / "checkpoint.pt")
    two = checkpoint.load(tmp_path / "two" / "checkpoint.pt")
    assert one["step"] == two["step"] == 2
    for name, a in one["net"].items():
        a, b = a.double(), two["net"][name].double()
        assert (a - b).abs().max() <= 1e-4 * a.abs().max() + 1e-7, name
    assert abs(one["history"][-1]["loss"] - two["history"][-1]["loss"]) < 1e-4


def test_global_batchnorm_equals_batchnorm_in_one_process(tmp_path):
    import torch.distributed as dist

    from svlab.train import GlobalBatchNorm

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        plain, synced = torch.nn.BatchNorm2d(3), GlobalBatchNorm(3)
        with torch.no_grad():
            plain.weight.uniform_(0.5, 2)
            plain.bias.uniform_(-1, 1)
        synced.load_state_dict(plain.state_dict())
        x = (5 + 3 * torch.randn(4, 3, 6, 5)).requires_grad_()
        y = torch.randn(4, 3, 6, 5)
        expected = plain(x)
        (expected * y).sum().backward()
        grad_plain, x.grad = x.grad, None
        out = synced(x)
        (out * y).sum().backward()
        assert torch.allclose(out, expected, atol=1e-5)
        assert torch.allclose(x.grad, grad_plain, atol=1e-5)
        assert torch.allclose(synced.weight.grad, plain.weight.grad, atol=1e-4)
        assert torch.allclose(synced.running_var, plain.running_var, atol=1e-5)
    finally:
        dist.destroy_process_group()


def test_cli_reports_bad_config(tmp_path, capsys):
    from svlab.cli import main

    (tmp_path / "bad.toml").write_text("modle = 'resnet34'\n")
    assert main(["train", "--config", str(tmp_path / "bad.toml")]) == 2
    assert "unknown key 'modle'" in capsys.readouterr().err


def test_cli_fine_tunes_a_saved_model_through_the_quantizer(corpus, tmp_path, capsys):
    """`svlab train --set init_from=... --set quantize_bits=2`: starts from the saved encoder
    and head, trains through 2-bit codebooks, writes a packed model that loads back."""
    from svlab.cli import main
    from svlab.quant import load_packed, quantizers

    first = train(tiny_config(corpus, tmp_path / "fp32", epochs=2), progress=False)
    saved = tmp_path / "fp32" / "model.pt"
    assert checkpoint.load_head(saved).weight.shape == first.head.weight.shape
    recipe = tmp_path / "r.toml"
    recipe.write_text(f"model = 'resnet18'\ndata_root = '{corpus}'\ncrop_frames = 20\n"
                      "batch_size = 4\nepochs = 1\nlr = 0.01\neval_every = 0\n")  # fmt: skip
    sets = [f"init_from='{saved}'", "quantize_bits=2", f"out_dir='{tmp_path / 'q'}'"]
    argv = ["train", "--config", str(recipe), "--quiet"]
    assert main(argv + [arg for s in sets for arg in ("--set", s)]) == 0
    assert "wrote" in capsys.readouterr().out
    packed = load_packed(tmp_path / "q" / "model.svq", "resnet18")
    assert len(quantizers(packed)) == len([p for p in first.model.parameters() if p.dim() > 1])
    stem = packed.get_submodule("stem.0.0")
    assert stem.weight.unique().numel() <= 4 and not (tmp_path / "q" / "model.pt").exists()
    start = first.model.get_submodule("stem.0.0").weight.detach()
    latent = stem.parametrizations.weight.original.detach()
    similarity = torch.corrcoef(torch.stack([latent.flatten(), start.flatten()]))[0, 1]
    assert not torch.equal(latent, start) and similarity > 0.9  # fine-tuned from the saved weights
    with pytest.raises(ConfigError, match="a model was given"):
        train(tiny_config(corpus, tmp_path / "x", quantize_bits=2), model=first.model)


@pytest.mark.parametrize("profile", ["ci", "laptop", "gpu"])
def test_every_shipped_recipe_reads_in_every_profile(profile):
    from svlab.profiles import REPO_ROOT

    recipes = sorted((REPO_ROOT / "configs").glob("*.toml"))
    assert len(recipes) >= 10
    runs = {  # the model.pt each recipe's own run writes, for the recipes that start from one
        (TrainConfig.from_toml(r, profile).run_dir() / "model.pt").relative_to(REPO_ROOT)
        for r in recipes
    }
    for recipe in recipes:
        cfg = TrainConfig.from_toml(recipe, profile)
        assert cfg.profile == profile and cfg.epochs > 0, recipe.name
        if cfg.init_from.startswith("runs/"):  # a stage after another shipped recipe's run
            assert Path(cfg.init_from) in runs, recipe.name
        elif cfg.init_from:
            assert (REPO_ROOT / cfg.init_from).is_file(), recipe.name
