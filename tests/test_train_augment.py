"""Training with augmentation (exact resume, speed labels), and large-margin fine-tuning."""

import dataclasses

import pytest
import torch

from svlab.checkpoint import load_head
from svlab.profiles import REPO_ROOT, get_profile
from svlab.train import ConfigError, TrainConfig, train
from svlab.train.crops import training_crops

torch.set_num_threads(1)

TINY_MODEL = {"base_width": 2, "depths": [1, 1, 1, 1], "embed_dim": 8}


def augmented_config(corpus, augment_sets, out_dir, **changes):
    musan, rirs = augment_sets
    values = dict(
        name="tiny-aug", model="resnet18", model_args=dict(TINY_MODEL), data_root=str(corpus),
        precompute_features=False, crop_frames=20, batch_size=4, epochs=2, lr=0.05,
        final_lr=0.005, warmup_epochs=0.5, margin_start_epoch=0.5, margin_end_epoch=1.0,
        eval_every=0, log_every=2, checkpoint_every=100, out_dir=str(out_dir),
        augment={"musan": str(musan), "rirs": str(rirs), "noise_prob": 0.5, "music_prob": 0.3,
                 "babble_prob": 0.3, "babble_speakers": [2, 3], "reverb_prob": 0.5,
                 "speeds": [1.0, 0.9, 1.1], "spec_prob": 0.5},
    )  # fmt: skip
    values.update(changes)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def augmented_run(training_corpus, augment_sets, tmp_path_factory):
    cfg = augmented_config(training_corpus, augment_sets, tmp_path_factory.mktemp("aug"))
    return train(cfg, progress=False)


def test_augmented_training_resumes_exactly(training_corpus, augment_sets, augmented_run, tmp_path):
    cut = augmented_config(training_corpus, augment_sets, tmp_path / "cut", stop_after_steps=3)
    train(cut, progress=False)
    resumed = train(dataclasses.replace(cut, stop_after_steps=0), resume=True, progress=False)
    for (name, a), b in zip(augmented_run.model.state_dict().items(),
                            resumed.model.state_dict().values(), strict=True):  # fmt: skip
        assert torch.equal(a, b), name
    assert torch.equal(augmented_run.head.weight, resumed.head.weight)
    columns = ["step", "loss", "accuracy"]
    assert augmented_run.history[columns].equals(resumed.history[columns])


def test_augmented_training_differs_from_plain(
    training_corpus, augment_sets, augmented_run, tmp_path
):
    plain = augmented_config(training_corpus, augment_sets, tmp_path / "plain", augment={})
    result = train(plain, progress=False)
    assert result.head.weight.shape[0] * 3 == augmented_run.head.weight.shape[0]
    assert not result.history["loss"].equals(augmented_run.history["loss"])


def test_speed_perturbed_head_has_three_times_the_speakers(augmented_run):
    head = load_head(augmented_run.run_dir / "model.pt")
    assert head.weight.shape == (3 * 4, TINY_MODEL["embed_dim"])  # 4 train speakers


def test_fine_tuning_without_speeds_keeps_the_unperturbed_rows(
    training_corpus, augment_sets, augmented_run, tmp_path
):
    saved = load_head(augmented_run.run_dir / "model.pt").weight
    cfg = augmented_config(
        training_corpus, augment_sets, tmp_path / "lm", augment={}, stop_after_steps=1, log_every=1,
        init_from=str(augmented_run.run_dir / "model.pt"), margin=0.5, margin_start_epoch=-1.0,
        margin_end_epoch=0.0, lr=1e-9, final_lr=1e-9,
    )  # fmt: skip
    result = train(cfg, progress=False)
    assert result.head.weight.shape == (4, TINY_MODEL["embed_dim"])
    assert torch.allclose(result.head.weight, saved[:4], atol=1e-6)
    assert result.history["margin"].iloc[0] == 0.5


def test_large_margin_recipe_fine_tunes_the_tutorial_checkpoint(tmp_path):
    recipe = REPO_ROOT / "configs" / "tutorial_resnet_lm.toml"
    sets = ["stop_after_steps=2", "log_every=1", "precompute_features=false",
            f"out_dir='{tmp_path}'"]  # fmt: skip
    cfg = TrainConfig.from_toml(recipe, "ci", sets)
    assert (cfg.crop_frames, cfg.margin, cfg.augment) == (300, 0.5, {})
    saved = torch.load(REPO_ROOT / cfg.init_from, weights_only=True)
    result = train(cfg, progress=False)
    assert list(result.history["margin"]) == [0.5, 0.5] and result.history["lr"].max() < 1e-4
    start, weight = saved["state_dict"]["embedding.weight"], result.model.embedding.weight.detach()
    assert not torch.equal(weight, start) and torch.allclose(weight, start, atol=1e-2)
    assert result.head.weight.shape[0] == 60  # the checkpoint's own head: the ci speakers


def test_augment_table_in_a_recipe(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text("precompute_features = false\n[augment]\nnoise_prob = 0.5\n"
                    "[profiles.ci.augment]\nnoise_snr = [3.0, 4.0]\n")  # fmt: skip
    cfg = TrainConfig.from_toml(path, "ci", ["augment.speeds=[1.0, 1.1]"])
    assert cfg.augment == {"noise_prob": 0.5, "noise_snr": [3.0, 4.0], "speeds": [1.0, 1.1]}
    with pytest.raises(ConfigError, match=r"r.toml: augment: unknown key 'noise_snr_db'"):
        path.write_text("[augment]\nnoise_snr_db = [0, 1]\n")
        TrainConfig.from_toml(path, "ci")
    with pytest.raises(ConfigError, match="set precompute_features = false"):
        training_crops(TrainConfig(augment={"reverb_prob": 0.2}), tmp_path)


def test_profiles_point_at_stand_ins_or_real_sets(monkeypatch, tmp_path):
    ci = get_profile("ci")
    assert ci.musan_root == REPO_ROOT / "data" / "musan-ci"
    assert get_profile("gpu").rirs_root == REPO_ROOT / "data" / "RIRS_NOISES"
    monkeypatch.setenv("SVLAB_MUSAN", str(tmp_path / "none"))
    with pytest.raises(FileNotFoundError, match="set SVLAB_MUSAN"):
        get_profile("gpu").ensure_augment_sets()
