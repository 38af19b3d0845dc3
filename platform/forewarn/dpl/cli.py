"""``forewarn dpl toy|eval|testbed``: distributional preference learning experiments."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from forewarn.cli_common import ConfigOpt, OutOpt, SetOpt, run_named_job

app = typer.Typer(help="DPL: reward models that expose hidden context.", no_args_is_help=True)


def _run(mode: str, config: Optional[Path], overrides: Optional[list[str]], output_dir: Optional[str]) -> None:
    run_named_job("dpl", config, [f"mode={mode}", *(overrides or [])], output_dir)


@app.command("toy")
def toy(config: Optional[Path] = ConfigOpt, overrides: Optional[list[str]] = SetOpt,
        output_dir: Optional[str] = OutOpt) -> None:
    """The 1-D hidden-context experiment (paper Figure 1): plot, table, summary (settings: toy.*)."""
    _run("toy", config, overrides, output_dir)


@app.command("eval")
def evaluate(config: Optional[Path] = ConfigOpt, overrides: Optional[list[str]] = SetOpt,
             output_dir: Optional[str] = OutOpt) -> None:
    """Accuracy, r² of hidden context and jailbreak rates of trained reward models (settings: eval.*)."""
    _run("eval", config, overrides, output_dir)


@app.command("testbed")
def testbed(config: Optional[Path] = ConfigOpt, overrides: Optional[list[str]] = SetOpt,
            output_dir: Optional[str] = OutOpt) -> None:
    """Train the three reward-model variants on the testbed's hidden-context pairs, then evaluate them."""
    _run("testbed", config, overrides, output_dir)
