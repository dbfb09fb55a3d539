"""The old path of :mod:`svlab.memory.saved_tensors` (works, with a warning, until svlab 0.2)."""

import warnings

from svlab.memory import saved_tensors as _moved

warnings.warn(
    "svlab.saved_tensors moved to svlab.memory.saved_tensors; "
    "the old path goes in svlab 0.2",
    DeprecationWarning,
    stacklevel=2,
)


def __getattr__(name: str):
    return getattr(_moved, name)
