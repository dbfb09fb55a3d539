"""Quantization of speaker models: k-means and uniform codebooks, packed storage, sensitivity."""

from svlab.quant.kmeans import kmeans_1d, sse
from svlab.quant.packed import load_packed, model_size, packed_layer_bytes, save_packed
from svlab.quant.quantize import (
    CodebookQuantizer,
    bit_map,
    clone_model,
    dequantize,
    fit_quantizer,
    latent_weight,
    quantizable_names,
    quantize_model,
    quantizers,
    requantize,
)
from svlab.quant.sensitivity import (
    embedding_drift,
    keep_precise,
    layer_sensitivity,
    plot_sensitivity,
)
from svlab.quant.uniform import uniform_levels

__all__ = [
    "CodebookQuantizer",
    "bit_map",
    "clone_model",
    "dequantize",
    "embedding_drift",
    "fit_quantizer",
    "keep_precise",
    "kmeans_1d",
    "latent_weight",
    "layer_sensitivity",
    "load_packed",
    "model_size",
    "packed_layer_bytes",
    "plot_sensitivity",
    "quantizable_names",
    "quantize_model",
    "quantizers",
    "requantize",
    "save_packed",
    "sse",
    "uniform_levels",
]

# Mixed precision, MSFT and 1-bit weights (issue 7); imported after the core they build on.
from svlab.quant.allocate import BudgetError, allocate_bits, layer_sizes, plan_bits  # noqa: E402
from svlab.quant.binarize import (  # noqa: E402
    binarize,
    binarizers,
    binary_size,
    load_binary,
    save_binary,
    track_binary,
)
from svlab.quant.hessian import (  # noqa: E402
    hutchinson_trace,
    measured_sensitivity,
    model_hessian_sensitivity,
)
from svlab.quant.msft import make_stages, msft  # noqa: E402

__all__ += [
    "BudgetError",
    "allocate_bits",
    "binarize",
    "binarizers",
    "binary_size",
    "hutchinson_trace",
    "layer_sizes",
    "load_binary",
    "make_stages",
    "measured_sensitivity",
    "model_hessian_sensitivity",
    "msft",
    "plan_bits",
    "save_binary",
    "track_binary",
]
