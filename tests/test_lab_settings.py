"""`make lab` starts a JupyterLab whose news and update notifications are off.

The setting ships with the project (``jupyter/settings/overrides.json``, passed by the Makefile
as the app settings directory), so no pop-up asks for news over a lesson's figures whatever the
user's own JupyterLab settings hold. The test reads the flag from ``make -n lab`` (what `make
lab` would run), starts JupyterLab with it on loopback and asks the server for the setting's
composite value; the same server without the flag is the control, showing the default would ask.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from svlab.course import free_port, stop_process_group

REPO = Path(__file__).resolve().parents[1]
NOTIFICATION = "@jupyterlab/apputils-extension:notification"
START_S = 90


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


def _notification_settings(tmp_path: Path, extra: list[str]) -> dict:
    """JupyterLab on loopback with ``extra`` arguments: its effective notification settings."""
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    command = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
        "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={tmp_path}", f"--LabApp.user_settings_dir={tmp_path / 'user'}",
        f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}", *extra,
    ]
    if os.geteuid() == 0:
        command.append("--allow-root")
    log = tmp_path / "jupyterlab.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/lab/api/settings/{NOTIFICATION}",
        headers={"Authorization": f"token {token}"},
    )
    try:
        deadline = time.monotonic() + START_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"JupyterLab exited ({process.returncode}):\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(request, timeout=5) as answer:
                    plugin = json.load(answer)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not answer in {START_S} s")
                time.sleep(0.5)
    finally:
        stop_process_group(process)
    # the server folds overrides into the schema's defaults; the user's own values come on top
    defaults = {key: spec.get("default") for key, spec in plugin["schema"]["properties"].items()}
    return {**defaults, **plugin["settings"]}


def test_make_lab_turns_jupyterlab_news_off(tmp_path):
    flag = _make_lab_settings_flag()
    shipped = Path(flag.split("=", 1)[1])
    assert shipped == REPO / "jupyter" / "settings", flag

    (tmp_path / "default").mkdir()
    (tmp_path / "make_lab").mkdir()
    default = _notification_settings(tmp_path / "default", [])
    assert default["fetchNews"] == "none"  # the control: plain JupyterLab asks for news
    with_flag = _notification_settings(tmp_path / "make_lab", [flag])
    assert with_flag["fetchNews"] == "false" and with_flag["checkForUpdates"] is False
