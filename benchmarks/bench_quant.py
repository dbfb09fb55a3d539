"""K-means quantization: speed and error vs scikit-learn, EER vs bits, fine-tuning, sensitivity."""

from __future__ import annotations

import argparse
import copy
import glob
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from svlab import checkpoint
from svlab.comparison import across_seeds, compare
from svlab.data.pairs import LARGE_TRIALS
from svlab.evaluate import EvalSet
from svlab.models import build
from svlab.profiles import REPO_ROOT, get_profile, seed_everything
from svlab.quant import (
    fit_quantizer,
    keep_precise,
    layer_sensitivity,
    model_size,
    quantizable_names,
    quantize_model,
    save_packed,
    sse,
)
from svlab.quant.finetune import finetune, finetune_config, starting_head
from svlab.quant.outliers import LSTMEncoder, with_outlier_inputs
from svlab.train import TrainConfig, train

RESULTS = Path(__file__).parent / "results" / "quant.json"
KB = 1024


def speed_vs_sklearn(quick: bool, bits: int = 4) -> dict:
    """Seconds and SSE to k-means-quantize every conv/linear weight of resnet34, ours vs sklearn."""
    from sklearn.cluster import KMeans

    seed_everything(0)
    model = build("resnet34")
    names = quantizable_names(model)
    if quick:
        names = names[:8]
    rows = []
    for name in names:
        weight = model.get_parameter(name).detach()
        start = time.perf_counter()
        quantizer = fit_quantizer(weight, bits)
        ours_s = time.perf_counter() - start
        values = weight.double().reshape(-1, 1).numpy()
        start = time.perf_counter()
        kmeans = KMeans(n_clusters=2**bits, random_state=0).fit(values)
        sklearn_s = time.perf_counter() - start
        rows.append(
            {
                "layer": name,
                "params": weight.numel(),
                "ours_s": ours_s,
                "sklearn_s": sklearn_s,
                "ours_sse": sse(weight, quantizer.codebook[0]),
                "sklearn_sse": float(kmeans.inertia_),
            }
        )
    table = pd.DataFrame(rows)
    total = table[["params", "ours_s", "sklearn_s", "ours_sse", "sklearn_sse"]].sum()
    summary = {
        "model": "resnet34",
        "bits": bits,
        "layers": len(rows),
        "params": int(total["params"]),
        "ours_s": float(total["ours_s"]),
        "sklearn_s": float(total["sklearn_s"]),
        "speedup": float(total["sklearn_s"] / total["ours_s"]),
        "ours_sse": float(total["ours_sse"]),
        "sklearn_sse": float(total["sklearn_sse"]),
        "layers_where_ours_is_worse": int((table["ours_sse"] > table["sklearn_sse"]).sum()),
    }
    return {"summary": summary, "layers": rows}


def finetune_cfg(
    path: Path, name: str, overrides: dict, epochs: float, threads: int, root: Path, seed: int
):
    """The tutorial model's own recipe (configs/<stem>.toml) turned into a short fine-tuning run."""
    recipe = REPO_ROOT / "configs" / f"{path.stem}.toml"
    base = (
        TrainConfig.from_toml(recipe, "ci")
        if recipe.is_file()
        else TrainConfig(model=name, model_args=overrides, crop_frames=100, batch_size=32)
    )
    return finetune_config(
        base,
        epochs=epochs,
        name=f"ft-{path.stem}",
        data_root=str(root),
        threads=threads,
        seed=seed,
        out_dir=tempfile.mkdtemp(prefix="svlab-ft-"),
    )


def interval_rows(table: pd.DataFrame, **keys) -> list[dict]:
    """A `compare` table as JSON rows, with ``keys`` (model, seed, ...) on each."""
    columns = ["system", "eer", "eer_low", "eer_high", "min_dcf", "difference", "difference_low",
               "difference_high", "verdict"]  # fmt: skip
    return [{**keys, **row} for row in table[columns].to_dict(orient="records")]


def eer_vs_bits(paths, eval_set, quick: bool) -> list[dict]:
    """Post-training quantization, no fine-tuning: each tutorial model at each bit width,
    k-means vs uniform levels, its packed size, its EER interval and its paired difference from
    the fp32 model on the same trials."""
    bit_widths = [4, 2] if quick else [8, 6, 4, 3, 2]
    rows = []
    for path in paths:
        fp32, _, _, _ = checkpoint.load_trained(path)
        scores, sizes = {"fp32": eval_set.score(fp32.eval())["scores"]}, {"fp32": model_size(fp32)}
        for method in ("kmeans", "uniform"):
            for bits in bit_widths:
                seed_everything(0)
                quantized = quantize_model(fp32, bits, method=method).eval()
                system = f"{bits}-bit {method}"
                scores[system] = eval_set.score(quantized)["scores"]
                sizes[system] = model_size(quantized)
        table = compare(scores, eval_set.labels, eval_set.pairs, control="fp32")
        for row in interval_rows(table, model=path.stem):
            rows.append({**row, "size_kb": sizes[row["system"]] / KB})
        print(f"-- {path.stem}")
        print(table[["system", "EER", "vs control"]].to_string(index=False))
    return rows


