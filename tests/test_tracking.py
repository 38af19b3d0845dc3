"""Tracking: the resolved config is logged first, metrics per step, tags; a NullTracker when off."""

from __future__ import annotations

from pathlib import Path

import mlflow

from forewarn.config import TrackingConfig
from forewarn.pipeline.generate_job import GenerateConfig
from forewarn.tracking import NullTracker, Tracker, make_tracker


def test_tracker_logs_config_metrics_and_tags(mlflow_uri: str, tmp_path: Path) -> None:
    cfg = GenerateConfig(prompts="p.txt", tracking=TrackingConfig(experiment="forewarn-test", tags={"team": "red"}))
    with make_tracker(cfg.tracking, "generate", cfg) as tr:
        assert isinstance(tr, Tracker) and tr.tracking_uri == mlflow_uri
        tr.log_metrics({"asr": 0.1}, step=0)
        tr.log_metrics({"asr": 0.3}, step=1)
        (tmp_path / "t.txt").write_text("x")
        tr.log_artifact(tmp_path / "t.txt", "tables")
        run_id = tr.run_id
    client = mlflow.MlflowClient(tracking_uri=mlflow_uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["forewarn.job"] == "generate" and run.data.tags["team"] == "red"
    assert len(run.data.tags["forewarn.config_hash"]) == 12
    assert run.data.params["params.max_new_tokens"] == "64"
    assert [m.value for m in client.get_metric_history(run_id, "asr")] == [0.1, 0.3]
    arts = {a.path for a in client.list_artifacts(run_id)}
    assert "config.yaml" in arts and "tables" in arts


def test_tracking_off_is_a_null_tracker() -> None:
    tr = make_tracker(TrackingConfig(enabled=False), "generate")
    assert isinstance(tr, NullTracker) and not isinstance(tr, Tracker)
    with tr as t:
        t.log_metrics({"x": 1.0})
        assert t.run_id is None
