"""Pieces every CLI group shares: the --config/--set/--output-dir options and the job-running body."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from forewarn.runner import resolve_and_run

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config file (overrides the packaged defaults)")
SetOpt = typer.Option(None, "--set", help="override a field by dotted path: --set a.b=c (repeatable)")
OutOpt = typer.Option(None, "--output-dir", "-o", help="run directory (a rerun with the same dir resumes)")


def run_named_job(
    job: str, config: Optional[Path], overrides: Optional[list[str]], output_dir: Optional[str]
) -> dict:
    """Resolve and run ``job`` with the job files' error handling (:func:`forewarn.runner.resolve_and_run`)."""
    return resolve_and_run(job, str(config) if config else None, overrides or [], output_dir)


def add_job_command(app: typer.Typer, name: str, job: str, help: str, fixed: tuple[str, ...] = ()) -> None:
    """Register ``<group> NAME [--config] [--set ...] [--output-dir]`` running ``job``.

    ``fixed`` overrides (e.g. ``mode=toy``) come before the user's ``--set``, which may not change them.
    """

    def command(
        config: Optional[Path] = ConfigOpt,
        overrides: Optional[list[str]] = SetOpt,
        output_dir: Optional[str] = OutOpt,
    ) -> None:
        run_named_job(job, config, [*fixed, *(overrides or [])], output_dir)

    command.__doc__ = help
    app.command(name)(command)
