"""``forewarn serve``: start the guarded generator on Ray Serve and block until Ctrl-C."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from forewarn.config import load_config, to_yaml
from forewarn.errors import ConfigError, ForewarnError
from forewarn.runner import fail, init_ray
from forewarn.serve.auth import check_exposure, key_env_vars
from forewarn.serve.config import ServeConfig

app = typer.Typer(
    help="Serve the guarded generator behind an OpenAI-compatible API (Ray Serve).",
    pretty_exceptions_enable=False,
)


def resolve_serve_config(config: str | None, overrides: list[str] | None) -> ServeConfig:
    """Defaults < forewarn/defaults/serve.yaml < --config < --set."""
    return load_config(ServeConfig, job="serve", path=config, overrides=overrides or [])


@app.callback(invoke_without_command=True)
def serve_cmd(
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML ServeConfig (over the defaults)"),
    overrides: list[str] | None = typer.Option(None, "--set", help="override a field: --set a.b=c"),
    host: str | None = typer.Option(None, help="bind address (default: http.host)"),
    port: int | None = typer.Option(None, help="port (default: http.port)"),
    show_config: bool = typer.Option(False, "--show-config", help="print the resolved config and exit"),
) -> None:
    """Start input guard → generation → loop stop → output guard at http://HOST:PORT/v1 (Ctrl-C stops)."""

    sets = list(overrides or [])
    if host is not None:
        sets.append(f"http.host={host}")
    if port is not None:
        sets.append(f"http.port={port}")
    try:
        cfg = resolve_serve_config(str(config) if config else None, sets)
    except ConfigError as e:
        fail(str(e))
    typer.echo(f"# forewarn serve: resolved config\n{to_yaml(cfg)}", nl=False)
    if show_config:
        return

    has_keys = bool(cfg.auth.api_keys or key_env_vars(cfg.auth) or cfg.auth.api_keys_file)
    try:
        check_exposure(cfg.auth, cfg.http.host, has_keys)
    except ConfigError as e:
        fail(str(e))
    from ray import serve

    # lazy: loads fastapi, ray, starlette only when called
    from forewarn.serve.serving import app_from_config

    try:
        init_ray(cfg.ray)
        serve.start(http_options={"host": cfg.http.host, "port": cfg.http.port})
        serve.run(app_from_config(cfg), name=cfg.app_name, route_prefix="/")
    except ForewarnError as e:
        typer.echo(f"forewarn: serve failed: {e}", err=True)
        raise SystemExit(1) from None
    typer.echo(f"serving {cfg.model_name!r} at http://{cfg.http.host}:{cfg.http.port}/v1 (Ctrl-C stops)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        typer.echo("shutting down")
        serve.shutdown()
