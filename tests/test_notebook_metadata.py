"""Committed notebooks name the kernel the project installs (opening one does not rewrite it) and
store their widgets as one line of text for static viewers."""

import json

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager

from svlab.course import WIDGET_MIME, quiet_widget_outputs
from svlab.profiles import REPO_ROOT

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_names_the_installed_kernel(path):
    spec = KernelSpecManager().get_kernel_spec("python3")
    kernelspec = json.loads(path.read_text())["metadata"]["kernelspec"]
    assert kernelspec == {
        "display_name": spec.display_name, "language": spec.language, "name": "python3"
    }, f"{path.name}: JupyterLab would rewrite its kernelspec on opening"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_stored_widgets_read_as_one_line_on_static_viewers(path):
    """GitHub and nbviewer show a stored widget's text/plain: a one-line note, not its repr."""
    nb = nbformat.read(path, 4)
    texts = [output["data"].get("text/plain", "") for cell in nb.cells
             for output in cell.get("outputs", []) if WIDGET_MIME in output.get("data", {})]
    assert all(text.startswith("[interactive ") and "\n" not in text for text in texts), (
        f"{path.name}: run svlab.course.quiet_widget_outputs on it: {texts[:1]}"
    )
    assert quiet_widget_outputs(nb) == 0
