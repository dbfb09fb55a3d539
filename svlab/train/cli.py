"""``svlab train``: a TOML recipe run end to end, quantization-aware when the recipe asks.

This is the one module of ``svlab.train`` that imports ``svlab.quant``, and only its
quantizers and packed format (``svlab.quant.quantize``, ``svlab.quant.packed``), which do not
import ``svlab.train``; the loop itself is handed them as hooks. ``svlab.quant.finetune`` and
``svlab.quant.msft`` build on the loop (tests/test_structure.py checks there is no circle).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch.distributed as dist
from torch import nn

from svlab.quant.packed import save_packed
from svlab.quant.quantize import quantize_model
from svlab.train.config import TrainConfig
from svlab.train.loop import TrainResult, train


def quantization_hooks(cfg: TrainConfig) -> dict:
    """The ``prepare`` / ``write_model`` arguments of :func:`svlab.train.train` for
    ``cfg.quantize_bits``: quantize the model train builds (``quantize_granularity``,
    ``quantize_method``), fine-tune through its quantizers, save it packed as ``model.svq``
    (:func:`svlab.quant.load_packed`). None for a full-precision recipe.

    >>> sorted(quantization_hooks(TrainConfig(quantize_bits=4))), quantization_hooks(TrainConfig())
    (['prepare', 'write_model'], {})
    """
    if not cfg.quantize_bits:
        return {}

    def prepare(model: nn.Module) -> nn.Module:
        return quantize_model(
            model, cfg.quantize_bits, granularity=cfg.quantize_granularity,
            method=cfg.quantize_method,
        )  # fmt: skip

    def write_model(run_dir: Path, model: nn.Module, name: str, overrides: dict) -> None:
        save_packed(model, run_dir / "model.svq", name=name, overrides=overrides)

    return {"prepare": prepare, "write_model": write_model}


def train_recipe(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> TrainResult:
    """Run ``cfg`` as ``svlab train`` does: :func:`svlab.train.train` with the
    :func:`quantization_hooks` the config asks for.

    >>> train_recipe(TrainConfig(data_root="/no/corpus", quantize_bits=2))
    Traceback (most recent call last):
    ...
    svlab.data.voxceleb.CorpusError: list file /no/corpus/train.txt does not exist
    """
    return train(cfg, resume=resume, progress=progress, **quantization_hooks(cfg))


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", required=True, help="a TOML recipe, e.g. configs/tutorial_resnet.toml"
    )
    parser.add_argument(
        "--profile", default=None, help="ci, laptop or gpu (default: $SVLAB_PROFILE or ci)"
    )
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value (TOML syntax), e.g. --set lr=0.01",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from the run's checkpoint.pt"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _run(args: argparse.Namespace) -> int:
    cfg = TrainConfig.from_toml(args.config, args.profile, args.sets)
    result = train_recipe(cfg, resume=args.resume, progress=not args.quiet)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"wrote {result.run_dir}")
        if not result.evaluations.empty:
            last = result.evaluations.iloc[-1]
            print(f"EER {100 * last['eer']:.2f}%  minDCF {last['min_dcf']:.3f}")
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``svlab train``.

    >>> parser = argparse.ArgumentParser(); register_cli(parser.add_subparsers())
    >>> parser.parse_args(["train", "--config", "x.toml", "--set", "lr=1"]).sets
    ['lr=1']
    """
    parser = subparsers.add_parser(
        "train", help="train a speaker-embedding model from a TOML recipe"
    )
    _add_arguments(parser)
    parser.set_defaults(func=_run)


def main(argv: list[str] | None = None) -> int:
    """``python -m svlab.train`` (what ``torchrun`` runs), with the options of ``svlab train``.

    >>> main(["--config", "/no/recipe.toml"])
    Traceback (most recent call last):
    ...
    FileNotFoundError: no training config at /no/recipe.toml
    """
    parser = argparse.ArgumentParser(
        prog="python -m svlab.train", description="Train from a TOML recipe (svlab train)."
    )
    _add_arguments(parser)
    return _run(parser.parse_args(argv))
