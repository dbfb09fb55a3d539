"""``svlab train``: a TOML recipe run end to end, quantization-aware when the recipe asks.

This is the one module of ``svlab.train`` that imports ``svlab.quant``, and only its
quantizers and packed format (``svlab.quant.quantize``, ``svlab.quant.packed``), which do not
import ``svlab.train``; the loop itself is handed them as hooks. ``svlab.quant.finetune`` and
``svlab.quant.msft`` build on the loop (tests/test_structure.py checks there is no circle).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import torch.distributed as dist
from torch import nn

from svlab.models import available
from svlab.quant.packed import save_packed
from svlab.quant.quantize import quantize_model
from svlab.train.config import TrainConfig
from svlab.train.loop import TrainResult, train
from svlab.train.state import TrainingInterrupted

PROFILES = ["ci", "laptop", "gpu"]


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


def train_recipe(
    cfg: TrainConfig,
    resume: bool = False,
    progress: bool = True,
    report: Callable[[str], None] | None = None,
) -> TrainResult:
    """Run ``cfg`` as ``svlab train`` does: :func:`svlab.train.train` with the
    :func:`quantization_hooks` the config asks for (``report``: as train's).

    >>> train_recipe(TrainConfig(data_root="/no/corpus", quantize_bits=2))
    Traceback (most recent call last):
    ...
    svlab.data.voxceleb.CorpusError: corpus root /no/corpus does not exist
    """
    return train(
        cfg, resume=resume, progress=progress, report=report, **quantization_hooks(cfg)
    )


DESCRIPTION = (
    "Train a speaker-embedding model with AAM-softmax from a TOML recipe (configs/*.toml): "
    "its top-level keys, then its [profiles.<profile>] table, then each --set. Prints the run "
    "directory first; writes checkpoint.pt (resumable), history.csv, summary.json and the "
    "model there. Ctrl-C saves the state and says how to resume."
)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", required=True, help="a TOML recipe, e.g. configs/tutorial_resnet.toml"
    )
    parser.add_argument(
        "--profile",
        default=None,
        choices=PROFILES,
        help="whose [profiles.*] table and corpus to use (default: $SVLAB_PROFILE or ci)",
    )
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value (TOML syntax), e.g. --set lr=0.01; "
        f"--set model=NAME takes a registered model: {', '.join(available())}",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from the run's checkpoint.pt"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _resume_command(args: argparse.Namespace) -> str:
    """The ``svlab train`` command line that resumes the run ``args`` started.

    >>> args = argparse.Namespace(config="my r.toml", profile="ci", sets=["out_dir='runs/a'"])
    >>> print(_resume_command(args))
    svlab train --config 'my r.toml' --profile ci --set "out_dir='runs/a'" --resume
    """
    words = ["svlab", "train", "--config", args.config]
    words += ["--profile", args.profile] if args.profile else []
    words += [word for item in args.sets for word in ("--set", item)]
    return " ".join(_shell_word(word) for word in [*words, "--resume"])


def _shell_word(word: str) -> str:
    """``word`` quoted for a POSIX shell as a person would: TOML strings' single quotes inside
    double quotes where that is safe, else :func:`shlex.quote`.

    >>> print(_shell_word("lr=0.1"), _shell_word("name='a b'"), _shell_word("x='$HOME'"))
    lr=0.1 "name='a b'" 'x='"'"'$HOME'"'"''
    """
    quoted = shlex.quote(word)
    if quoted != word and "'" in word and not set('"$`\\!') & set(word):
        return f'"{word}"'
    return quoted


def _run(args: argparse.Namespace) -> int:
    cfg = TrainConfig.from_toml(args.config, args.profile, args.sets)
    lead = int(os.environ.get("RANK", "0")) == 0
    if lead:
        print(f"run directory: {cfg.run_dir().resolve()}", flush=True)
    try:
        result = train_recipe(
            cfg, resume=args.resume, progress=not args.quiet, report=lambda m: print(m, flush=True)
        )
    except TrainingInterrupted as interrupt:
        if lead:
            print(f"{interrupt}; resume with: {_resume_command(args)}", file=sys.stderr)
        return 130
    if lead:
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
        "train", help="train a speaker-embedding model from a TOML recipe", description=DESCRIPTION
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
    parser = argparse.ArgumentParser(prog="python -m svlab.train", description=DESCRIPTION)
    _add_arguments(parser)
    return _run(parser.parse_args(argv))
