"""``forewarn reversegen``: run the failure-inducing exploration loop."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from forewarn.cli_common import ConfigOpt, OutOpt, SetOpt, run_named_job

app = typer.Typer(help="ReverseGen: a proposer learns, by DPO, to write prompts that make a target fail.",
                  no_args_is_help=True)


@app.command("run")
def run(config: Optional[Path] = ConfigOpt, overrides: Optional[list[str]] = SetOpt,
        output_dir: Optional[str] = OutOpt) -> None:
    """Run the loop (defaults: the testbed); same as `python jobs/reversegen.py`."""
    run_named_job("reversegen", config, overrides, output_dir)
