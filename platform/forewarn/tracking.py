"""MLflow tracking: an experiment per job type, a run per job run, the resolved config logged first.

The embedded default store is ``sqlite:///mlflow.db`` in the working directory; ``MLFLOW_TRACKING_URI``
wins when set, then ``tracking.tracking_uri`` from the config. ``NullTracker`` has the same methods and
does nothing, so library code never branches on whether tracking is on.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from forewarn.config import TrackingConfig, config_hash, to_yaml


def default_tracking_uri() -> str:
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def resolve_tracking_uri(cfg: TrackingConfig) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking_uri or default_tracking_uri()


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
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

    def __enter__(self) -> "Tracker":
        mlflow = self.mlflow
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_experiment(self.cfg.experiment or f"forewarn-{self.job}")
        tags = {"forewarn.job": self.job, "forewarn.git_commit": git_commit(), **self.cfg.tags}
        if self.job_config is not None:
            tags["forewarn.config_hash"] = config_hash(self.job_config)
        run = mlflow.start_run(run_name=self.cfg.run_name, tags=tags)
        self.run_id = run.info.run_id
        if self.job_config is not None:
            # the resolved config goes first, as an artifact and as flat params.
            mlflow.log_text(to_yaml(self.job_config), "config.yaml")
            self.log_params(self.job_config.model_dump(mode="json"))
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.mlflow.end_run(status="FAILED" if exc_type else "FINISHED")

    def log_params(self, params: dict) -> None:
        flat = {k: str(v)[:6000] for k, v in flatten(params).items()}
        items = list(flat.items())
        for i in range(0, len(items), 100):
            self.mlflow.log_params(dict(items[i : i + 100]))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        clean = {k: float(v) for k, v in metrics.items() if v is not None}
        if clean:
            self.mlflow.log_metrics(clean, step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        p = Path(path)
        if p.is_dir():
            self.mlflow.log_artifacts(str(p), artifact_path=artifact_path)
        else:
            self.mlflow.log_artifact(str(p), artifact_path=artifact_path)

    def log_figure(self, figure: Any, name: str) -> None:
        self.mlflow.log_figure(figure, name)

    def log_dict(self, obj: dict, name: str) -> None:
        self.mlflow.log_dict(obj, name)

    def log_text(self, text: str, name: str) -> None:
        self.mlflow.log_text(text, name)

    def set_tags(self, tags: dict[str, str]) -> None:
        self.mlflow.set_tags(tags)


def make_tracker(cfg: TrackingConfig, job: str, job_config: BaseModel | None = None) -> NullTracker:
    """A live MLflow tracker, or a NullTracker when ``tracking.enabled`` is false."""
    return Tracker(cfg, job, job_config) if cfg.enabled else NullTracker()
