"""The ``forewarn`` command line: a thin typer app over the Python API.

Each capability adds a subcommand group here when it lands (none is listed before it works).
Config errors print one paragraph and exit 2, never a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from forewarn.cli_common import ConfigOpt, OutOpt, SetOpt, run_named_job
from forewarn.cluster_cli import cluster_app, plan as plan_command, runs_app
from forewarn.config import load_config, to_yaml
from forewarn.dpl.cli import app as dpl_app
from forewarn.contrastive.cli import app as contrastive_app
from forewarn.analyze.cli import app as analyze_app
from forewarn.errors import ConfigError
from forewarn.serve.cli import app as serve_app
from forewarn.models.cli import app as models_app
from forewarn.recurrence.cli import app as recurrence_app
from forewarn.goodtriever.cli import app as goodtriever_app
from forewarn.testbed.cli import app as testbed_app
from forewarn.reversegen.cli import app as reversegen_app
from forewarn.runner import JOBS, fail, job_module, resolve
from forewarn.training.cli import app as train_app

app = typer.Typer(
    help="forewarn: find, measure and mitigate failures of LLMs, on Ray.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Show and validate job configs.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(testbed_app, name="testbed")
app.add_typer(models_app, name="models")
app.command("plan")(plan_command)
app.add_typer(runs_app, name="runs")
app.add_typer(cluster_app, name="cluster")
app.add_typer(serve_app, name="serve")
app.add_typer(train_app, name="train")
app.add_typer(dpl_app, name="dpl")
app.add_typer(contrastive_app, name="contrastive")
app.add_typer(analyze_app, name="analyze")
app.add_typer(reversegen_app, name="reversegen")
app.add_typer(goodtriever_app, name="goodtriever")
app.add_typer(recurrence_app, name="recurrence")


@config_app.command("show")
def config_show(
    job: str = typer.Argument(..., help=f"job name: {', '.join(sorted(JOBS))}"),
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[list[str]] = SetOpt,
) -> None:
    """Print the resolved config of JOB as YAML (defaults, then --config, then --set)."""
    try:
        cfg = resolve(job, str(config) if config else None, overrides or [])
    except ConfigError as e:
        fail(str(e))
    typer.echo(to_yaml(cfg), nl=False)


@config_app.command("validate")
def config_validate(
    file: Path = typer.Argument(..., help="YAML config file to check"),
    job: str = typer.Option(..., "--job", "-j", help=f"job name: {', '.join(sorted(JOBS))}"),
) -> None:
    """Check FILE against JOB's config schema; exit 2 with the bad field if it is invalid."""
    try:
        load_config(job_module(job).CONFIG, job=job, path=file)
    except ConfigError as e:
        fail(str(e))
    typer.echo(f"{file}: valid {job} config")


@app.command("generate")
def generate(
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[list[str]] = SetOpt,
    output_dir: Optional[str] = OutOpt,
) -> None:
    """Run prompts through a model role with a Ray Data actor pool; rows land in Parquet."""
    run_named_job("generate", config, overrides, output_dir)


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
