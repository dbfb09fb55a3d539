"""8-bit optimizer states: the dynamic tree map, block-wise quantization, 8-bit SGD and Adam.

Built from Dettmers et al., "8-bit Optimizers via Block-wise Quantization", and checked
against bitsandbytes: ``maps`` (the 256 values), ``blockwise`` (absmax per block, nearest
code), ``optimizers`` (SGD8bit, Adam8bit) and ``build`` (choose by name, count state bytes).
"""

from svlab.optim.blockwise import (
    QuantizationError,
    adam_update_error,
    check_blocksize,
    dequantize_blockwise,
    nearest_code,
    quantize_blockwise,
    roundtrip_error,
)
from svlab.optim.build import (
    BACKENDS,
    OPTIMIZERS,
    make_optimizer,
    measure_state,
    state_breakdown,
    state_bytes,
)
from svlab.optim.maps import dynamic_map, linear_map
from svlab.optim.optimizers import (
    MIN_8BIT_SIZE,
    Adam8bit,
    NonFiniteGradientError,
    Optimizer8bit,
    OptimizerStateError,
    SGD8bit,
)

__all__ = [
    "BACKENDS",
    "MIN_8BIT_SIZE",
    "OPTIMIZERS",
    "Adam8bit",
    "NonFiniteGradientError",
    "Optimizer8bit",
    "OptimizerStateError",
    "QuantizationError",
    "SGD8bit",
    "adam_update_error",
    "check_blocksize",
    "dequantize_blockwise",
    "dynamic_map",
    "linear_map",
    "make_optimizer",
    "measure_state",
    "nearest_code",
    "quantize_blockwise",
    "roundtrip_error",
    "state_breakdown",
    "state_bytes",
]
