"""Where training memory goes: a whole step's peak, what it holds, and how it is measured.

``projection`` measures and projects step peaks (``svlab.memory.project`` and the rest of its
API are re-exported here); ``step`` traces every tensor storage through a step;
``saved_tensors`` records what autograd keeps for backward; ``figures`` plots them.
``CosineClassifier`` (from :mod:`svlab.losses`) is the head the projections stand in with.
"""

from svlab.losses import CosineClassifier
from svlab.memory.projection import (
    BLOCK_SIZE,
    CUDA_CONTEXT_BYTES,
    GPU_2080TI_BYTES,
    MIN_8BIT_SIZE,
    STATE_LAYOUT,
    breakdown,
    fits,
    optimizer_state_bytes,
    project,
    project_step,
    projected_state_bytes,
    sweep,
    timeline,
    unique_bytes,
)

__all__ = [
    "CosineClassifier",
    "BLOCK_SIZE",
    "CUDA_CONTEXT_BYTES",
    "GPU_2080TI_BYTES",
    "MIN_8BIT_SIZE",
    "STATE_LAYOUT",
    "breakdown",
    "fits",
    "optimizer_state_bytes",
    "project",
    "project_step",
    "projected_state_bytes",
    "sweep",
    "timeline",
    "unique_bytes",
]
