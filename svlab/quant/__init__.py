"""Quantization of speaker models: k-means and uniform codebooks, packed storage, sensitivity."""

from svlab.quant.kmeans import kmeans_1d, sse
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
from svlab.quant.uniform import uniform_levels

__all__ = [
    "CodebookQuantizer",
    "bit_map",
    "clone_model",
    "dequantize",
    "fit_quantizer",
    "kmeans_1d",
    "latent_weight",
    "quantizable_names",
    "quantize_model",
    "quantizers",
    "requantize",
    "sse",
    "uniform_levels",
]
