"""``forewarn dpl toy|eval|testbed``: distributional preference learning experiments."""

from __future__ import annotations

import typer

from forewarn.cli_common import add_job_command

app = typer.Typer(help="DPL: reward models that expose hidden context.", no_args_is_help=True)

add_job_command(
    app,
    "toy",
    "dpl",
    "The 1-D hidden-context experiment (paper Figure 1): plot, table, summary (settings: toy.*).",
    ("mode=toy",),
)
add_job_command(
    app,
    "eval",
    "dpl",
    "Accuracy, r² of hidden context and jailbreak rates of trained reward models (settings: eval.*).",
    ("mode=eval",),
)
add_job_command(
    app,
    "testbed",
    "dpl",
    "Train the three reward-model variants on the testbed's hidden-context pairs, then evaluate them.",
    ("mode=testbed",),
)
