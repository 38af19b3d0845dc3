"""``forewarn train sft|dpo|reward``: the train job with its task fixed by the subcommand."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from forewarn.cli_common import ConfigOpt, OutOpt, SetOpt, run_named_job

app = typer.Typer(help="Train on Ray Train + DeepSpeed: SFT, DPO, DPL reward models.", no_args_is_help=True)


def _run(task: str, config: Optional[Path], overrides: Optional[list[str]], output_dir: Optional[str]) -> None:
    run_named_job("train", config, [f"task={task}", *(overrides or [])], output_dir)


@app.command("sft")
def sft(config: Optional[Path] = ConfigOpt, overrides: Optional[list[str]] = SetOpt,
        output_dir: Optional[str] = OutOpt) -> None:
    """Supervised fine-tuning on (prompt, target) rows; loss on target tokens only (settings: sft.*)."""
    _run("sft", config, overrides, output_dir)


@app.command("dpo")
def dpo(config: Optional[Path] = ConfigOpt, overrides: Optional[list[str]] = SetOpt,
        output_dir: Optional[str] = OutOpt) -> None:
    """DPO on (prompt, chosen, rejected) rows against a frozen reference (settings: dpo.*)."""
    _run("dpo", config, overrides, output_dir)


@app.command("reward")
def reward(config: Optional[Path] = ConfigOpt, overrides: Optional[list[str]] = SetOpt,
           output_dir: Optional[str] = OutOpt) -> None:
    """A reward model: base, mean_and_variance or categorical DPL (settings: reward.*)."""
    _run("reward", config, overrides, output_dir)
