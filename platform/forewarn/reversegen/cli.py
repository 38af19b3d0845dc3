"""``forewarn reversegen``: run the failure-inducing exploration loop, or measure a baseline beside it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from forewarn.cli_common import ConfigOpt, OutOpt, SetOpt, add_job_command
from forewarn.errors import ConfigError
from forewarn.runner import fail, resolve

app = typer.Typer(
    help="ReverseGen: a proposer learns, by DPO, to write prompts that make a target fail.",
    no_args_is_help=True,
)

add_job_command(
    app, "run", "reversegen", "Run the loop (defaults: the testbed); same as `python jobs/reversegen.py`."
)


@app.command("baseline")
def baseline(
    instructions: Path = typer.Option(
        ..., "--instructions", "-i", help="JSONL of instructions (the run's seeds, or benign ones)"
    ),
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[list[str]] = SetOpt,
    output_dir: Optional[str] = OutOpt,
    limit: Optional[int] = typer.Option(None, "--limit", help="ask only the first N instructions"),
) -> None:
    """The target's ASR on fixed instructions under the run's respond settings and judge: the baseline
    beside the loop's ASR. Writes OUTPUT_DIR/baseline/<file stem>.parquet and prints the figures as JSON."""
    # lazy: loads pandas, sklearn only when called
    from forewarn.reversegen.baseline import measure_baseline

    # lazy: loads pandas, sklearn only when called
    from forewarn.reversegen.job import resolve_names

    try:
        cfg = resolve("reversegen", str(config) if config else None, overrides or [], output_dir)
        result = measure_baseline(resolve_names(cfg)[0], str(instructions), limit)
    except ConfigError as e:
        fail(str(e))
    typer.echo(json.dumps(result, indent=2))
