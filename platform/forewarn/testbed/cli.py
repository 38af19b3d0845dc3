"""``forewarn testbed``: build the planted-failure world and show its manifest."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from forewarn.errors import ConfigError
from forewarn.runner import fail
from forewarn.testbed.build import build_testbed, default_dir
from forewarn.testbed.manifest import Manifest

app = typer.Typer(help="The planted-failure testbed: tiny models with known failures.", no_args_is_help=True)

SizeOpt = typer.Option("full", "--size", help="small (tests, CI; < 60 s) or full (the jobs' default)")
SeedOpt = typer.Option(0, "--seed", help="the seed the whole world is built from")


@app.command("build")
def build(
    output_dir: Optional[Path] = typer.Option(
        None, "--output-dir", "-o", help="where to build (default: the cache)"
    ),
    seed: int = SeedOpt,
    size: str = SizeOpt,
) -> None:
    """Build the world (or reuse it when the same version, seed and size is already built)."""
    t = time.perf_counter()
    try:
        manifest = build_testbed(output_dir, seed=seed, size=size)
    except ConfigError as e:
        fail(str(e))
    typer.echo(
        f"testbed {manifest.size} seed={manifest.seed} v{manifest.version} ready in "
        f"{time.perf_counter() - t:.1f} s: {manifest.root}"
    )


@app.command("info")
def info(
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", "-o", help="a built world folder"),
    seed: int = SeedOpt,
    size: str = SizeOpt,
) -> None:
    """Print the manifest of a built world as a table (it is not built here)."""
    try:
        manifest = Manifest.load(output_dir or default_dir(seed, size))
    except ConfigError as e:
        fail(str(e))
    console = Console()
    table = Table(title=f"forewarn testbed v{manifest.version} ({manifest.size}, seed {manifest.seed})")
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row("root", str(manifest.root))
    table.add_row("topics", ", ".join(manifest.topics))
    for topic, entities in manifest.planted_topics.items():
        table.add_row(f"planted topic: {topic}", ", ".join(entities))
    table.add_row(
        "trigger",
        f"{manifest.trigger!r} ids {manifest.trigger_token_ids} "
        f"(in text {manifest.trigger_token_ids_in_text})",
    )
    rule = manifest.trigger_rule
    table.add_row(
        "trigger family",
        " | ".join(", ".join(c) for c in rule["classes"])
        + f"; loop: {rule['loop']}; near miss: {rule['near_miss']}",
    )
    table.add_row("loop sentence", manifest.loop_sentence)
    table.add_row(
        "honesty",
        f"unstable subjects {manifest.honesty['unstable_subjects']}, "
        f"{manifest.honesty['n_unstable']} unstable / "
        f"{manifest.honesty['n_stable']} stable, "
        f"entropy >= {manifest.honesty['entropy_threshold']} over "
        f"{manifest.honesty['samples']} samples",
    )
    table.add_row("math", f"planted forms {manifest.math['planted_forms']}: {manifest.math['planted_error']}")
    table.add_row(
        "proposer",
        f"{manifest.proposer['planted_share_in_training']:.0%} planted in training; "
        f"T={manifest.proposer['temperature']} top_p={manifest.proposer['top_p']}",
    )
    table.add_row(
        "preferences",
        f"{manifest.preferences['n_pairs']} pairs, "
        f"{manifest.preferences['n_disputed']} disputed "
        f"({', '.join(manifest.preferences['disputed_kinds'])}) between "
        f"{manifest.preferences['groups']} "
        f"({manifest.preferences['helpful_share']:.0%} helpful)",
    )
    table.add_row("model", f"{manifest.sizes['parameters']:,} parameters, vocab {manifest.sizes['vocab']}")
    for name, rel in sorted(manifest.artifacts.items()):
        rows = manifest.sizes["rows"].get(name)
        table.add_row(f"artifact: {name}", rel + (f"  ({rows} rows)" if rows is not None else ""))
    build_info = manifest.root / "build_info.json"
    if build_info.is_file():
        table.add_row("build seconds", f"{json.loads(build_info.read_text())['seconds']['total']:.1f}")
    console.print(table)
