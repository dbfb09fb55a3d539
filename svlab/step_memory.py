"""The old path of :mod:`svlab.memory.step` (works, with a warning, until svlab 0.2)."""

import warnings

from svlab.memory import step as _moved

warnings.warn(
    "svlab.step_memory moved to svlab.memory.step; "
    "the old path goes in svlab 0.2",
    DeprecationWarning,
    stacklevel=2,
)


def __getattr__(name: str):
    return getattr(_moved, name)
