"""`svlab tour`: the notebooks' pipeline end to end, headless, as one summary table."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch

from svlab import memory, quant
from svlab.checkpoint import load_model
from svlab.evaluate import EvalSet
from svlab.optim import measure_state
from svlab.profiles import REPO_ROOT, get_profile, seed_everything

TUTORIAL_CHECKPOINT = REPO_ROOT / "checkpoints" / "tutorial_resnet.pt"


def _row(notebook: str, what: str, value: float | str, unit: str = "") -> dict:
    return {"notebook": notebook, "what": what, "value": value, "unit": unit}


def _percent(x: float) -> str:
    return f"{100 * x:.2f}"


def _ratio(x: float) -> str:
    return f"{x:.2f}"


def corpus_rows(evalset: EvalSet) -> list[dict]:
    """Corpus size and the no-training baseline (each utterance's mean fbank, cosine-scored)."""
    speakers = {key.split("/")[0] for key in evalset.keys}
    return [
        _row("00", "test speakers / utterances", f"{len(speakers)} / {len(evalset.keys)}"),
        _row("00", "trials (target)", f"{len(evalset.pairs)} ({int(evalset.labels.sum())})"),
        _row("00", "mean-fbank baseline EER", _percent(evalset.score_mean_fbank()["eer"]), "%"),
    ]


def memory_rows(batch_size: int = 128, frames: int = 200) -> list[dict]:
    """Projected peak of a training step at the paper's input: vanilla fp32 Adam vs
    reversible + 8-bit Adam (the 01 rows, then the 02 rows)."""
    peaks = {}
    for name in ("resnet34", "dfresnet233"):
        vanilla = memory.project(name, batch_size, frames, optimizer="adam")
        light = memory.project(f"rev_{name}", batch_size, frames, optimizer="adam8bit")
        peaks[name] = (vanilla["bytes"].sum() / 2**30, light["bytes"].sum() / 2**30)
    rows = [
        _row("01", f"{name} fp32 Adam, batch {batch_size}, step peak", _ratio(vanilla), "GiB")
        for name, (vanilla, _) in peaks.items()
    ]
    for name, (vanilla, light) in peaks.items():
        rows += [
            _row("02", f"rev_{name} + 8-bit Adam, step peak", _ratio(light), "GiB"),
            _row("02", f"rev_{name} + 8-bit Adam, saving", _ratio(vanilla / light), "x"),
        ]
    return rows


def optimizer_rows() -> list[dict]:
    """Bytes of Adam state, fp32 vs the dynamic 8-bit type, on a full-size ResNet34."""
    from svlab.models import build

    big = build("resnet34")
    fp32 = sum(measure_state(big, "adam").values())
    int8 = sum(measure_state(big, "adam8bit").values())
    return [_row("03", "resnet34 Adam state 8-bit / fp32", _ratio(int8 / fp32))]


def quantization_rows(
    model: torch.nn.Module, features: torch.Tensor, score: Callable[[torch.nn.Module], float]
) -> list[dict]:
    """EER and size under k-means vs uniform, mixed (Hessian-guided) and 1-bit weights."""
    fp32_size = quant.model_size(model)
    rows = [_row("04", "fp32 model size", f"{fp32_size / 1024:.1f}", "KB")]
    for bits in (4, 2):
        for method in ("kmeans", "uniform"):
            quantized = quant.quantize_model(model, bits, method=method)
            rows.append(_row("04", f"{bits}-bit {method} EER (no fine-tuning)",
                             _percent(score(quantized)), "%"))  # fmt: skip
    rows.append(_row("04", "4-bit size ratio", _ratio(fp32_size / quant.model_size(model, 4)), "x"))
    sensitivity = quant.model_hessian_sensitivity(model, features, (2, 3, 4, 8))
    budget = quant.model_size(model, 3)
    mixed = quant.quantize_model(model, quant.plan_bits(model, sensitivity, budget, (2, 3, 4, 8)))
    rows.append(_row("05", "mixed precision at the 3-bit size, EER", _percent(score(mixed)), "%"))
    for scheme in ("sign", "static"):
        rows.append(_row("06", f"1-bit {scheme} EER (no fine-tuning)",
                         _percent(score(quant.binarize(model, scheme))), "%"))  # fmt: skip
    return rows


def run_tour(
    profile: str = "ci",
    checkpoint: Path = TUTORIAL_CHECKPOINT,
    report: Callable[[str], None] = lambda message: None,
) -> pd.DataFrame:
    """Run every notebook's main computation in ``profile`` and return the summary table.

    ``report(message)`` is called as each notebook's part starts (``svlab tour`` prints it
    with the time so far).
    """
    chosen = get_profile(profile)
    seed_everything(chosen.seed)
    report("00 corpus, tutorial model, EER")
    evalset = EvalSet.from_corpus(chosen.ensure_corpus())
    model = load_model(checkpoint).eval()
    fp32 = evalset.score(model)

    def score(m: torch.nn.Module) -> float:
        return evalset.score(m)["eer"]

    rows = corpus_rows(evalset)
    rows += [
        _row("00", "tutorial model EER", _percent(fp32["eer"]), "%"),
        _row("00", "tutorial model minDCF (p=0.01)", f"{fp32['min_dcf']:.3f}"),
    ]
    report("01-02 step peaks of ResNet34 and DF-ResNet233 and their reversible twins")
    rows += memory_rows()
    report("03 8-bit optimizer states")
    rows += optimizer_rows()
    report("04-06 k-means, mixed precision, 1-bit")
    rows += quantization_rows(model, evalset.batches[-1], score)
    return pd.DataFrame(rows)


def _run(args: argparse.Namespace) -> int:
    started = time.perf_counter()

    def report(message: str) -> None:
        print(f"[{time.perf_counter() - started:5.0f} s] {message}", flush=True)

    table = run_tour(args.profile, Path(args.checkpoint), report)
    print(table.to_string(index=False))
    print(f"\ntour finished in {time.perf_counter() - started:.0f} s")
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``svlab tour``: the workbench's pipeline without a browser."""
    parser = subparsers.add_parser(
        "tour", help="run the notebooks' pipeline end to end and print a summary table",
        description=__doc__,
    )  # fmt: skip
    parser.add_argument("--profile", default="ci", choices=["ci", "laptop", "gpu"],
                        help="profile to run (default: ci)")  # fmt: skip
    parser.add_argument(
        "--checkpoint", default=str(TUTORIAL_CHECKPOINT),
        help="trained model to compress (default: the tutorial ResNet)",
    )  # fmt: skip
    parser.set_defaults(func=_run)