def finetuning(paths, eval_set, root, seeds: list[int], quick: bool, threads: int) -> dict:
    """Fine-tuning through the quantizer, against its control: the fp32 model fine-tuned the
    same number of steps, from the same trained AAM head, with the same seed (crops, order).

    For each model and seed: fp32 fine-tuned (the control), 4-bit k-means, 4-bit uniform and
    2-bit k-means, each fine-tuned; each EER with its interval and each difference from the
    control paired on the same trials. ``summary`` holds the mean and spread over seeds."""
    epochs = 1 if quick else 2
    settings = [("4-bit kmeans", 4, "kmeans"), ("2-bit kmeans", 2, "kmeans")]
    if not quick:
        settings.insert(1, ("4-bit uniform", 4, "uniform"))
    rows, summary = [], []
    for path in paths:
        fp32, head, name, overrides = checkpoint.load_trained(path)
        tables = []
        for seed in seeds:
            seed_everything(seed)
            control = copy.deepcopy(fp32)
            cfg = finetune_cfg(path, name, overrides, epochs, threads, root, seed)
            result = train(cfg, model=control, progress=False, head=starting_head(head))
            steps = int(result.history["step"].max())
            scores = {"fp32 fine-tuned": eval_set.score(control.eval())["scores"]}
            for system, bits, method in settings:
                seed_everything(seed)
                quantized = quantize_model(fp32, bits, method=method)
                cfg = finetune_cfg(path, name, overrides, epochs, threads, root, seed)
                finetune(quantized, cfg, head=head)
                scores[f"{system} fine-tuned"] = eval_set.score(quantized)["scores"]
            table = compare(scores, eval_set.labels, eval_set.pairs, control="fp32 fine-tuned")
            tables.append(table)
            rows += interval_rows(table, model=path.stem, seed=seed, steps=steps)
            print(f"-- {path.stem}, seed {seed}")
            print(table[["system", "EER", "vs control"]].to_string(index=False))
        across = across_seeds(tables)
        summary += [{"model": path.stem, **row} for row in across.to_dict(orient="records")]
        print(across.round(4).to_string(index=False))
    return {"epochs": epochs, "seeds": seeds, "rows": rows, "summary": summary}


def packed_file_sizes(model: torch.nn.Module, name: str) -> dict:
    """Bytes on disk: the fp32 weights (``checkpoint.save`` of the state dict, as a checkpoint
    stores them) vs the 4-bit packed file of the same model."""
    with tempfile.TemporaryDirectory() as tmp:
        fp32_bytes = checkpoint.save(Path(tmp) / "fp32.pt", model.state_dict()).stat().st_size
        packed = save_packed(quantize_model(model, 4), Path(tmp) / "model.svq")
        packed_bytes = packed.stat().st_size
    return {
        "model": name,
        "params": sum(p.numel() for p in model.parameters()),
        "fp32_file_kb": fp32_bytes / KB,
        "packed_4bit_file_kb": packed_bytes / KB,
        "ratio": packed_bytes / fp32_bytes,
    }


def sensitivity_study(path: Path, eval_set, bits: int, size_fraction: float) -> dict:
    """Quantize one layer at a time; keep the most harmful layers fp32 for a size target; the
    mixed model and the all-``bits`` model against fp32, paired on the same trials."""
    fp32 = checkpoint.load_model(path).eval()
    table = layer_sensitivity(fp32, eval_set.score, bits)
    fp32_size = model_size(fp32)
    kept = keep_precise(table, size_fraction, fp32_size)
    models = {
        "fp32": fp32,
        f"{len(kept)} layers fp32, rest {bits}-bit": quantize_model(
            fp32, bits, exclude=kept or None
        ).eval(),
        f"all {bits}-bit": quantize_model(fp32, bits).eval(),
    }
    scores = {system: eval_set.score(model)["scores"] for system, model in models.items()}
    compared = compare(scores, eval_set.labels, eval_set.pairs, control="fp32")
    print(table.round(5).to_string(index=False))
    print(compared[["system", "EER", "vs control"]].to_string(index=False))
    print(f"kept fp32: {kept}")
    return {
        "model": path.stem,
        "bits": bits,
        "size_target": size_fraction,
        "systems": [
            {**row, "size_kb": model_size(models[row["system"]]) / KB}
            for row in interval_rows(compared)
        ],
        "kept_fp32": kept,
        "table": table.to_dict(orient="records"),
    }


