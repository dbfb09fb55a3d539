"""`make lab` starts a JupyterLab whose news and update notifications are off.

The setting ships with the project (``jupyter/settings/overrides.json``, passed by the Makefile
as the app settings directory), so no pop-up asks for news over a lesson's figures whatever the
user's own JupyterLab settings hold. The test reads the flag from ``make -n lab`` (what `make
lab` would run), starts JupyterLab with it on loopback and asks the server for the setting's
composite value; the same server without the flag is the control, showing the default would ask.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import urllib.request
from pathlib import Path

from svlab.workbench.browser import LAB_SETTINGS, lab_server

REPO = Path(__file__).resolve().parents[1]
NOTIFICATION = "@jupyterlab/apputils-extension:notification"


def _make_lab_settings_flag() -> str:
    """The ``--LabApp.app_settings_dir=...`` argument in the command `make lab` runs."""
    dry_run = subprocess.run(
        ["make", "-n", "--no-print-directory", "lab"], cwd=REPO, capture_output=True,
        text=True, check=True,
    ).stdout
    flags = [arg for arg in shlex.split(dry_run.replace("\\\n", " "), comments=False)
             if arg.startswith("--LabApp.app_settings_dir=")]
    assert len(flags) == 1, f"`make -n lab` names no single app settings dir:\n{dry_run}"
    return flags[0]


def _notification_settings(tmp_path: Path, settings: list[str]) -> dict:
    """JupyterLab on loopback with ``settings`` arguments: its effective notification settings."""
    with lab_server(None, tmp_path, settings) as (url, token, _):
        request = urllib.request.Request(f"{url}/lab/api/settings/{NOTIFICATION}",
                                         headers={"Authorization": f"token {token}"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            plugin = json.load(answer)
    # the server folds overrides into the schema's defaults; the user's own values come on top
    defaults = {key: spec.get("default") for key, spec in plugin["schema"]["properties"].items()}
    return {**defaults, **plugin["settings"]}


def test_make_lab_turns_jupyterlab_news_off(tmp_path):
    flag = _make_lab_settings_flag()
    shipped = Path(flag.split("=", 1)[1])
    assert shipped == REPO / "jupyter" / "settings", flag
    assert flag == LAB_SETTINGS  # the browser tests' JupyterLab starts as `make lab` does

    (tmp_path / "default").mkdir()
    (tmp_path / "make_lab").mkdir()
    default = _notification_settings(tmp_path / "default", [])
    assert default["fetchNews"] == "none"  # the control: plain JupyterLab asks for news
    with_flag = _notification_settings(tmp_path / "make_lab", [flag])
    assert with_flag["fetchNews"] == "false" and with_flag["checkForUpdates"] is False
