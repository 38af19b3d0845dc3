"""``forewarn recurrence search|sweep|detect``: loop-trigger search, its Tune sweep, and the loop detector."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from forewarn.cli_common import ConfigOpt, OutOpt, SetOpt, run_named_job

app = typer.Typer(help="Recurrent generation: search for loop triggers, detect loops.", no_args_is_help=True)


@app.command("search")
def search(config: Optional[Path] = ConfigOpt, overrides: Optional[list[str]] = SetOpt,
           output_dir: Optional[str] = OutOpt) -> None:
    """GA and random search (same budget, per seed) for inputs that make the target loop; settings: search.*"""
    run_named_job("recurrence_search", config, overrides, output_dir)


@app.command("sweep")
def sweep(config: Optional[Path] = ConfigOpt, overrides: Optional[list[str]] = SetOpt,
          output_dir: Optional[str] = OutOpt) -> None:
    """Ray Tune sweep (Optuna + ASHA) of the GA's settings; every trial logged to MLflow; settings: tune.*"""
    run_named_job("recurrence_sweep", config, overrides, output_dir)


@app.command("detect")
def detect(config: Optional[Path] = ConfigOpt, overrides: Optional[list[str]] = SetOpt,
           output_dir: Optional[str] = OutOpt) -> None:
    """Collect samples, extract features, train and evaluate the loop detector; settings: data.*, features.*"""
    run_named_job("recurrence_detector", config, overrides, output_dir)
