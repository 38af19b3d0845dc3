"""Fault: a Ray Train worker is SIGKILLed mid-epoch, after the first checkpoint. Ray Train restarts the worker
group (``train.max_failures``) and training resumes from that checkpoint inside the same ``fit`` call: no
optimizer step is lost, the steps after the checkpoint are redone from the checkpointed state, the run ends
with its model."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from forewarn.models.tiny import build_tiny_model, train_tokenizer
from forewarn.training.config import TrainConfig
from forewarn.training.trainer import read_metrics


pytestmark = pytest.mark.slow

RUN = textwrap.dedent("""
    import json, sys, ray
    from forewarn.tracking import NullTracker
    from forewarn.training.api import train_sft
    from forewarn.training.config import TrainConfig
    ray.init(address=sys.argv[1])
    cfg = TrainConfig.model_validate_json(open(sys.argv[2]).read())
    train_sft(cfg, json.load(open(sys.argv[3])), sys.argv[4], NullTracker(), model_path=sys.argv[5])
""")
ANIMALS = ["cat", "dog", "cow", "owl", "fox", "bee", "ant", "elk"]


def train_worker_pids() -> list[int]:
    """The Ray Train workers of the Ray this test process started (its own descendants only)."""
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(p.cmdline()):
                out.append(p.pid)
        except psutil.Error:
            pass
    return out


def test_killed_train_worker_resumes_from_checkpoint(ray_local: str, tmp_path: Path, fault_report) -> None:
    r = random.Random(0)
    rows = [
        {"prompt": f"Tell me about the {a} number {r.randint(0, 99)}.", "target": f"The {a} is kind."}
        for a in (r.choice(ANIMALS) for _ in range(64))
    ]
    tok = train_tokenizer([f"{x['prompt']} {x['target']}" for x in rows], vocab_size=300)
    model = build_tiny_model(tmp_path / "model", tokenizer=tok, seed=0)
    cfg = TrainConfig(
        num_workers=2,
        lr=3e-3,
        micro_batch_size=4,
        epochs=6,  # 48 steps: after the first checkpoint (step 3) a 50 ms poll finds a mid-epoch step to kill
        max_length=48,
        max_prompt_length=24,
        checkpoint_every=3,
        max_failures=2,
        deepspeed={"zero_stage": 2},
    )
    spe, total = 8, 48  # 64 rows / (2 workers x 4): 8 steps an epoch, 6 epochs
    out = tmp_path / "sft"
    (tmp_path / "cfg.json").write_text(cfg.model_dump_json())
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    (tmp_path / "run.py").write_text(RUN)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    args = [ray_local, str(tmp_path / "cfg.json"), str(tmp_path / "rows.json"), str(out), str(model)]
    killed, at_step = None, None
    with open(tmp_path / "run.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, str(tmp_path / "run.py"), *args], stdout=log, stderr=subprocess.STDOUT, env=env
        )
        deadline = time.monotonic() + 900
        while killed is None and proc.poll() is None and time.monotonic() < deadline:
            try:
                steps = [row["step"] for row in read_metrics(out / "metrics.jsonl") if "loss" in row]
            except ValueError:  # rank 0 is appending a line right now
                continue
            snapshot = out / "ray" / "sft" / "checkpoint_manager_snapshot.json"
            # after the first checkpoint, in the middle of an epoch (not on a checkpoint or epoch boundary)
            if (
                snapshot.is_file()
                and steps
                and steps[-1] % 3 != 0
                and steps[-1] % spe != 0
                and steps[-1] < total - 2
            ):
                pids = train_worker_pids()
                if pids:
                    killed, at_step = pids[-1], steps[-1]
                    os.kill(killed, signal.SIGKILL)
            time.sleep(0.05)
        assert killed is not None, (
            f"no worker killed mid-epoch:\n{(tmp_path / 'run.log').read_text()[-3000:]}"
        )
        proc.wait(timeout=900)
    log_text = (tmp_path / "run.log").read_text()
    assert proc.returncode == 0, log_text[-4000:]
    rows_logged = read_metrics(out / "metrics.jsonl")
    starts = [i for i, row in enumerate(rows_logged) if row.get("event") == "start"]
    assert len(starts) == 2, f"expected one restart, got {len(starts) - 1}"
    resumed = int(rows_logged[starts[1]]["resumed_from_step"])
    assert 3 <= resumed <= at_step and resumed % 3 == 0, (resumed, at_step)
    first = {row["step"]: row["loss"] for row in rows_logged[: starts[1]] if "loss" in row}
    after = [row for row in rows_logged[starts[1] :] if "loss" in row]
    assert [row["step"] for row in after] == list(range(resumed + 1, total + 1))
    # the redone step starts from the checkpointed weights and optimizer: it repeats the killed attempt's loss
    assert after[0]["loss"] == pytest.approx(first[resumed + 1], rel=1e-4)
    lost = len(set(range(1, total + 1)) - set(first) - {row["step"] for row in after})
    redone = len(set(first) & {row["step"] for row in after})
    assert (out / "model" / "config.json").is_file()
    fault_report(
        "Ray Train worker SIGKILLed mid-epoch",
        lost=lost,
        duplicated=0,
        unit="optimizer steps",
        killed_at_step=at_step,
        resumed_from_step=resumed,
        steps_redone_from_checkpoint=redone,
    )
    assert lost == 0
