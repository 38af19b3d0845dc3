"""``forewarn reversegen``: run the failure-inducing exploration loop."""

from __future__ import annotations

import typer

from forewarn.cli_common import add_job_command

app = typer.Typer(help="ReverseGen: a proposer learns, by DPO, to write prompts that make a target fail.",
                  no_args_is_help=True)

add_job_command(app, "run", "reversegen", "Run the loop (defaults: the testbed); same as "
                "`python jobs/reversegen.py`.")
