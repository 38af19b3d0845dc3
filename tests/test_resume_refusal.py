"""A run directory belongs to one experiment: ReverseGen refuses to resume a run dir under a different config,
before any work, and leaves the dir exactly as it found it (tables, stage markers, summary and config.yaml).
The same config, rerun, resumes. The real job runner on the small testbed at a tiny size (one iteration)."""

from __future__ import annotations

from pathlib import Path

import pytest
from forewarn.errors import ForewarnError
from forewarn.pipeline.rundir import RunDir
from forewarn.runner import resolve, run_job

TINY = [
    "proposer.model.path=testbed:proposer@small",
    "target.model.path=testbed:target@small",
    "seeds=testbed:reversegen_seeds@small",
    "iterations=1",
    "propose.prompts_per_iteration=8",
    "propose.params.n=2",
    "dedup.semdedup=false",
    "tracking.enabled=false",
]


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.usefixtures("ray_local")
@pytest.mark.slow
def test_different_config_is_refused_and_the_same_config_resumes(testbed, tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = run_job("reversegen", resolve("reversegen", overrides=TINY, output_dir=str(out)), quiet=True)
    assert first["iterations"][0]["n_instructions"] > 0
    before = snapshot(out)
    assert "iter0/judged.parquet" in before and "summary.json" in before

    other = resolve("reversegen", overrides=[*TINY, "propose.params.temperature=0.7"], output_dir=str(out))
    with pytest.raises(ForewarnError, match="holds a run of a different config") as refused:
        run_job("reversegen", other, quiet=True)
    assert str(out) in str(refused.value) and first["run_key"] in str(refused.value)
    assert snapshot(out) == before, "the refused run changed the run dir"

    # the same config resumes: every stage is done, nothing is recomputed
    writes = len(RunDir(out).table_writes())
    again = run_job("reversegen", resolve("reversegen", overrides=TINY, output_dir=str(out)), quiet=True)
    keys = ("asr", "n_instructions", "n_failures", "self_bleu")
    assert again["run_key"] == first["run_key"]
    assert [{k: m[k] for k in keys} for m in again["iterations"]] == [
        {k: m[k] for k in keys} for m in first["iterations"]
    ]
    assert len(RunDir(out).table_writes()) == writes
