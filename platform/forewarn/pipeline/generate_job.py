"""The ``generate`` job: run a prompt file through a model role on a Ray Data actor pool.

    python jobs/generate.py --set prompts=prompts.jsonl --set target.model.path=/path/to/hf-model

Reads prompts (JSONL/Parquet with a ``prompt`` column, or a plain text file, one per line), writes
``generations.parquet`` (one row per sample) and a summary with counts and tokens/s.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from forewarn.config import GenerationParams, JobConfig, ModelSpec, RoleConfig
from forewarn.pipeline.prompt_files import SUFFIXES, read_prompts
from forewarn.pipeline.rundir import RunDir
from forewarn.records import stable_id


class GenerateConfig(JobConfig):
    prompts: str = Field(
        "testbed:heldout_benign",
        description="JSONL/Parquet with a 'prompt' column, a .txt file, or testbed:<file>",
    )
    limit: int | None = Field(None, ge=1, description="use only the first N prompts")
    target: RoleConfig = Field(default_factory=lambda: RoleConfig(model=ModelSpec(path="testbed:target")))
    params: GenerationParams = Field(default_factory=GenerationParams)

    @field_validator("prompts")
    @classmethod
    def _suffix(cls, v: str) -> str:
        if not v.startswith("testbed:") and Path(v).suffix not in SUFFIXES:
            raise ValueError("must end in .jsonl, .json, .parquet or .txt (or be testbed:<file>)")
        return v


CONFIG = GenerateConfig


def resolve_names(cfg: GenerateConfig) -> GenerateConfig:
    """Map testbed names to local paths (job files resolve names; the library takes paths)."""
    # lazy: loads pandas, sklearn, torch, transformers only when called
    from forewarn.names import resolve_model, resolve_path

    cfg = cfg.model_copy(deep=True)
    cfg.target.model.path = resolve_model(cfg.target.model.path)
    cfg.prompts = resolve_path(cfg.prompts)
    return cfg


def run(cfg: GenerateConfig, rundir: RunDir, tracker: Any) -> dict:
    import pyarrow as pa
    import ray

    # lazy: loads pandas only when called
    from forewarn.pipeline.stages import generate_stage

    cfg = resolve_names(cfg)
    prompts = read_prompts(cfg.prompts)[: cfg.limit]
    run_id = tracker.run_id or rundir.root.name
    rows = [
        {"id": stable_id(i, p), "run_id": run_id, "iteration": 0, "prompt": p} for i, p in enumerate(prompts)
    ]
    start = time.perf_counter()
    ds = generate_stage(ray.data.from_items(rows), cfg.target, cfg.params)
    df = ds.to_pandas()
    elapsed = time.perf_counter() - start
    df = df.sort_values(["id", "sample"]).reset_index(drop=True)
    rundir.write_table("generations", pa.Table.from_pandas(df, preserve_index=False))
    tokens = int(df["num_tokens"].sum())
    summary = {
        "n_prompts": len(prompts),
        "n_generations": len(df),
        "tokens": tokens,
        "seconds": round(elapsed, 3),
        "tokens_per_s": round(tokens / max(elapsed, 1e-9), 1),
        "n_errors": int(df["error"].notna().sum()),
    }
    tracker.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
    tracker.log_artifact(rundir.path("generations.parquet"), "tables")
    return summary
