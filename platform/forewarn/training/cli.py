"""``forewarn train sft|dpo|reward``: the train job with its task fixed by the subcommand."""

from __future__ import annotations

import typer

from forewarn.cli_common import add_job_command

app = typer.Typer(help="Train on Ray Train + DeepSpeed: SFT, DPO, DPL reward models.", no_args_is_help=True)

add_job_command(
    app,
    "sft",
    "train",
    "Supervised fine-tuning on (prompt, target) rows; loss on target tokens only (settings: sft.*).",
    ("task=sft",),
)
add_job_command(
    app,
    "dpo",
    "train",
    "DPO on (prompt, chosen, rejected) rows against a frozen reference (settings: dpo.*).",
    ("task=dpo",),
)
add_job_command(
    app,
    "reward",
    "train",
    "A reward model: base, mean_and_variance or categorical DPL (settings: reward.*).",
    ("task=reward",),
)
