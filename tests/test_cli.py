"""Every command of the ``forewarn`` CLI answers ``--help`` with exit code 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import typer.core
import typer.main
from typer.testing import CliRunner

from forewarn.cli import app


def _walk(cmd: typer.core.TyperCommand, path: list[str]) -> list[list[str]]:
    out = [path]
    if isinstance(cmd, typer.core.TyperGroup):
        for name, sub in cmd.commands.items():
            out += _walk(sub, path + [name])
    return out


def test_every_command_has_help() -> None:
    root = typer.main.get_command(app)
    paths = _walk(root, [])
    assert ["config", "show"] in paths and ["config", "validate"] in paths
    runner = CliRunner()
    for p in paths:
        res = runner.invoke(app, [*p, "--help"])
        assert res.exit_code == 0, (p, res.output)
        assert "Usage" in res.output


def test_console_script_help() -> None:
    exe = Path(sys.executable).parent / "forewarn"
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "config" in out.stdout


def test_config_show_and_validate(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["config", "show", "generate", "--set", "params.max_new_tokens=7"])
    assert res.exit_code == 0 and "max_new_tokens: 7" in res.output
    good = tmp_path / "g.yaml"
    good.write_text("prompts: p.txt\nparams:\n  n: 2\n")
    res = runner.invoke(app, ["config", "validate", str(good), "--job", "generate"])
    assert res.exit_code == 0 and "valid generate config" in res.output
    bad = tmp_path / "b.yaml"
    bad.write_text("prompts: p.txt\nparams:\n  n: 0\n")
    res = runner.invoke(app, ["config", "validate", str(bad), "--job", "generate"])
    assert res.exit_code == 2
