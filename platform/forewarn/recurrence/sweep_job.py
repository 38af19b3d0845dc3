"""The ``recurrence_sweep`` job: a Ray Tune sweep of the trigger search (see ``recurrence/sweep.py``).

    python tune/trigger_search.py --set tune.num_samples=8 --set search.max_evaluations=400

Writes ``trials.parquet`` (one row per trial: config and final metrics) and a summary with the best config
and its triggers; every trial is its own MLflow run (experiment ``tune.experiment``).
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from forewarn.pipeline.rundir import RunDir
from forewarn.recurrence.config import RecurrenceSweepConfig
from forewarn.recurrence.job import resolve_names
from forewarn.recurrence.sweep import run_sweep
from forewarn.tracking import resolve_tracking_uri

CONFIG = RecurrenceSweepConfig


def run(cfg: RecurrenceSweepConfig, rundir: RunDir, tracker: Any) -> dict:
    cfg = resolve_names(cfg)
    uri = tracker.tracking_uri or resolve_tracking_uri(cfg.tracking)
    summary = run_sweep(cfg, rundir.path("tune"), uri)
    rows = [
        {"config": json.dumps(t["config"]), **{k: v for k, v in t.items() if k != "config"}}
        for t in summary["trials"]
    ]
    rundir.write_table("trials", pa.Table.from_pylist(rows))
    tracker.log_params({f"best.{k}": v for k, v in summary["best_config"].items()})
    tracker.log_metrics({"best_score": summary["best_score"] or 0.0, "n_trials": summary["n_trials"]})
    tracker.log_artifact(rundir.path("trials.parquet"), "tables")
    return summary
