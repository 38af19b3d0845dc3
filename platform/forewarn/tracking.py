"""MLflow tracking: an experiment per job type, a run per job run, the resolved config logged first.

The embedded default store is ``sqlite:///mlflow.db`` in the working directory; ``MLFLOW_TRACKING_URI``
wins when set, then ``tracking.tracking_uri`` from the config. ``NullTracker`` has the same methods and
does nothing, so library code never branches on whether tracking is on.

A tracking server that cannot be reached when the run starts stops the job before any work
(:class:`TrackingUnavailable`). One that goes away mid-run does not cost the run: the first failed call
warns (:class:`TrackingGapWarning`), every later call is dropped without waiting on the dead server, and
the gap (first failed call, when, why, how many calls dropped) goes into ``summary.json`` as
``tracking_gap``. An HTTP server's requests retry twice with short back-off unless the ``MLFLOW_HTTP_REQUEST_*``
variables say otherwise, so a dead server costs seconds, not MLflow's default minutes.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from forewarn.config import TrackingConfig, config_hash, to_yaml
from forewarn.errors import ForewarnError

HTTP_RETRY_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


class TrackingUnavailable(ForewarnError):
    """The tracking server cannot be reached when the run starts (nothing has run yet)."""


class TrackingGapWarning(UserWarning):
    """The tracking server went away mid-run: the run goes on and ``summary.json`` says what was not logged."""


def default_tracking_uri() -> str:
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def resolve_tracking_uri(cfg: TrackingConfig) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking_uri or default_tracking_uri()


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


class NullTracker:
    """Tracking turned off: every call is a no-op."""

    run_id: str | None = None
    tracking_uri: str | None = None
    gap: dict[str, Any] | None = None  # set when the tracking server went away mid-run

    def __enter__(self) -> "NullTracker":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def log_params(self, params: dict) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def log_figure(self, figure: Any, name: str) -> None: ...
    def log_dict(self, obj: dict, name: str) -> None: ...
    def log_text(self, text: str, name: str) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...


class Tracker(NullTracker):
    """An MLflow run. Use as a context manager: the run starts on enter and ends on exit."""

    def __init__(self, cfg: TrackingConfig, job: str, job_config: BaseModel | None = None):
        import mlflow  # imported lazily: it is slow and not every code path tracks

        self.mlflow = mlflow
        self.cfg, self.job, self.job_config = cfg, job, job_config
        self.tracking_uri = resolve_tracking_uri(cfg)
        self.run_id = None
        self.gap = None
        if self.tracking_uri.startswith(("http://", "https://")):
            for k, v in HTTP_RETRY_DEFAULTS.items():
                os.environ.setdefault(k, v)

    def __enter__(self) -> "Tracker":
        mlflow = self.mlflow
        mlflow.set_tracking_uri(self.tracking_uri)
        tags = {"forewarn.job": self.job, "forewarn.git_commit": git_commit(), **self.cfg.tags}
        if self.job_config is not None:
            tags["forewarn.config_hash"] = config_hash(self.job_config)
        try:
            mlflow.set_experiment(self.cfg.experiment or f"forewarn-{self.job}")
            run = mlflow.start_run(run_name=self.cfg.run_name, tags=tags)
        except Exception as e:  # any failure to reach the store stops the run before work
            if not unreachable(e):
                raise
            raise TrackingUnavailable(
                f"MLflow tracking at {self.tracking_uri} cannot be reached ({short_error(e)}); nothing has run. "
                "Start the server, point MLFLOW_TRACKING_URI elsewhere, or set tracking.enabled=false"
            ) from None
        self.run_id = run.info.run_id
        if self.job_config is not None:
            # the resolved config goes first, as an artifact and as flat params.
            self._call("log_text", mlflow.log_text, to_yaml(self.job_config), "config.yaml")
            self.log_params(self.job_config.model_dump(mode="json"))
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        status = "FAILED" if exc_type else "FINISHED"
        self._call("end_run", self.mlflow.end_run, status=status)
        if self.gap is not None and self.mlflow.active_run() is not None:
            # the server is gone: end_run pops the run locally (so this process can start another), then fails
            # to reach the server, which the gap already accounts for
            with contextlib.suppress(Exception):
                self.mlflow.end_run(status=status)

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call MLflow unless the server already went away; a first failure to reach it opens the gap."""
        if self.gap is not None:
            self.gap["dropped_calls"] += 1
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # only an unreachable server is absorbed, see unreachable
            if not unreachable(e):
                raise
            self.gap = {
                "tracking_uri": self.tracking_uri,
                "run_id": self.run_id,
                "first_failed_call": what,
                "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "error": short_error(e),
                "dropped_calls": 1,
            }
            message = (
                f"MLflow tracking at {self.tracking_uri} went away during {what} ({short_error(e)}); the run "
                "goes on without tracking and summary.json reports the gap (tracking_gap)"
            )
            warnings.warn(message, TrackingGapWarning, stacklevel=3)
            print(f"forewarn: warning: {message}", file=sys.stderr, flush=True)
            return None

    def log_params(self, params: dict) -> None:
        flat = {k: str(v)[:6000] for k, v in flatten(params).items()}
        items = list(flat.items())
        for i in range(0, len(items), 100):
            self._call("log_params", self.mlflow.log_params, dict(items[i : i + 100]))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        clean = {k: float(v) for k, v in metrics.items() if v is not None}
        if clean:
            self._call("log_metrics", self.mlflow.log_metrics, clean, step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        p = Path(path)
        if p.is_dir():
            self._call("log_artifacts", self.mlflow.log_artifacts, str(p), artifact_path=artifact_path)
        else:
            self._call("log_artifact", self.mlflow.log_artifact, str(p), artifact_path=artifact_path)

    def log_figure(self, figure: Any, name: str) -> None:
        self._call("log_figure", self.mlflow.log_figure, figure, name)

    def log_dict(self, obj: dict, name: str) -> None:
        self._call("log_dict", self.mlflow.log_dict, obj, name)

    def log_text(self, text: str, name: str) -> None:
        self._call("log_text", self.mlflow.log_text, text, name)

    def set_tags(self, tags: dict[str, str]) -> None:
        self._call("set_tags", self.mlflow.set_tags, tags)


def unreachable(e: BaseException) -> bool:
    """True when ``e`` says the store could not be reached (connection refused, reset, timed out), not that it
    answered with an error (``RestException``: a bad request is a bug to surface, not a gap to absorb)."""
    from mlflow.exceptions import MlflowException, RestException

    if isinstance(e, RestException):
        return False
    if isinstance(e, OSError):
        return True
    try:
        import requests

        if isinstance(e, requests.exceptions.RequestException):
            return True
    except ImportError:
        pass
    return isinstance(e, MlflowException) and "API request to" in str(e)


def short_error(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}"


def make_tracker(cfg: TrackingConfig, job: str, job_config: BaseModel | None = None) -> NullTracker:
    """A live MLflow tracker, or a NullTracker when ``tracking.enabled`` is false."""
    return Tracker(cfg, job, job_config) if cfg.enabled else NullTracker()
