"""Committed notebooks name the kernel the project installs, so opening one does not rewrite it."""

import json

import pytest
from jupyter_client.kernelspec import KernelSpecManager

from svlab.profiles import REPO_ROOT

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_names_the_installed_kernel(path):
    spec = KernelSpecManager().get_kernel_spec("python3")
    kernelspec = json.loads(path.read_text())["metadata"]["kernelspec"]
    assert kernelspec == {
        "display_name": spec.display_name, "language": spec.language, "name": "python3"
    }, f"{path.name}: JupyterLab would rewrite its kernelspec on opening"
