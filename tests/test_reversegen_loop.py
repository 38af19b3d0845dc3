"""One ReverseGen iteration with in-process roles (no Ray): the loop takes plain functions, batches each
stage into one call per role, times its stages, resumes from its tables, and samples the same proposals
whatever the batching of the proposer."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from forewarn.config import ModelSpec
from forewarn.judges import build_judge
from forewarn.models.embed import Embedder
from forewarn.models.hf import HFGenerator
from forewarn.names import resolve_path
from forewarn.pipeline.rundir import RunDir
from forewarn.reversegen.config import ReverseGenConfig
from forewarn.reversegen.job import read_seeds
from forewarn.reversegen.loop import IterationContext, Roles, run_iteration

STAGES = ["proposals", "instructions", "judged", "pairs"]


def test_capability_code_imports_no_ray() -> None:
    """Ray at the edges: the ReverseGen loop, target enhancement and Goodtriever's evaluation and datastore
    building call role pools through plain functions (``forewarn.pools``) and import no Ray, not even
    inside a function."""
    import ast

    import forewarn.goodtriever.datastore as datastore
    import forewarn.goodtriever.evaluate as evaluate
    import forewarn.reversegen.enhance as enhance
    import forewarn.reversegen.loop as loop

    for mod in (loop, enhance, evaluate, datastore):
        tree = ast.parse(open(mod.__file__).read())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not [m for m in names if m == "ray" or m.startswith("ray.")], mod.__name__
    code = (
        "import sys, forewarn.reversegen.loop, forewarn.reversegen.enhance, forewarn.goodtriever.evaluate, "
        "forewarn.goodtriever.datastore; "
        "sys.exit(any(m == 'ray' or m.startswith('ray.') for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.fixture(scope="module")
def world(testbed) -> dict:
    return {
        "proposer": HFGenerator(ModelSpec(path=str(testbed.path("proposer")), use_chat_template=False)),
        "target": HFGenerator(ModelSpec(path=str(testbed.path("target")))),
        "seeds": read_seeds(resolve_path("testbed:reversegen_seeds@small"), "safety"),
    }


def _counted(fn: Callable, calls: Counter, name: str, batch: int | None = None) -> Callable:
    """``fn`` counting its calls; with ``batch``, it splits its prompts into batches of that size."""

    def call(prompts: list, *args: object) -> list:
        calls[name] += 1
        if batch is None:
            return fn(prompts, *args)
        params, seeds = args
        return [
            row
            for i in range(0, len(prompts), batch)
            for row in fn(prompts[i : i + batch], params, None if seeds is None else seeds[i : i + batch])
        ]

    return call


def _context(world: dict, out: Path, calls: Counter, propose_batch: int | None = None) -> IterationContext:
    cfg = ReverseGenConfig(
        propose={
            "prompts_per_iteration": 8,
            "params": {"temperature": 1.0, "top_p": 0.9, "n": 4, "max_new_tokens": 24, "seed": 0},
        }
    )
    judge = build_judge(cfg.judge)
    roles = Roles(
        propose=_counted(world["proposer"].generate, calls, "propose", propose_batch),
        respond=_counted(world["target"].generate, calls, "respond"),
        judge=_counted(judge.judge, calls, "judge"),
        embed=_counted(Embedder().embed, calls, "embed"),
    )
    return IterationContext(cfg, RunDir(out), "run-1", 0, world["seeds"], roles)


def test_iteration_with_in_process_roles(world: dict, tmp_path: Path) -> None:
    calls: Counter = Counter()
    ctx = _context(world, tmp_path / "a", calls)
    metrics, judged, pairs = run_iteration(ctx)
    assert calls == Counter(propose=1, embed=1, respond=1, judge=1)  # one batched call per role and stage
    assert metrics["n_proposals"] == 32 and 0 < metrics["n_instructions"] <= 32
    assert len(judged) == metrics["n_instructions"] and judged["id"].is_unique
    assert set(judged["failure"].map(lambda f: f if f is None else bool(f))) <= {True, False, None}
    assert list(ctx.timing) == STAGES and all(t["wall_s"] > 0 for t in ctx.timing.values())
    assert all("load_s" not in t for t in ctx.timing.values())  # in-process roles report no split

    again: Counter = Counter()
    resumed = _context(world, tmp_path / "a", again)
    m2, judged2, _ = run_iteration(resumed)  # every stage is done: read back, no model called
    assert not again and m2 == metrics and list(judged2["id"]) == list(judged["id"])
    assert all(t == {"resumed": 1.0} for t in resumed.timing.values())

    other: Counter = Counter()
    rebatched = _context(
        world, tmp_path / "b", other, propose_batch=3
    )  # per-row seeds: batching is invisible
    run_iteration(rebatched)
    a = RunDir(tmp_path / "a").read_table("iter0/proposals").to_pandas()
    b = RunDir(tmp_path / "b").read_table("iter0/proposals").to_pandas()
    assert list(a["raw_text"]) == list(b["raw_text"]) and list(a["id"]) == list(b["id"])
