"""Tracking: the resolved config is logged first, metrics per step, tags; a NullTracker when off."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import mlflow
import pytest
from forewarn.config import TrackingConfig, config_hash
from forewarn.pipeline.generate_job import GenerateConfig
from forewarn.testing.ray_head import free_port
from forewarn.tracking import TrackingUnavailable, make_tracker

ROOT = Path(__file__).resolve().parents[1]


def git_head() -> str:
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()


def test_tracker_logs_config_metrics_and_tags(mlflow_uri: str, tmp_path: Path) -> None:
    cfg = GenerateConfig(
        prompts="p.txt", tracking=TrackingConfig(experiment="forewarn-test", tags={"team": "red"})
    )
    heads = {git_head()}
    with make_tracker(cfg.tracking, "generate", cfg) as tr:
        assert tr.tracking_uri == mlflow_uri
        tr.log_metrics({"asr": 0.1}, step=0)
        tr.log_metrics({"asr": 0.3}, step=1)
        (tmp_path / "t.txt").write_text("x")
        tr.log_artifact(tmp_path / "t.txt", "tables")
        run_id = tr.run_id
    client = mlflow.MlflowClient(tracking_uri=mlflow_uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["forewarn.job"] == "generate" and run.data.tags["team"] == "red"
    assert run.data.tags["forewarn.config_hash"] == config_hash(cfg)
    # the commit that ran, not a placeholder ("unknown" has no place here: the tests run in a checkout)
    assert run.data.tags["forewarn.git_commit"] in heads | {git_head()}  # others may commit meanwhile
    assert run.data.params["params.max_new_tokens"] == "64"
    assert [m.value for m in client.get_metric_history(run_id, "asr")] == [0.1, 0.3]
    arts = {a.path for a in client.list_artifacts(run_id)}
    assert "config.yaml" in arts and "tables" in arts


def test_tracking_off_logs_nothing(mlflow_uri: str) -> None:
    with make_tracker(TrackingConfig(enabled=False), "generate") as t:
        t.log_metrics({"x": 1.0})
        t.set_tags({"a": "b"})
        assert t.run_id is None and t.gap is None
    # MLFLOW_TRACKING_URI points at a store: nothing reached it
    assert mlflow.MlflowClient(tracking_uri=mlflow_uri).search_runs(experiment_ids=["0"]) == []
    assert [e.name for e in mlflow.MlflowClient(tracking_uri=mlflow_uri).search_experiments()] == ["Default"]


def test_unreachable_server_at_start_stops_before_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing listens on the port: entering the tracker fails fast, with what to do, instead of retrying for
    minutes (MLflow's default back-off) or running untracked without saying so."""
    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for k in (
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
        "MLFLOW_HTTP_REQUEST_TIMEOUT",
    ):
        monkeypatch.delenv(k, raising=False)
    tracker = make_tracker(TrackingConfig(), "generate")
    with pytest.raises(TrackingUnavailable, match="cannot be reached") as err, tracker:
        pytest.fail("the tracker entered without a server")
    assert uri in str(err.value) and "tracking.enabled=false" in str(err.value)
    # bounded retries (2, short back-off) instead of MLflow's default 7 with minutes of back-off
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"
