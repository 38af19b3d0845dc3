"""Fault: an actor of a long-lived role pool is killed (``ray.kill``) while a generate stage runs on the pool.
The pool replaces the actor (its model loads again) and re-runs the batch the actor held; every other batch
is collected once. The stage returns every row exactly once, with the samples an undisturbed stage gives
(per-row seeds make the re-run batch reproduce its rows)."""

from __future__ import annotations

import threading
import time
from functools import partial
from pathlib import Path

import pytest
import ray

from forewarn.config import GenerationParams, ModelSpec, Resources
from forewarn.models import load_generator
from forewarn.models.base import row_seed
from forewarn.pools import RolePool

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.slow]  # about 3.5 min on a busy 2-core box


def test_pool_actor_killed_mid_stage_loses_and_duplicates_no_row(tiny_llama_dir: Path, fault_report) -> None:
    spec = ModelSpec(path=str(tiny_llama_dir))
    params = GenerationParams(max_new_tokens=24, temperature=1.0, top_p=0.9, n=2)
    prompts = [f"Row {i}: tell me about topic {i % 7}" for i in range(64)]
    ids = [f"row-{i}" for i in range(64)]
    seeds = [row_seed(0, i) for i in ids]
    pool = RolePool("target", partial(load_generator, spec), Resources(num_cpus=1, replicas=2, batch_size=4))
    try:
        expected = pool.map("generate", {"prompts": prompts, "seeds": seeds}, params=params)
        calls_before = pool.stats.calls
        out: list = []
        stage = threading.Thread(
            target=lambda: out.extend(
                pool.map("generate", {"prompts": prompts, "seeds": seeds}, params=params)
            )
        )
        stage.start()
        while stage.is_alive() and pool.stats.calls < calls_before + 3:  # under way: some batches are back
            time.sleep(0.02)
        victim = pool.actors[0]
        ray.kill(victim)  # the fault: one of the pool's two actors dies mid-stage
        stage.join(timeout=600)
        assert not stage.is_alive()
    finally:
        pool.close()
    assert pool.stats.replaced_actors == 1 and pool.stats.loads == 3  # two at start, one replacement
    got = [tuple(c.text for c in row) for row in out]
    want = [tuple(c.text for c in row) for row in expected]
    lost = sum(1 for w in want if w not in got)
    duplicated = len(got) - len(set(got))
    fault_report("role-pool actor killed mid-stage", lost=lost, duplicated=duplicated, rows=len(prompts))
    assert lost == 0 and duplicated == 0 and got == want
