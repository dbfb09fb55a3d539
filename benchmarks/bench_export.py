"""ONNX export of ResNet34: fp32 / quantized .onnx / packed .svq sizes, onnxruntime latency."""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pandas as pd
import torch

from svlab.export import onnx_session, to_onnx
from svlab.models import build
from svlab.profiles import seed_everything
from svlab.quant import model_size, quantize_model, save_packed

RESULTS = Path(__file__).parent / "results" / "export.json"
MIXED = {"stem*": 8, "embedding": 8, "stages.0*": 6, "stages.1*": 5, "stages.2*": 4, "*": 3}
FRAMES = 300  # 3 s of 10-ms fbank frames
THREADS = 1


def latency(path: Path, fbank: np.ndarray, runs: int, fold_constants: bool = True) -> dict:
    """Seconds to open a one-thread session; median and best of ``runs`` timed runs after one.

    The best run is reported beside the median because the machine may be shared: other
    processes only ever add time.
    """
    start = time.perf_counter()
    session = onnx_session(path, threads=THREADS, fold_constants=fold_constants)
    load_s = time.perf_counter() - start
    session.run(None, {"fbank": fbank})
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, {"fbank": fbank})
        times.append(time.perf_counter() - start)
    return {"load_s": load_s, "median_s": statistics.median(times), "best_s": min(times),
            "runs_s": times}


def relative_difference(model: torch.nn.Module, path: Path, fbank: np.ndarray) -> float:
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(fbank)).numpy()
    got = onnx_session(path, threads=THREADS).run(None, {"fbank": fbank})[0]
    return float(np.abs(got - expected).max() / np.abs(expected).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="ResNet34 of width 8, 3 runs")
    args = parser.parse_args()
    seed_everything(0)
    torch.set_num_threads(THREADS)
    overrides = {"base_width": 8} if args.quick else {}
    runs = 3 if args.quick else 15
    fp32 = build("resnet34", **overrides).eval()
    fbank = torch.randn(1, FRAMES, 80).numpy()
    folder = Path(tempfile.mkdtemp(prefix="bench_export."))
    start = time.perf_counter()
    fp32_path = to_onnx(fp32, folder / "fp32.onnx")
    export_s = time.perf_counter() - start
    fp32_bytes = fp32_path.stat().st_size
    base = latency(fp32_path, fbank, runs)
    rows = [
        {"bits": "fp32", "onnx_MB": fp32_bytes / 1e6, "svq_MB": None, "packed_MB": None,
         "onnx_over_svq": None, "fp32_over_onnx": 1.0, "latency_ms": 1e3 * base["median_s"],
         "best_ms": 1e3 * base["best_s"], "latency_unfolded_ms": None,
         "best_unfolded_ms": None, "load_s": base["load_s"], "export_s": export_s,
         "max_rel_diff": relative_difference(fp32, fp32_path, fbank), "runs_s": base["runs_s"]}
    ]
    for bits in (8, 4, 2, "mixed"):
        model = quantize_model(fp32, MIXED if bits == "mixed" else bits, method="kmeans")
        start = time.perf_counter()
        path = to_onnx(model, folder / f"q{bits}.onnx")
        export_s = time.perf_counter() - start
        svq = save_packed(model, folder / f"q{bits}.svq", name="resnet34", overrides=overrides)
        onnx_bytes, svq_bytes = path.stat().st_size, svq.stat().st_size
        folded = latency(path, fbank, runs)
        unfolded = latency(path, fbank, runs, fold_constants=False)
        rows.append(
            {"bits": str(bits), "onnx_MB": onnx_bytes / 1e6, "svq_MB": svq_bytes / 1e6,
             "packed_MB": model_size(model) / 1e6, "onnx_over_svq": onnx_bytes / svq_bytes,
             "fp32_over_onnx": fp32_bytes / onnx_bytes, "latency_ms": 1e3 * folded["median_s"],
             "best_ms": 1e3 * folded["best_s"], "latency_unfolded_ms": 1e3 * unfolded["median_s"],
             "best_unfolded_ms": 1e3 * unfolded["best_s"], "load_s": folded["load_s"],
             "load_unfolded_s": unfolded["load_s"], "export_s": export_s,
             "max_rel_diff": relative_difference(model, path, fbank),
             "runs_s": folded["runs_s"], "runs_unfolded_s": unfolded["runs_s"]}
        )
    table = pd.DataFrame(rows).drop(columns=["runs_s", "runs_unfolded_s"])
    print(f"resnet34 {overrides or '(full size)'}, k-means per tensor, random weights (seed 0); "
          f"onnxruntime CPU, {THREADS} thread, 1 x {FRAMES} x 80 fbank, "
          f"median / best of {runs} runs")
    print(table.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    settings = {
        "model": "resnet34", "overrides": overrides, "method": "kmeans",
        "granularity": "tensor", "bits": [8, 4, 2, "mixed"], "mixed_map": MIXED,
        "frames": FRAMES, "feat_dim": 80, "batch": 1, "threads": THREADS, "runs": runs,
        "seed": 0, "quick": args.quick, "torch": torch.__version__,
        "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
        "machine": platform.processor() or platform.machine(),
        "latency_ms": "onnxruntime defaults: the graph's dequantization is folded once at load",
        "latency_unfolded_ms": "ConstantFolding disabled: weights rebuilt at every run",
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"settings": settings, "rows": rows}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
