"""ReverseGen end to end on the small testbed world: through `ray job submit` to a local head, and a run
resumed after iteration 1's DPO step, killed during iteration 2 and resumed again, that ends with the same
rows as the uninterrupted run."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pyarrow.parquet as pq
import pytest

from forewarn.testing.ray_head import LocalHead, local_head

pytestmark = pytest.mark.slow  # end-to-end runs on the testbed: not in the -m 'not slow' inner loop

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    "proposer.model.path=testbed:proposer@small",
    "target.model.path=testbed:target@small",
    "seeds=testbed:reversegen_seeds@small",
    "iterations=3",
    "propose.prompts_per_iteration=32",
    "propose.params.n=6",
    "dpo.epochs=2",
    "dedup.semdedup=false",
]


def _sets(extra: list[str] = ()) -> list[str]:
    return [a for s in [*SMALL, *extra] for a in ("--set", s)]


def _tables(out: Path) -> dict[str, int]:
    return {
        str(p.relative_to(out)): pq.read_metadata(p).num_rows for p in sorted(out.glob("iter*/*.parquet"))
    }


@pytest.fixture(scope="module")
def head() -> Iterator[LocalHead]:
    """A real local Ray head started with `ray start`, as a user would."""
    with local_head(num_cpus=2) as h:
        yield h


@pytest.fixture(scope="module")
def submitted_run(head: LocalHead, testbed, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`ray job submit --working-dir . -- python jobs/reversegen.py ...` to the local head; waits for the end."""
    out = tmp_path_factory.mktemp("rg-submitted") / "run"
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    runtime_env = {
        "env_vars": {"MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1"},
        "excludes": [".git", "runs", "mlflow.db", "benchmarks/results"],
    }
    cmd = [
        str(Path(sys.executable).parent / "ray"),
        "job",
        "submit",
        "--address",
        head.dashboard,
        "--working-dir",
        ".",
        "--runtime-env-json",
        json.dumps(runtime_env),
        "--",
        sys.executable,
        "jobs/reversegen.py",
        "--output-dir",
        str(out),
        *_sets(),
    ]
    # a head from `ray start` uses token auth: the client runs with RAY_AUTH_MODE=token (head.env has it)
    for _ in range(24):  # a fresh head's job agent can take a while to come up on a busy machine
        proc = subprocess.run(cmd, cwd=ROOT, env=head.env, capture_output=True, text=True, timeout=1500)
        if "No available agent to submit job" not in proc.stderr:
            break
        time.sleep(5)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout + proc.stderr)  # drop the CLI's colours
    assert re.search(r"Job '\S+' succeeded", log), log[-3000:]
    out.joinpath(".mlflow_uri").write_text(uri)
    return out


def test_submitted_job_succeeds_and_reports(submitted_run: Path) -> None:
    summary = json.loads((submitted_run / "summary.json").read_text())
    its = summary["iterations"]
    assert [m["iteration"] for m in its] == [0, 1, 2]
    for m in its:
        assert 0 <= m["asr"] <= 1 and m["n_instructions"] > 0 and m["self_bleu"] > 0
        assert m["n_failures"] == round(m["asr"] * (m["n_instructions"] - m["n_judge_errors"]))
    assert summary["planted_topics_found"], "no planted topic was found at all"
    # DPO teaches the proposer what makes the target fail. Measured on this config, last iteration / first:
    # 1.85x, 1.96x, 1.74x (proposer seeds 0-2) and 1.63x in a clean-clone CI run whose freshly built testbed
    # gave 0.099 -> 0.094 -> 0.162 (iteration 1 alone can dip); with DPO's lr at 1e-12 (a step that teaches
    # nothing) 1.13x
    asr = [m["asr"] for m in its]
    assert asr[0] > 0 and asr[-1] >= 1.4 * asr[0], asr
    assert (submitted_run / "checkpoints" / "proposer_2" / "model" / "config.json").is_file()
    # long-lived role pools: target and judge load once per run, the proposer once per iteration (its first
    # load, then a reload after each DPO step); no embedder here (SemDeDup off)
    assert summary["model_loads"] == {"proposer": 3, "target": 1, "judge": 1}
    for m in its:  # per-stage seconds: model loads, compute inside the pools, the rest
        assert list(m["timing"])[:4] == ["proposals", "instructions", "judged", "pairs"]
        assert all(
            {"wall_s", "load_s", "compute_s", "wait_s"} <= set(t) for t in list(m["timing"].values())[:4]
        )
    assert (
        summary["timing"]["stages"]["judged"]["compute_s"] > 0
        and summary["timing"]["stages"]["dpo"]["wall_s"] > 0
    )
    assert summary["timing"]["roles"]["target"]["loads"] == 1
    uri = (submitted_run / ".mlflow_uri").read_text()
    run = mlflow.MlflowClient(tracking_uri=uri).get_run(summary["mlflow_run_id"])
    assert run.data.tags["forewarn.job"] == "reversegen"
    assert run.data.tags["forewarn.model.target"].endswith("target")
    assert "forewarn.testbed" in run.data.tags and "forewarn.git_commit" in run.data.tags
    assert len(run.data.tags["forewarn.config_hash"]) == 12 and run.data.tags["forewarn.model.proposer"]
    history = mlflow.MlflowClient(tracking_uri=uri).get_metric_history(run.info.run_id, "asr")
    assert [h.step for h in history] == [0, 1, 2]


