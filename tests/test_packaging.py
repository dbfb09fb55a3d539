"""Set-up files agree: environment.yml pins what pyproject.toml pins, and the CLI answers --help."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from svlab.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


def pyproject_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return set(project["dependencies"]) | set(project["optional-dependencies"]["dev"])


def environment_pins():
    text = (ROOT / "environment.yml").read_text()
    return set(re.findall(r"^\s+- ([A-Za-z0-9_.\-]+==[^\s]+)\s*$", text, flags=re.M))


def test_environment_yml_pins_the_same_packages_as_pyproject():
    assert environment_pins() == pyproject_pins()
    assert "python=3.11" in (ROOT / "environment.yml").read_text()


def test_every_dependency_is_pinned_exactly():
    assert all("==" in pin for pin in pyproject_pins())


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / "README.md").read_text()
    assert (ROOT / ".ci" / "run").read_text().strip().endswith("make test")


COMMANDS = sorted(build_parser()._subparsers._group_actions[0].choices)


@pytest.mark.parametrize("command", COMMANDS)
def test_each_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([command, "--help"])
    assert exit_info.value.code == 0 and "usage: svlab" in capsys.readouterr().out


def test_the_command_runs_as_a_module():
    """``python -m svlab.cli`` in a fresh interpreter: every subcommand is registered."""
    result = subprocess.run(
        [sys.executable, "-m", "svlab.cli", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0 and "usage: svlab" in result.stdout
    assert all(command in result.stdout for command in COMMANDS)
