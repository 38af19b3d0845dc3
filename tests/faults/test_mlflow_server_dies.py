"""Fault: the MLflow tracking server (a real ``mlflow server`` on a loopback port) goes away.

Mid-run, the run finishes, warns once on stderr and reports the gap in ``summary.json`` (``tracking_gap``);
every generation is written exactly once. Down before the run starts, the job stops before any work with
one line that says what to do."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from forewarn.pipeline.prompt_files import read_prompts
from forewarn.records import stable_id
from forewarn.testbed import resolve_path
from forewarn.testing.faults import mlflow_server, rows_lost_duplicated

ROOT = Path(__file__).resolve().parents[2]
LIMIT, N = 16, 2
SETS = [
    "target.model.path=testbed:target@small",
    "prompts=testbed:heldout_planted@small",
    f"limit={LIMIT}",
    f"params.n={N}",
    "params.max_new_tokens=24",
    "ray.num_cpus=2",
]


def generate_cmd(out: Path) -> list[str]:
    return [
        sys.executable,
        "jobs/generate.py",
        "--output-dir",
        str(out),
        *[a for s in SETS for a in ("--set", s)],
    ]


def count(db: Path, table: str) -> int:
    if not db.is_file():
        return 0
    try:
        with sqlite3.connect(db, timeout=1) as con:
            return con.execute(f"select count(*) from {table}").fetchone()[0]
    except sqlite3.Error:  # the server is still creating its tables
        return 0


@pytest.mark.slow
def test_server_killed_mid_run_run_finishes_and_reports_the_gap(
    tmp_path: Path, testbed, fault_report
) -> None:
    out, store = tmp_path / "run", tmp_path / "mlflow"
    with mlflow_server(store) as server:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": server.uri}
        with open(tmp_path / "job.log", "w") as log:
            proc = subprocess.Popen(
                generate_cmd(out), cwd=ROOT, env=env, stdout=log, stderr=subprocess.PIPE, text=True
            )
            deadline = time.monotonic() + 600
            while (
                count(store / "mlflow.db", "params") == 0
                and proc.poll() is None
                and time.monotonic() < deadline
            ):
                time.sleep(0.2)  # the run exists and its config is logged: the job is about to generate
            assert proc.poll() is None, "the job ended before the server could be killed"
            server.kill()
            _, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    gap = summary["tracking_gap"]
    assert gap["tracking_uri"] == server.uri and gap["run_id"] == summary["mlflow_run_id"]
    # killed once the run and its first params exist: the gap opens at whichever logging call came next
    assert (
        gap["first_failed_call"] in {"log_params", "log_metrics", "log_artifact"}
        and gap["dropped_calls"] >= 2
    ), gap
    warnings = [line for line in stderr.splitlines() if line.startswith("forewarn: warning: MLflow tracking")]
    assert len(warnings) == 1 and "went away" in warnings[0] and "tracking_gap" in warnings[0], stderr[-3000:]
    # what the dead server holds: the run, started and never finished (the gap is real, not papered over)
    with sqlite3.connect(store / "mlflow.db") as con:
        status = con.execute("select status from runs where run_uuid = ?", (gap["run_id"],)).fetchone()[0]
    assert status == "RUNNING"
    prompts = read_prompts(resolve_path("testbed:heldout_planted@small"))[:LIMIT]
    expected = [f"{stable_id(i, p)}/{s}" for i, p in enumerate(prompts) for s in range(N)]
    table = pq.read_table(out / "generations.parquet").to_pydict()
    lost, dup = rows_lost_duplicated(expected, [f"{i}/{s}" for i, s in zip(table["id"], table["sample"])])
    fault_report(
        "mlflow server killed mid-run",
        lost=lost,
        duplicated=dup,
        rows=len(expected),
        dropped_tracking_calls=gap["dropped_calls"],
    )
    assert (lost, dup) == (0, 0) and summary["n_generations"] == len(expected)


@pytest.mark.slow
def test_server_down_at_start_stops_before_work(tmp_path: Path, fault_report) -> None:
    out = tmp_path / "run"
    with mlflow_server(tmp_path / "mlflow") as server:
        server.kill()
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": server.uri}
        res = subprocess.run(
            generate_cmd(out), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
        )
    assert res.returncode == 1, res.stderr[-3000:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    last = [line for line in res.stderr.splitlines() if line.startswith("forewarn:")]
    assert len(last) == 1 and f"MLflow tracking at {server.uri} cannot be reached" in last[0], res.stderr[
        -3000:
    ]
    assert "tracking.enabled=false" in last[0] and "nothing has run" in last[0]
    assert not (out / "generations.parquet").exists() and not (out / "summary.json").exists()
    fault_report("mlflow server down before the run", lost=0, duplicated=0, rows_written=0)
