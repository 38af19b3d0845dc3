"""CLI of cluster-scale work: ``forewarn plan``, ``forewarn runs compare`` and ``forewarn cluster check``.

``forewarn/cli.py`` mounts these; the logic lives in ``placement``, ``cluster`` and ``runs``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Optional

import typer

from forewarn import placement as C
from forewarn.cli_common import ConfigOpt, SetOpt
from forewarn.errors import ConfigError
from forewarn.placement import cluster_yaml_nodes, fmt, validate_cluster_yaml
from forewarn.runner import JOBS, fail, job_module, resolve

_JOB_HEADER = re.compile(r"^#\s*forewarn[- ]job:\s*([A-Za-z0-9_]+)")


def config_job(path: Path | None) -> str | None:
    """The job a config file names in a ``# forewarn-job: NAME`` comment among its first lines, if any."""
    if path is None or not path.is_file():
        return None
    for line in path.read_text().splitlines()[:10]:
        m = _JOB_HEADER.match(line.strip())
        if m:
            return m.group(1)
    return None


def plan(
    config: Optional[Path] = ConfigOpt,
    job: Optional[str] = typer.Option(
        None,
        "--job",
        "-j",
        help=f"job: {', '.join(sorted(JOBS))}; default: the config's '# forewarn-job:' line, else reversegen",
    ),
    overrides: Optional[list[str]] = SetOpt,
    address: Optional[str] = typer.Option(
        None,
        "--address",
        help="a running Ray cluster (GCS host:port or "
        "'auto'); default: RAY_ADDRESS, then ray.address of the config",
    ),
    cluster: Optional[Path] = typer.Option(
        None,
        "--cluster",
        help="plan against a cluster YAML at its largest (head + every worker type at max_workers)",
    ),
    node: Optional[list[str]] = typer.Option(None, "--node", help="a node, [Nx]CPU=<n>,GPU=<n> (repeatable)"),
    as_json: bool = typer.Option(False, "--json", help="print the plan as JSON"),
) -> None:
    """Say which role gets which CPUs/GPUs on which node; exit 2 with the reason when the cluster cannot fit it."""

    job = job or config_job(config) or "reversegen"
    try:
        cfg = resolve(job, str(config) if config else None, overrides or [])
        if node:
            nodes, source = C.parse_nodes(node), "--node"
        elif cluster is not None:
            nodes, source = C.cluster_yaml_nodes(cluster), f"{cluster} at its largest"
        elif address or os.environ.get("RAY_ADDRESS") or cfg.ray.address:
            addr = address or os.environ.get("RAY_ADDRESS") or cfg.ray.address
            nodes, source = C.connect_and_list(addr), f"the Ray cluster at {addr}"
        else:
            nodes, source = C.local_nodes(cfg.ray), "this machine (a local Ray)"
        result = C.plan(cfg, nodes, job, getattr(job_module(job), "PLACEMENT", None))
    except ConfigError as e:
        fail(str(e))
    if as_json:
        typer.echo(json.dumps({"source": source, **result.to_dict()}, indent=2))
    else:
        typer.echo(f"# nodes from {source}")
        typer.echo(result.render(), nl=False)


runs_app = typer.Typer(help="Compare runs tracked in MLflow.", no_args_is_help=True)


@runs_app.command("compare")
def runs_compare(
    experiment: str = typer.Argument(..., help="MLflow experiment, or a job name (reversegen)"),
    tracking_uri: Optional[str] = typer.Option(
        None, "--tracking-uri", help="default: MLFLOW_TRACKING_URI, then ./mlflow.db"
    ),
    max_runs: int = typer.Option(10, "--max-runs", min=1, help="newest runs shown"),
    metric: Optional[list[str]] = typer.Option(
        None, "--metric", "-m", help="metric name pattern, e.g. 'final_*' (repeatable)"
    ),
    as_json: bool = typer.Option(False, "--json", help="print records as JSON"),
) -> None:
    """Headline metrics of EXPERIMENT's recent runs, with their job, config hash, commit and models."""
    # lazy: loads pandas only when called
    from forewarn.runs import compare, render

    try:
        df = compare(experiment, tracking_uri=tracking_uri, max_runs=max_runs, metrics=metric or None)
    except ConfigError as e:
        fail(str(e))
    if as_json:
        typer.echo(df.to_json(orient="records", indent=2))
    elif df.empty:
        typer.echo(f"experiment {experiment!r} has no runs yet")
    else:
        typer.echo(render(df, f"{experiment}: {len(df)} most recent runs"), nl=False)


cluster_app = typer.Typer(help="Cluster launcher files.", no_args_is_help=True)


@cluster_app.command("check")
def cluster_check(file: Path = typer.Argument(..., help="cluster YAML for `ray up`")) -> None:
    """Validate FILE offline with Ray's own cluster-config validator and list its nodes at the largest size."""

    try:
        validate_cluster_yaml(file)
        nodes = cluster_yaml_nodes(file)
    except ConfigError as e:
        fail(str(e))
    typer.echo(f"{file}: valid Ray cluster config; at its largest {len(nodes)} nodes:")
    for n in nodes:
        typer.echo(f"  {n.name}: {fmt(n.resources)}")
