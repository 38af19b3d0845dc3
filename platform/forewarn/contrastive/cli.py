"""``forewarn contrastive decode | find | show``: the model-divergence commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from forewarn.cli_common import ConfigOpt, OutOpt, SetOpt, run_named_job
from forewarn.contrastive.view import render_terminal
from forewarn.pipeline.rundir import RunDir
from forewarn.runner import fail

app = typer.Typer(
    help="Model divergence: contrastive decoding and an assistant-guided divergence finder.",
    no_args_is_help=True,
)


def _run(
    mode: str, config: Optional[Path], overrides: Optional[list[str]], output_dir: Optional[str]
) -> None:
    summary = run_named_job("contrastive", config, [*(overrides or []), f"mode={mode}"], output_dir)
    out = summary["output_dir"]
    typer.echo(
        f"wrote {out} (see `forewarn contrastive show {out}`); "
        f"top-10 mean divergence {summary.get('top10_divergence_mean')}"
    )


@app.command("decode")
def decode(
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[list[str]] = SetOpt,
    output_dir: Optional[str] = OutOpt,
) -> None:
    """Decode a prompt file with both models and rank prompts and continuations by divergence."""
    _run("decode", config, overrides, output_dir)


@app.command("find")
def find(
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[list[str]] = SetOpt,
    output_dir: Optional[str] = OutOpt,
) -> None:
    """Search for prompts on which the two models diverge, guided by an assistant model."""
    _run("find", config, overrides, output_dir)


@app.command("show")
def show(
    run_dir: Path = typer.Argument(..., help="output dir of a contrastive run"),
    top: int = typer.Option(10, "--top", "-k", help="continuations to show"),
) -> None:
    """Print a run's summary and its most divergent continuations with tokens coloured by divergence."""
    from rich.console import Console

    rd = RunDir(run_dir) if run_dir.is_dir() else None
    if rd is None or not rd.has_table("samples"):
        fail(f"{str(run_dir)!r} holds no samples.parquet: pass the output dir of a contrastive run")
    summary = rd.read_summary()
    console = Console()
    brief = {k: v for k, v in summary.items() if not isinstance(v, (list, dict))}
    console.print_json(json.dumps(brief, default=str))
    render_terminal(
        rd.read_table("samples").to_pylist(),
        console,
        top=top,
        divergence=str(summary.get("divergence", "divergence")),
    )
    if rd.path("report.html").is_file():
        console.print(f"HTML report: {rd.path('report.html')}")
