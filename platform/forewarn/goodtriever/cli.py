"""``forewarn goodtriever``: build datastores and run the toxicity evaluation (raw / kNN-LM / DExperts)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from forewarn.cli_common import ConfigOpt, OutOpt, SetOpt, run_named_job
from forewarn.errors import ConfigError
from forewarn.goodtriever.datastore import build_datastores
from forewarn.goodtriever.job import resolve_names
from forewarn.runner import fail, init_ray, resolve

app = typer.Typer(
    help="Retrieval-augmented toxicity mitigation (Goodtriever kNN-LM, DExperts).", no_args_is_help=True
)


@app.command("build")
def build(
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[list[str]] = SetOpt,
    output_dir: Optional[str] = OutOpt,
    only: Optional[list[str]] = typer.Option(None, "--only", help="build only these datastores"),
) -> None:
    """Build the job's datastores (keys with Ray Data, then the faiss index) into datastore_dir."""

    try:
        cfg = resolve("goodtriever", str(config) if config else None, overrides or [], output_dir)
        unknown = sorted(set(only or []) - set(cfg.datastores))
        if unknown:
            raise ConfigError(f"--only {unknown}: no such datastore (have {', '.join(cfg.datastores)})")
        cfg = resolve_names(cfg)
        init_ray(cfg.ray)
        root = Path(cfg.datastore_dir) if cfg.datastore_dir else Path(cfg.output_dir) / "datastores"
        names = [n for n in cfg.datastores if not only or n in only]
        metas = build_datastores({n: cfg.datastores[n] for n in names}, {n: root / n for n in names})
        for name, meta in metas.items():
            idx = meta["index"]
            typer.echo(
                f"{name}: {meta['n']} keys x {meta['dim']} from {meta['n_docs']} docs, {idx['kind']} "
                f"index ({idx['total_seconds']:.1f}s) -> {root / name}"
            )
    except ConfigError as e:
        fail(str(e))


@app.command("eval")
def evaluate(
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[list[str]] = SetOpt,
    output_dir: Optional[str] = OutOpt,
) -> None:
    """Build missing datastores, then evaluate every system side by side (summary.json, MLflow)."""
    run_named_job("goodtriever", config, overrides, output_dir)
