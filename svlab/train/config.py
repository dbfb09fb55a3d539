"""``TrainConfig``: every setting of a training run, read from TOML recipes and ``--set``."""

from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from svlab.data.augment import Augmentation, AugmentError
from svlab.profiles import REPO_ROOT, get_profile

# names other trainers use for a setting: what an unknown key suggests
ALIASES = {
    "learning_rate": "lr",
    "min_lr": "final_lr",
    "num_epochs": "epochs",
    "max_epochs": "epochs",
    "n_epochs": "epochs",
    "bs": "batch_size",
    "wd": "weight_decay",
    "arch": "model",
    "model_name": "model",
    "output_dir": "out_dir",
    "num_workers": "workers",
}


class ConfigError(ValueError):
    """A training config with an unknown key or a value of the wrong type."""


@dataclass
class TrainConfig:
    """Everything one training run depends on. Defaults follow wespeaker's VoxCeleb recipe.

    Epochs are passes over the training utterances, one random crop of ``crop_frames`` fbank
    frames from each. The learning rate rises linearly over ``warmup_epochs`` and decays
    exponentially from ``lr`` to ``final_lr`` over the run; the AAM margin rises linearly
    from 0 to ``margin`` between ``margin_start_epoch`` and ``margin_end_epoch``. ``augment``
    (a recipe's ``[augment]`` table) holds :class:`svlab.data.augment.Augmentation`'s keys;
    empty, crops are not augmented.

    >>> cfg = TrainConfig(epochs=2, lr=0.05)
    >>> cfg.optimizer, cfg.batch_size, cfg.margin
    ('sgd', 128, 0.2)
    """

    name: str = "run"
    model: str = "resnet34"
    model_args: dict[str, Any] = field(default_factory=dict)
    profile: str = "ci"
    data_root: str = ""  # empty: the profile's corpus
    precompute_features: bool = True  # fbank of all training utterances once, in memory
    crop_frames: int = 200
    dither: float = 1.0
    epochs: int = 150
    batch_size: int = 128
    optimizer: str = "sgd"  # sgd | adam | sgd8bit | adam8bit (svlab.optim.make_optimizer)
    optimizer_backend: str = "svlab"
    lr: float = 0.1
    final_lr: float = 5e-5
    warmup_epochs: float = 6.0
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    scale: float = 32.0
    margin: float = 0.2
    margin_start_epoch: float = 20.0
    margin_end_epoch: float = 40.0
    eval_trials: str = "test.txt"
    eval_every: int = 10  # epochs between validation EERs (the last epoch is always scored)
    eval_seconds: float = 0.0  # 0: whole test utterances
    log_every: int = 10  # steps between history rows
    checkpoint_every: int = 100  # steps between training-state checkpoints
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = False  # fp16 autocast on CUDA
    sync_batchnorm: bool = True  # BatchNorm over the global batch in distributed runs
    workers: int = 0  # DataLoader worker processes
    threads: int = 0  # torch CPU threads; 0 leaves torch's default
    out_dir: str = ""  # empty: runs/<name>-<profile>
    stop_after_steps: int = 0  # stop early (as if interrupted); 0: run to the end
    init_from: str = ""  # svlab / wespeaker / SpeechBrain checkpoint: its encoder, head if it fits
    quantize_bits: int = 0  # 1..8: quantize every weight, fine-tune through it (svlab train)
    quantize_granularity: str = "tensor"  # tensor | channel (svlab.quant.quantize_model)
    quantize_method: str = "kmeans"  # kmeans | uniform
    augment: dict[str, Any] = field(default_factory=dict)  # svlab.data.augment.Augmentation

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        """Build from plain values, naming any unknown key or ill-typed value.

        >>> TrainConfig.from_dict({"lr": 0.01}).lr
        0.01
        >>> TrainConfig.from_dict({"learning_rate": 0.01})
        Traceback (most recent call last):
        ...
        svlab.train.config.ConfigError: config: unknown key 'learning_rate' (did you mean 'lr'?)
        """
        defaults = dataclasses.asdict(cls())
        converted = {}
        for key, value in values.items():
            if key not in defaults:
                guess = ALIASES.get(key) or next(iter(difflib.get_close_matches(key, defaults)), "")
                hint = f" (did you mean {guess!r}?)" if guess else ""
                raise ConfigError(f"{source}: unknown key {key!r}{hint}")
            kind = type(defaults[key])
            allowed = (int, float) if kind is float else kind
            if isinstance(value, bool) != (kind is bool) or not isinstance(value, allowed):
                raise ConfigError(f"{source}: {key} must be {kind.__name__}, got {value!r}")
            converted[key] = float(value) if kind is float else value
        if "augment" in converted:
            try:
                Augmentation.from_dict(converted["augment"], source=f"{source}: augment")
            except AugmentError as err:
                raise ConfigError(str(err)) from err
        return cls(**converted)

    @classmethod
    def from_toml(
        cls, path: str | os.PathLike, profile: str | None = None, sets: list[str] = ()
    ) -> TrainConfig:
        """Read a TOML recipe: top-level keys, then ``[profiles.<profile>]`` over them, then
        ``key=value`` strings from ``sets`` (values in TOML syntax; ``model_args.x=1`` works).
        Errors name the file, or the ``--set`` at fault.

        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "r.toml"
        >>> _ = p.write_text('lr = 0.1\\n[profiles.ci]\\nlr = 0.5\\n')
        >>> TrainConfig.from_toml(p, "ci", ["epochs=3"]).lr, TrainConfig.from_toml(p, "gpu").lr
        (0.5, 0.1)
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no training config at {path}")
        try:
            values = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path}: {err}") from err
        profiles = values.pop("profiles", {})
        profile = profile or os.environ.get("SVLAB_PROFILE", "ci")
        get_profile(profile)  # an unknown profile name fails here
        values = _merge(values, profiles.get(profile, {}))
        values["profile"] = profile
        values.setdefault("name", path.stem)
        cls.from_dict(values, source=str(path))
        for item in sets:
            top = _apply_set(values, item)
            cls.from_dict({top: values[top]}, source=f"--set {item}")
        return cls.from_dict(values, source=str(path))

    def run_dir(self) -> Path:
        """Where checkpoints and logs go: ``out_dir`` or ``runs/<name>-<profile>``."""
        return (
            Path(self.out_dir)
            if self.out_dir
            else REPO_ROOT / "runs" / f"{self.name}-{self.profile}"
        )


def _apply_set(values: dict, item: str) -> str:
    """Apply one ``--set key=value`` to ``values`` in place (``a.b=1`` sets key ``b`` of table
    ``a``); return the top-level key it changed.

    >>> values = {"model_args": {"x": 1}}
    >>> _apply_set(values, "model_args.y=[1, 2]"), values
    ('model_args', {'model_args': {'x': 1, 'y': [1, 2]}})
    >>> _apply_set({"lr": 0.1}, "lr.x=1")
    Traceback (most recent call last):
    ...
    svlab.train.config.ConfigError: --set lr.x=1: lr is not a table
    """
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item}: expected key=value")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text  # a bare word is a string
    *parents, leaf = key.strip().split(".")
    target = values
    for depth, parent in enumerate(parents, start=1):
        target = target.setdefault(parent, {})
        if not isinstance(target, dict):
            raise ConfigError(f"--set {item}: {'.'.join(parents[:depth])} is not a table")
    target[leaf] = value
    return key.strip().split(".")[0]


def _merge(base: dict, override: dict) -> dict:
    """``base`` with ``override``'s keys replacing its own, recursively for tables."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            value = _merge(merged[key], value)
        merged[key] = value
    return merged
