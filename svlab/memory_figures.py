"""The old path of :mod:`svlab.memory.figures` (works, with a warning, until svlab 0.2)."""

import warnings

from svlab.memory import figures as _moved

warnings.warn(
    "svlab.memory_figures moved to svlab.memory.figures; "
    "the old path goes in svlab 0.2",
    DeprecationWarning,
    stacklevel=2,
)


def __getattr__(name: str):
    return getattr(_moved, name)