def outlier_lstm(eval_set, root, quick: bool, threads: int) -> dict:
    """An LSTM encoder whose input weights reach |w| = 60: per-tensor 4-bit vs per-row / 8-bit."""
    seed_everything(0)
    cfg = TrainConfig(
        name="lstm-outliers",
        model="lstm",
        crop_frames=100,
        batch_size=32,
        epochs=2 if quick else 6,
        optimizer="adam",
        lr=0.005,
        final_lr=0.0005,
        warmup_epochs=0.5,
        margin_start_epoch=0.5,
        margin_end_epoch=1.5,
        eval_every=0,
        data_root=str(root),
        threads=threads,
        out_dir=tempfile.mkdtemp(prefix="svlab-lstm-"),
    )
    trained = train(cfg, model=LSTMEncoder(hidden=128), progress=False).model.eval()
    model = with_outlier_inputs(trained, "lstm.weight_ih_l0").eval()
    weight = model.model.lstm.weight_ih_l0.detach()
    scores, sizes = {"fp32": eval_set.score(model)["scores"]}, {"fp32": model_size(model)}
    for label, bits, granularity in [
        ("4-bit per tensor", 4, "tensor"),
        ("4-bit per row", 4, "channel"),
        ("8-bit per tensor", 8, "tensor"),
        ("4-bit per tensor, input layer 8-bit", {"model.lstm.weight_ih_l0": 8, "*": 4}, "tensor"),
    ]:
        quantized = quantize_model(model, bits, granularity=granularity).eval()
        scores[label] = eval_set.score(quantized)["scores"]
        sizes[label] = model_size(quantized)
    compared = compare(scores, eval_set.labels, eval_set.pairs, control="fp32")
    rows = [{**row, "size_kb": sizes[row["system"]] / KB} for row in interval_rows(compared)]
    print(compared[["system", "EER", "vs control"]].to_string(index=False))
    return {
        "input_weight_max_abs": float(weight.abs().max()),
        "input_weight_std": float(weight.std()),
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a small run (minutes)")
    parser.add_argument("--checkpoints", default="checkpoints/tutorial_*.pt")
    parser.add_argument("--sensitivity-model", default="tutorial_ecapa")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=3, help="fine-tuning seeds (quick: 1)")
    parser.add_argument("--trials", default=LARGE_TRIALS, help="trial list under trials/")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seed_everything(0)
    results = {
        "settings": {
            "quick": args.quick,
            "threads": args.threads,
            "trials": args.trials,
            "seeds": args.seeds,
            "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
        }
    }
    print("== k-means of every resnet34 conv/linear weight at 4 bits, ours vs scikit-learn")
    results["speed"] = speed_vs_sklearn(args.quick)
    print(pd.DataFrame(results["speed"]["layers"]).round(5).to_string(index=False))
    print(json.dumps(results["speed"]["summary"], indent=1))

    paths = sorted(Path(p) for p in glob.glob(str(REPO_ROOT / args.checkpoints)))
    if not paths:
        print(f"no checkpoints match {args.checkpoints}: run `make checkpoints` for EER tables")
        results["eer"] = {"skipped": f"no checkpoints match {args.checkpoints}"}
    else:
        root = get_profile("ci").ensure_corpus()
        eval_set = EvalSet.from_corpus(root, args.trials)
        print("== packed file sizes")
        seed_everything(0)
        full_size = [] if args.quick else ["resnet34", "ecapa_c512", "dfresnet56"]
        results["packed_files"] = [
            packed_file_sizes(checkpoint.load_model(p), p.stem) for p in paths
        ] + [packed_file_sizes(build(name), f"{name} (untrained)") for name in full_size]
        print(pd.DataFrame(results["packed_files"]).round(4).to_string(index=False))
        print(f"== EER vs bits, k-means vs uniform, no fine-tuning ({args.trials})")
        results["eer"] = eer_vs_bits(paths, eval_set, args.quick)
        seeds = list(range(1 if args.quick else args.seeds))
        print(f"== fine-tuning through the quantizer vs fp32 fine-tuned alike, seeds {seeds}")
        results["finetuning"] = finetuning(
            paths, eval_set, root, seeds, args.quick, args.threads
        )
        chosen = [p for p in paths if p.stem == args.sensitivity_model]
        if chosen:
            print(f"== layer-wise sensitivity of {chosen[0].stem} at 4 bits, half-size target")
            results["sensitivity"] = sensitivity_study(chosen[0], eval_set, 4, 0.5)
        else:
            results["sensitivity"] = {"skipped": f"no {args.sensitivity_model} checkpoint"}
        print("== outlier-heavy LSTM input layer")
        results["outlier_lstm"] = outlier_lstm(eval_set, root, args.quick, args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1, default=float) + "\n")
    tmp.replace(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
