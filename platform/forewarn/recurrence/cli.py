"""``forewarn recurrence search|sweep|detect``: loop-trigger search, its Tune sweep, and the loop detector."""

from __future__ import annotations

import typer

from forewarn.cli_common import add_job_command

app = typer.Typer(help="Recurrent generation: search for loop triggers, detect loops.", no_args_is_help=True)

add_job_command(
    app,
    "search",
    "recurrence_search",
    "GA and random search (same budget, per seed) for inputs that make the target loop; settings: search.*",
)
add_job_command(
    app,
    "sweep",
    "recurrence_sweep",
    "Ray Tune sweep (Optuna + ASHA) of the GA's settings; every trial logged to MLflow; settings: tune.*",
)
add_job_command(
    app,
    "detect",
    "recurrence_detector",
    "Collect samples, extract features, train and evaluate the loop detector; settings: data.*, features.*",
)
