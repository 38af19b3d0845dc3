"""``forewarn analyze --run RUN_ID`` and ``forewarn analyze show RUN_ID``: the divergence-analysis commands.

``--run`` names the contrastive run to analyse: its output dir, or its MLflow run id (artifacts are
downloaded from MLFLOW_TRACKING_URI's store). ``show`` takes an analysis run the same way: its output dir
or its MLflow run id.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import typer

from forewarn.analyze.source import check_ref, locate
from forewarn.cli_common import ConfigOpt, OutOpt, SetOpt, run_named_job
from forewarn.contrastive.view import render_terminal
from forewarn.errors import ConfigError
from forewarn.runner import fail

app = typer.Typer(
    help="Divergence analysis: an analyst model turns a contrastive run into tested hypotheses "
    "and an HTML report.",
    invoke_without_command=True,
    no_args_is_help=True,
)

# an analysis run in MLflow -> the files `show` reads
ANALYSIS_ARTIFACTS = {
    "findings.json": "findings.json",
    "summary.json": "summary.json",
    "tables/evidence.parquet": "evidence.parquet",
}
STATUS_STYLE = {"supported": "bold green", "refuted": "bold red", "proposed": "dim"}


@app.callback()
def analyze(
    ctx: typer.Context,
    run: str | None = typer.Option(
        None, "--run", "-r", help="the contrastive run: its output dir or MLflow run id"
    ),
    config: Path | None = ConfigOpt,
    overrides: list[str] | None = SetOpt,
    output_dir: str | None = OutOpt,
) -> None:
    """Analyse a contrastive run: hypotheses, experiments on Ray, a knowledge base and report.html."""
    if ctx.invoked_subcommand is not None:
        return
    if run is None:
        fail(
            "forewarn analyze needs --run RUN_ID (the output dir or MLflow run id of a contrastive run), "
            "or the subcommand `show RUN_ID`"
        )

    try:
        check_ref(run, field="--run")  # before Ray starts
    except ConfigError as e:
        fail(str(e))
    summary = run_named_job("analyze", config, [*(overrides or []), f"source={run}"], output_dir)
    out = output_dir or "the output dir"
    typer.echo(
        f"{summary['stop_reason']}: {summary['message']}\n{summary['n_supported']} supported, "
        f"{summary['n_refuted']} refuted, {summary['n_proposed']} open; report: {out}/report.html "
        f"(see `forewarn analyze show {out}`)"
    )


@app.command("show")
def show(
    run_id: str = typer.Argument(..., help="an analysis run: its output dir or MLflow run id"),
    top: int = typer.Option(3, "--top", "-k", help="evidence continuations shown per supported hypothesis"),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", help="MLflow store (for run ids)"),
) -> None:
    """Print an analysis: how it ended, the hypotheses with their verdicts, topics and coloured evidence."""

    with tempfile.TemporaryDirectory(prefix="forewarn-analysis-") as tmp:
        try:
            root, _ = locate(
                run_id,
                Path(tmp),
                tracking_uri,
                job="analyze",
                artifacts=ANALYSIS_ARTIFACTS,
                required=("findings.json", "evidence.parquet"),
                field="RUN_ID",
            )
        except ConfigError as e:
            fail(str(e))
        render(root, top)


def render(root: Path, top: int = 3) -> None:
    """The terminal summary of the analysis in ``root`` (findings.json, evidence.parquet, summary.json)."""
    import pyarrow.parquet as pq
    from rich.console import Console
    from rich.table import Table

    doc = json.loads((root / "findings.json").read_text())
    summary = json.loads((root / "summary.json").read_text()) if (root / "summary.json").is_file() else {}
    console = Console()
    stop = doc.get("stop_reason", "unknown")
    console.print(f"[bold]analysis {doc.get('run_id')}[/] · {stop}: {doc.get('message', '')}")
    counts = doc.get("counts", {})
    console.print(
        f"{doc.get('cycles_done', 0)} cycle(s) · "
        + " · ".join(f"{v} {k}" for k, v in counts.items())
        + (
            f" · {summary.get('analyst_calls')} analyst calls, {summary.get('analyst_tokens')} tokens"
            if summary
            else ""
        )
    )
    table = Table(title="hypotheses", show_lines=True)
    for col in ("#", "status", "hypothesis", "AUC", "p", "test / control mean", "prompts"):
        table.add_column(col)
    for i, f in enumerate(doc.get("findings", []), 1):
        table.add_row(
            f"H{i}",
            f"[{STATUS_STYLE.get(f['status'], '')}]{f['status']}[/]",
            f["hypothesis"],
            _fmt(f.get("auc"), ".2f"),
            _fmt(f.get("p_value"), ".2g"),
            f"{_fmt(f.get('mean_test'))} / {_fmt(f.get('mean_control'))}",
            f"{f.get('n_test', 0)}+{f.get('n_control', 0)}",
        )
    console.print(table)
    for t in summary.get("topics", []):
        console.print(
            f"topic {t['topic']!r}: {t['n_relevant']}/{t['n_examples']} examples on it, divergence "
            f"{_fmt(t['divergence_relevant'])} vs {_fmt(t['divergence_other'])} for the rest"
        )
    if doc.get("analyst_summary"):
        console.print(f"[bold]analyst's summary:[/] {doc['analyst_summary']}")
    evidence = pq.read_table(root / "evidence.parquet").to_pylist()
    for i, f in enumerate(doc.get("findings", []), 1):
        if f["status"] == "supported":
            rows = [e for e in evidence if e["finding_id"] == f["id"] and e["arm"] == "test"]
            render_terminal(rows, console, top=top, divergence=f"divergence, H{i} test prompts")
    report = root / "report.html"
    if report.is_file():
        console.print(f"HTML report: {report}")


def _fmt(v: object, spec: str = ".3g") -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)
