"""The old path of :mod:`svlab.workbench.widgets` (works, with a warning, until svlab 0.2)."""

import warnings

from svlab.workbench import widgets as _moved

warnings.warn(
    "svlab.widgets moved to svlab.workbench.widgets; "
    "the old path goes in svlab 0.2",
    DeprecationWarning,
    stacklevel=2,
)


def __getattr__(name: str):
    return getattr(_moved, name)
