"""Fault: a two-node Ray cluster on one machine (``ray.cluster_utils.Cluster``) loses its worker node while
the generate job runs on it; a replacement node joins, as an autoscaler would bring one. The run completes
(or, if it fails, a rerun with the same output dir does), and every (prompt, sample) row is written exactly
once."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
from forewarn.pipeline.prompt_files import read_prompts
from forewarn.records import stable_id
from forewarn.runner import resolve, run_job
from forewarn.testbed import resolve_path
from forewarn.testing.faults import rows_lost_duplicated
from forewarn.testing.ray_head import local_cluster

pytestmark = pytest.mark.slow

LIMIT, N = 32, 2
SETS = [
    "target.model.path=testbed:target@small",
    "prompts=testbed:heldout_planted@small",
    f"limit={LIMIT}",
    f"params.n={N}",
    "params.max_new_tokens=32",
    "target.resources.replicas=3",
    "target.resources.batch_size=2",
    "tracking.enabled=false",
]


def generate_actors_ready(node) -> list[int]:
    """Pids of generate-stage actors on ``node`` whose constructor has finished (the model is loaded)."""
    raylet = node.all_processes["raylet"][0].process.pid
    pids = []
    for p in psutil.Process(raylet).children(recursive=True):
        try:
            title = " ".join(p.cmdline())
        except psutil.Error:
            continue
        if "MapWorker" in title and "GenerateUDF" in title and "__init__" not in title:
            pids.append(p.pid)
    return pids


def test_worker_node_lost_mid_run(testbed, tmp_path: Path, fault_report) -> None:
    out = tmp_path / "run"
    cfg = resolve("generate", overrides=SETS, output_dir=str(out))
    outcome: dict = {}

    def job() -> None:
        try:
            outcome["summary"] = run_job("generate", cfg, quiet=True)
        except Exception as e:  # noqa: BLE001 -- the test decides what a failed first run means
            outcome["error"] = e

    with local_cluster(head_cpus=1, worker_cpus=[2]) as (cluster, workers):
        thread = threading.Thread(target=job, daemon=True)
        thread.start()
        deadline = time.monotonic() + 600
        while thread.is_alive() and not generate_actors_ready(workers[0]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert thread.is_alive(), f"the run ended before its worker node could be removed: {outcome}"
        on_node = generate_actors_ready(workers[0])
        assert on_node, "no generate actor ever ran on the worker node"
        cluster.remove_node(
            workers[0], allow_graceful=False
        )  # the machine is gone: its processes die at once
        cluster.add_node(num_cpus=2)  # a replacement joins
        thread.join(timeout=900)
        assert not thread.is_alive(), "the run hung after losing its worker node"
        path = "completed"
        if "error" in outcome:  # the run failed: a rerun with the same output dir must finish it cleanly
            path = f"failed ({type(outcome['error']).__name__}), resumed on rerun"
            outcome["summary"] = run_job("generate", cfg, quiet=True)
    summary = outcome["summary"]
    prompts = read_prompts(resolve_path("testbed:heldout_planted@small"))[:LIMIT]
    expected = [f"{stable_id(i, p)}/{s}" for i, p in enumerate(prompts) for s in range(N)]
    table = pq.read_table(out / "generations.parquet").to_pydict()
    lost, dup = rows_lost_duplicated(expected, [f"{i}/{s}" for i, s in zip(table["id"], table["sample"])])
    fault_report(
        "worker node removed mid-run",
        lost=lost,
        duplicated=dup,
        rows=len(expected),
        run=path,
        actors_on_lost_node=len(on_node),
    )
    assert (lost, dup) == (0, 0)
    assert summary["n_generations"] == len(expected) and summary["n_errors"] == 0
