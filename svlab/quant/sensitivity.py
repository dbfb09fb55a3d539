"""Layer-wise sensitivity: quantize one weight at a time, measure the change, keep some fp32."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pandas as pd
import torch
from torch import nn

from svlab.quant.packed import packed_layer_bytes
from svlab.quant.quantize import Patterns, bit_map, quantize_model

EvalFn = Callable[[nn.Module], "float | Mapping[str, float]"]


def _value(result: float | Mapping[str, float], metric: str) -> float:
    if isinstance(result, Mapping):
        if metric not in result:
            raise ValueError(f"eval_fn returned keys {sorted(result)}, none is {metric!r}")
        return float(result[metric])
    return float(result)


def embedding_drift(reference: nn.Module, features: torch.Tensor) -> Callable[[nn.Module], float]:
    """A fast label-free ``eval_fn``: mean cosine distance of a model's embeddings from
    ``reference``'s on ``features`` (``[B, T, F]``); 0 for the reference itself.

    Scoring is by cosine, so this is the damage that matters, without a trial list; use it as
    ``layer_sensitivity(model, embedding_drift(model, x), metric="drift")``.

    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(6, 4))
    >>> drift = embedding_drift(net, torch.randn(5, 3, 2))
    >>> round(drift(net), 6), drift(nn.Sequential(nn.Flatten(), nn.Linear(6, 4))) > 0.1
    (0.0, True)
    """
    was_training = reference.training
    with torch.no_grad():
        target = nn.functional.normalize(reference.eval()(features), dim=-1)
    reference.train(was_training)

    def drift(model: nn.Module) -> float:
        was_training = model.training
        with torch.no_grad():
            embeddings = nn.functional.normalize(model.eval()(features), dim=-1)
        model.train(was_training)
        return max(0.0, 1.0 - float((embeddings * target).sum(dim=-1).mean()))

    return drift


def layer_sensitivity(
    model: nn.Module,
    eval_fn: EvalFn,
    bits: int = 4,
    *,
    granularity: str = "tensor",
    method: str = "kmeans",
    include: Patterns = None,
    exclude: Patterns = None,
    metric: str = "eer",
    progress: bool = False,
) -> pd.DataFrame:
    """Quantize each chosen weight alone to ``bits`` and record how ``eval_fn`` changes.

    ``eval_fn(model)`` returns a number (lower is better: an EER, a held-out loss) or a dict
    holding ``metric`` (as ``EvalSet.score`` does). One row per weight: ``layer``, ``params``,
    ``bits``, the metric with that weight quantized, ``delta_<metric>`` against the fp32 model,
    and ``bytes_fp32`` / ``bytes_quantized`` / ``bytes_saved`` (indices plus codebooks).
    ``table.attrs`` keeps the fp32 ``baseline``, the ``metric`` and the ``bits``.

    >>> _ = torch.manual_seed(0); net = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 1))
    >>> x = torch.randn(32, 8); y = net(x).detach()
    >>> mse = lambda m: (m(x) - y).square().mean().item()
    >>> table = layer_sensitivity(net, mse, bits=1, metric="mse")
    >>> list(table.columns)
    ['layer', 'params', 'bits', 'mse', 'delta_mse', 'bytes_fp32', 'bytes_quantized', 'bytes_saved']
    >>> table["bytes_saved"].tolist()  # 64 fp32 -> 64 bits + 2 centroids; 8 -> 1 byte + 2
    [240, 23]
    """
    baseline = _value(eval_fn(model), metric)
    plan = bit_map(model, bits, include=include, exclude=exclude)
    parameters = dict(model.named_parameters())
    names = list(plan)
    if progress:
        from tqdm.auto import tqdm

        names = tqdm(names, desc=f"{bits}-bit layer sensitivity")
    rows = []
    for name in names:
        width = plan[name]
        weight = parameters[name]
        quantized = quantize_model(model, {name: width}, granularity=granularity, method=method)
        value = _value(eval_fn(quantized), metric)
        groups = weight.shape[0] if granularity == "channel" and weight.dim() > 1 else 1
        fp32 = weight.numel() * weight.element_size()
        packed = packed_layer_bytes(weight.numel(), width, groups, method)
        rows.append(
            {
                "layer": name,
                "params": weight.numel(),
                "bits": width,
                metric: value,
                f"delta_{metric}": value - baseline,
                "bytes_fp32": fp32,
                "bytes_quantized": packed,
                "bytes_saved": fp32 - packed,
            }
        )
    table = pd.DataFrame(rows)
    table.attrs.update(baseline=baseline, metric=metric, bits=bits)
    return table


def keep_precise(table: pd.DataFrame, size_target: float, fp32_size: int) -> list[str]:
    """The layers to keep fp32 so the model fits ``size_target``, hurting the metric least.

    Layers are quantized in order of metric change per byte saved, least harmful first, until
    the model's size (``fp32_size`` bytes minus the savings) is at most ``size_target``: bytes,
    or a fraction of ``fp32_size`` when below 1. The layers left over are returned; pass them
    as ``exclude`` to ``quantize_model``. A target below the all-quantized size is an error.

    >>> table = pd.DataFrame({"layer": ["a", "b", "c"], "delta_eer": [0.01, 0.0, 0.002],
    ...                       "bytes_saved": [100, 50, 100]})
    >>> table.attrs["metric"] = "eer"
    >>> keep_precise(table, 0.5, fp32_size=300)   # must save 150: b then c are the cheapest
    ['a']
    """
    target = size_target * fp32_size if size_target < 1 else size_target
    delta = table[f"delta_{table.attrs.get('metric', 'eer')}"]
    order = (delta / table["bytes_saved"].clip(lower=1)).sort_values(kind="stable").index
    smallest = fp32_size - int(table["bytes_saved"].sum())
    if smallest > target:
        raise ValueError(
            f"size target {target:.0f} bytes is below {smallest} bytes, the size with every "
            "layer of the table quantized"
        )
    size, kept = fp32_size, list(table["layer"])
    for index in order:
        if size <= target:
            break
        size -= int(table.loc[index, "bytes_saved"])
        kept.remove(table.loc[index, "layer"])
    return kept


def plot_sensitivity(table: pd.DataFrame, kept: list[str] | None = None):
    """A plotly bar chart: the metric change per layer, and the bytes each one saves.

    >>> table = pd.DataFrame({"layer": ["a"], "params": [4], "delta_eer": [0.01],
    ...                       "bytes_saved": [10]})
    >>> len(plot_sensitivity(table, kept=["a"]).data)
    2
    """
    from plotly.subplots import make_subplots

    metric = table.attrs.get("metric", "eer")
    delta = table[f"delta_{metric}"]
    scale, unit = (100, " (% points)") if metric == "eer" else (1, "")
    kept = set(kept or [])
    colours = ["#d62728" if layer in kept else "#1f77b4" for layer in table["layer"]]
    fig = make_subplots(
        rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.05, row_heights=[0.65, 0.35]
    )
    fig.add_bar(
        x=table["layer"],
        y=delta * scale,
        marker_color=colours,
        name=f"delta {metric}",
        customdata=table["params"],
        hovertemplate="%{x}<br>delta %{y:.3f}<br>%{customdata} params<extra></extra>",
        row=1,
        col=1,
    )
    fig.add_bar(
        x=table["layer"],
        y=table["bytes_saved"] / 1024,
        name="KB saved",
        row=2,
        col=1,
        marker_color="#7f7f7f",
    )
    fig.update_yaxes(title_text=f"delta {metric}{unit}", row=1, col=1)
    fig.update_yaxes(title_text="KB saved", row=2, col=1)
    title = f"one layer at a time, {table.attrs.get('bits', '?')} bits"
    if kept:
        title += " (red: kept fp32)"
    fig.update_layout(title=title, showlegend=False, height=520)
    return fig


def sensitivity_heatmap(
    table: pd.DataFrame, title: str = "Hessian-trace sensitivity (log10) per layer and bit width"
):
    """A heatmap of ``table`` (one row per layer, one column per bit width, costs > 0) in
    log10: bit widths as equal-width categories (1, 2, 3, 4, 6, 8, not a numeric axis), every
    layer named (the height grows with the layers, small labels).

    >>> table = pd.DataFrame({2: [1e-3, 1e-5], 8: [1e-6, 1e-9]}, index=["conv", "fc"])
    >>> fig = sensitivity_heatmap(table)
    >>> fig.layout.xaxis.type, list(fig.data[0].x), list(fig.layout.yaxis.tickvals)
    ('category', ['2', '8'], ['conv', 'fc'])
    >>> fig.data[0].z.round(1).tolist()
    [[-3.0, -6.0], [-5.0, -9.0]]
    """
    import numpy as np
    import plotly.graph_objects as go

    if table.empty:
        raise ValueError("sensitivity_heatmap got an empty table")
    bits = [str(b) for b in table.columns]
    layers = [str(layer) for layer in table.index]
    z = np.log10(table.to_numpy(dtype=float).clip(min=1e-12))
    fig = go.Figure(go.Heatmap(
        x=bits, y=layers, z=z, colorscale="Viridis", colorbar={"title": "log10 cost"},
        hovertemplate="%{y}, %{x} bits: 10^%{z:.2f}<extra></extra>",
    ))
    fig.update_layout(
        title=title,
        height=max(320, 120 + 16 * len(layers)),
        xaxis={"type": "category", "title": "bits", "categoryorder": "array",
               "categoryarray": bits},
        yaxis={"title": "layer", "tickmode": "array", "tickvals": layers, "ticktext": layers,
               "autorange": "reversed", "tickfont": {"size": 10}},
        margin={"l": 200},
    )
    return fig


def sensitivity_scatter(
    estimate: pd.Series,
    measured: pd.Series,
    title: str = "2-bit sensitivity: estimate vs measured",
    floor: float = 1e-9,
):
    """Log-log scatter of a per-layer estimate (the Hessian cost) against the measured change,
    titled with their Spearman rank correlation; one tick label per decade (or per few decades
    on a wide range), so the labels never overlap. Values below ``floor`` are drawn at it.

    >>> est = pd.Series([1e-6, 1e-4, 1e-2], index=["a", "b", "c"])
    >>> fig = sensitivity_scatter(est, pd.Series([1e-5, 1e-2, 1e-4], index=["a", "b", "c"]))
    >>> fig.layout.xaxis.type, fig.layout.xaxis.dtick, fig.layout.title.text
    ('log', 1, '2-bit sensitivity: estimate vs measured (Spearman rho 0.50)')
    """
    import numpy as np
    import plotly.graph_objects as go

    both = pd.DataFrame({"estimate": estimate, "measured": measured})
    if both.isna().any().any():
        missing = sorted(both.index[both.isna().any(axis=1)].astype(str))
        raise ValueError(f"sensitivity_scatter: layers {missing} are in only one of the two")
    rho = both.rank().corr().iloc[0, 1]
    shown = both.clip(lower=floor)
    fig = go.Figure(go.Scatter(
        x=shown["estimate"], y=shown["measured"], mode="markers", text=list(both.index),
        hovertemplate="%{text}<br>estimate %{x:.2e}<br>measured %{y:.2e}<extra></extra>",
    ))
    axes = {}
    for axis, column in (("xaxis", "estimate"), ("yaxis", "measured")):
        logs = np.log10(shown[column].to_numpy(dtype=float))
        decades = int(np.ceil(logs.max()) - np.floor(logs.min())) or 1
        axes[axis] = {"type": "log", "dtick": max(1, -(-decades // 6)),
                      "exponentformat": "power", "title": column}
    fig.update_layout(title=f"{title} (Spearman rho {rho:.2f})", **axes)
    return fig