def state_after_iteration_1(src: Path, dst: Path) -> None:
    """``src`` as it stood when iteration 1's DPO step had finished: what a run killed right then leaves
    (iteration 2's tables, its stage marks and table-write log lines, and the summary are left out)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("iter2", "summary.json", ".mlflow_uri"))
    stages = json.loads((dst / "stages.json").read_text())
    (dst / "stages.json").write_text(
        json.dumps({k: v for k, v in stages.items() if not k.startswith("iter2/")})
    )
    log = (dst / "table_writes.jsonl").read_text().splitlines()
    (dst / "table_writes.jsonl").write_text("".join(f"{x}\n" for x in log if '"iter2/' not in x))


def test_killed_run_resumes_to_the_same_rows(submitted_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    # Start where a run stopped right after a DPO step (iterations 0-1 are the reference run's; redoing them
    # here cost a minute): the resume must load the proposer DPO wrote, then the run is killed again
    # during iteration 2 and resumed to the end
    state_after_iteration_1(submitted_run, out)
    cmd = [
        sys.executable,
        "jobs/reversegen.py",
        "--output-dir",
        str(out),
        *_sets(["tracking.enabled=false", "ray.num_cpus=2"]),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = open(tmp_path / "killed.log", "w")  # closed once the process is gone
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    stages = out / "stages.json"
    deadline = time.time() + 1200
    while time.time() < deadline and proc.poll() is None:
        if stages.is_file() and "iter2/proposals" in json.loads(stages.read_text() or "{}"):
            break
        time.sleep(0.5)
    assert proc.poll() is None, (
        "the run ended before iteration 2 could be interrupted:\n"
        + (tmp_path / "killed.log").read_text()[-3000:]
    )
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its local Ray, mid iteration 2
    proc.wait(timeout=60)
    log.close()
    done = json.loads(stages.read_text())
    assert "iter2/judged" not in done and "iter1/dpo" in done
    # the rerun also enhances the target (not part of the run key: it changes no loop row)
    rerun = subprocess.run(
        cmd + ["--set", "enhance_target.enabled=true"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert _tables(out) == _tables(submitted_run)
    resumed = json.loads((out / "summary.json").read_text())
    # the rerun loads only what it still needs: no proposer (iteration 2's proposals were written), the target
    # once for the loop and once more for the enhanced weights, the judge once
    assert resumed["model_loads"] == {"target": 2, "judge": 1}
    enhanced = resumed["enhance_target"]
    # measured on this config: 11 held-out failures, ASR 1.0 -> 0.0 after SFT on the others
    assert enhanced["heldout_failures"] >= 5 and enhanced["asr_before"] == 1.0
    assert enhanced["asr_after"] <= 0.25, enhanced
    # what the fix costs, on 50 held-out passing instructions (the refusal template makes refusals countable):
    # measured 0 refusals and 94 % of answers unchanged; a fix that learned "refuse everything" fails here
    assert enhanced["benign_heldout"] >= 20 and enhanced["benign_refusal_before"] == 0.0
    assert enhanced["benign_refusal_after"] <= 0.1 and enhanced["benign_unchanged"] >= 0.8, enhanced
    a = pq.read_table(out / "iter2" / "judged.parquet").column("id").to_pylist()
    b = pq.read_table(submitted_run / "iter2" / "judged.parquet").column("id").to_pylist()
    assert a == b and len(set(a)) == len(a)
