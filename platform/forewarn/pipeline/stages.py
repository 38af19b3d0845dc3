"""Ray Data stages: a role becomes an actor pool that loads its model once and maps batches of rows.

``generate_stage``, ``judge_stage`` and ``embed_stage`` take a ``ray.data.Dataset`` and the role's
config, and return a lazily evaluated Dataset with new columns. The actor pools come from
``forewarn.pools.data_stage``: every actor asks Ray for the role's ``num_cpus`` / ``num_gpus`` (inside its
placement group, if colocated) and sets torch's threads to its CPU share (two busy torch processes each
spinning two threads on two cores run many times slower). Iterative jobs that call a role again and again
use the long-lived ``forewarn.pools.RolePool`` instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from forewarn.config import GenerationParams, ModelSpec, Resources, RoleConfig
from forewarn.judges import build_judge
from forewarn.judges.base import Verdict
from forewarn.models import load_generator
from forewarn.models.base import row_seed
from forewarn.models.embed import Embedder
from forewarn.models.vllm import vllm_generate_stage
from forewarn.pools import data_stage, set_torch_threads

__all__ = ["embed_stage", "generate_stage", "judge_stage", "set_torch_threads"]


class GenerateUDF:
    """Actor body of the generate stage: one Generator per actor, n output rows per input row."""

    def __init__(
        self, spec: ModelSpec, params: GenerationParams, num_cpus: float, prompt_column: str, prefix: str
    ):
        set_torch_threads(num_cpus)

        self.gen = load_generator(spec)
        self.params, self.prompt_column, self.prefix = params, prompt_column, prefix

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        prompts = [str(p) for p in batch[self.prompt_column]]
        seeds = None
        if self.params.seed is not None and not self.params.greedy:
            # Seeded sampling, one batched call: each row's seed derives from its id, so a row's samples do
            # not depend on which batch or actor it landed in (reruns and resumes reproduce them).
            ids = batch["id"] if "id" in batch else range(len(prompts))
            seeds = [row_seed(self.params.seed, str(i)) for i in ids]
        results = self.gen.generate(prompts, self.params, seeds=seeds)
        rows = []
        for (_, row), completions in zip(batch.iterrows(), results):
            for k, c in enumerate(completions):
                rows.append({**row.to_dict(), **c.columns(k, self.prefix)})
        return pd.DataFrame(rows)


def generate_stage(
    ds: Any, role: RoleConfig, params: GenerationParams, prompt_column: str = "prompt", prefix: str = ""
) -> Any:
    """Add ``{prefix}text``, ``sample``, ``finish_reason``, ``num_tokens`` and ``error`` columns.

    Each input row yields ``params.n`` output rows (``sample`` = 0..n-1). With a seed and sampling, each
    row gets a seed derived from its ``id`` (``Generator.generate(..., seeds=)``: reproducible under any
    batching, and the batch stays one call). The vllm backend goes through
    Ray's own ``ray.data.llm`` processor instead of an actor pool of ours.
    """
    if role.model.backend == "vllm":
        return vllm_generate_stage(ds, role, params, prompt_column=prompt_column, prefix=prefix)
    return data_stage(
        ds,
        GenerateUDF,
        dict(
            spec=role.model,
            params=params,
            num_cpus=role.resources.num_cpus,
            prompt_column=prompt_column,
            prefix=prefix,
        ),
        role.resources,
    )


class JudgeUDF:
    """Actor body of the judge stage: one judge per actor, one verdict per row."""

    def __init__(self, spec: Any, num_cpus: float, prompt_column: str, response_column: str, prefix: str):
        set_torch_threads(num_cpus)

        self.judge = build_judge(spec)
        self.prompt_column, self.response_column, self.prefix = prompt_column, response_column, prefix

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        verdicts = self.judge.judge(
            [str(p) for p in batch[self.prompt_column]], [str(r) for r in batch[self.response_column]]
        )
        rows = [v.columns(self.prefix) for v in verdicts]
        out = batch.copy()
        for name in Verdict.failed("").columns(self.prefix):
            out[name] = [r[name] for r in rows]
        unsafe = f"{self.prefix}unsafe"
        out[unsafe] = pd.array(list(out[unsafe]), dtype="boolean")  # nullable: None where the judge failed
        return out


def judge_stage(
    ds: Any,
    spec: Any,
    resources: Resources,
    prompt_column: str = "prompt",
    response_column: str = "text",
    prefix: str = "judge_",
) -> Any:
    """Add ``{prefix}score``, ``label``, ``unsafe`` (null on judge errors), ``categories``, ``error``."""
    return data_stage(
        ds,
        JudgeUDF,
        dict(
            spec=spec,
            num_cpus=resources.num_cpus,
            prompt_column=prompt_column,
            response_column=response_column,
            prefix=prefix,
        ),
        resources,
    )


class EmbedUDF:
    def __init__(self, path: str, num_cpus: float, text_column: str, column: str):
        set_torch_threads(num_cpus)

        self.embedder = Embedder(path)
        self.text_column, self.column = text_column, column

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        vecs = self.embedder.embed([str(t) for t in batch[self.text_column]])
        out = batch.copy()
        out[self.column] = list(np.asarray(vecs, dtype=np.float32))
        return out


def embed_stage(
    ds: Any, resources: Resources, path: str = "minilm", text_column: str = "text", column: str = "embedding"
) -> Any:
    """Add an L2-normalised embedding column (MiniLM by default)."""
    return data_stage(
        ds,
        EmbedUDF,
        dict(path=path, num_cpus=resources.num_cpus, text_column=text_column, column=column),
        resources,
    )
