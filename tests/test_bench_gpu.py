"""benchmarks/bench_gpu.py's dry run: every section's code runs on the CPU before any GPU time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "bench_gpu.py"
sys.path.insert(0, str(SCRIPT.parent))

import bench_gpu  # noqa: E402 - the benchmark is a script, not a package module


@pytest.fixture(scope="module")
def dry_run(training_corpus, tmp_path_factory):
    """The JSON of ``bench_gpu.py --dry-run`` on the tiny test corpus, run as a subprocess."""
    out = tmp_path_factory.mktemp("bench") / "gpu.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--out", str(out),
         "--corpus", str(training_corpus)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text()), done.stdout


def test_every_section_ran_without_error(dry_run):
    result, stdout = dry_run
    assert result["dry_run"] and list(result["sections"]) == list(bench_gpu.SECTIONS)
    for name, section in result["sections"].items():
        assert section["error"] is None, (name, section["error"])
        assert section["rows"], name
        for row in section["rows"]:
            assert "error" not in row and "skipped" not in row, (name, row)
        assert f"== {name}" in stdout


def test_peak_rows_match_the_projection_on_the_cpu(dry_run):
    """The tracker on the real CPU step and the meta-device projection trace the same ops."""
    sizes = bench_gpu.dry_sizes()
    rows = dry_run[0]["sections"]["peak"]["rows"]
    assert len(rows) == 2 * len(bench_gpu.OPTIMIZERS) * len(sizes.families)
    for row in rows:
        assert row["batch"] == sizes.batch and row["oom_batches"] == []
        assert row["measured_peak_bytes"] > row["start_bytes"] > 0
        if "tracked_peak_bytes" in row:
            assert row["tracked_peak_bytes"] == pytest.approx(row["projected_peak_bytes"],
                                                              rel=0.01)
    savings = dry_run[0]["sections"]["peak"]["savings"]
    assert len(savings) == 2 and all(s["projected_saving"] > 1 for s in savings)


def test_cap_verdicts_and_training_and_optimizers(dry_run):
    sections = dry_run[0]["sections"]
    cap = sections["cap"]
    assert {row["projected_fits"] for row in cap["rows"]} == {True, False}  # cap between peaks
    for row in cap["rows"]:
        assert row["ran"] == (row["measured_peak_bytes"] <= cap["cap_bytes"])
    for row in sections["train"]["rows"]:
        assert row["steps"] == 8 and 0 <= row["eer"] <= 1 and row["steps_per_s"] > 0
    drift = {(r["optimizer"], r["backend"]): r["drift_from_svlab"]
             for r in sections["optim"]["rows"]}
    for name in ("adam8bit", "sgd8bit"):
        assert drift[name, "svlab"] == 0
        assert drift[name, "bitsandbytes"] < 0.01  # bitsandbytes' CPU 8-bit follows svlab's
    bench = sections["workbench"]["rows"][0]
    assert bench["layers_timed"] == 3 and bench["median_rescore_s"] > 0


def test_halving_retries_smaller_batches_after_out_of_memory():
    def fits_up_to(largest, error=torch.OutOfMemoryError):
        def run(batch):
            if batch > largest:
                raise error(f"batch {batch}: CUDA out of memory")
            return {"ran": batch}

        return run

    assert bench_gpu.halving(fits_up_to(16), 64, "cpu") == {
        "ran": 16, "batch": 16, "oom_batches": [64, 32]}
    cudnn = fits_up_to(4, lambda m: RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"))
    assert bench_gpu.halving(cudnn, 8, "cpu")["batch"] == 4
    with pytest.raises(torch.OutOfMemoryError):  # not even one utterance fits
        bench_gpu.halving(fits_up_to(0), 2, "cpu")
    with pytest.raises(ValueError, match="bad shape"):  # other errors are not retried
        bench_gpu.halving(fits_up_to(0, lambda m: ValueError("bad shape")), 8, "cpu")
    with pytest.raises(RuntimeError, match="illegal"):
        bench_gpu.halving(fits_up_to(0, lambda m: RuntimeError("illegal address")), 8, "cpu")


def test_sections_and_outputs_are_checked(tmp_path):
    assert bench_gpu.pick_sections(["5", "cap", "1"]) == ["peak", "cap", "workbench"]
    with pytest.raises(ValueError, match="unknown section '6'"):
        bench_gpu.pick_sections(["6"])
    with pytest.raises(SystemExit):  # the dry run never writes benchmarks/results/
        bench_gpu.main(["--dry-run", "--out", str(bench_gpu.RESULTS)])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            bench_gpu.main(["--sections", "1"])


def test_a_failing_section_is_recorded_and_the_others_still_run(tmp_path):
    out = tmp_path / "gpu.json"
    result = bench_gpu.main(["--dry-run", "--sections", "5", "4", "--out", str(out),
                             "--corpus", str(tmp_path / "no-corpus")])
    assert "no-corpus" in result["sections"]["workbench"]["error"]
    assert result["sections"]["optim"]["error"] is None
    assert len(result["sections"]["optim"]["rows"]) == 6
    assert json.loads(out.read_text())["sections"]["workbench"]["rows"] == []
