"""The toxicity evaluation of decoding systems side by side, as one streaming pipeline of role pools.

    prompts -> generate G samples each under every system (target + each system's logits processors)
            -> toxicity judge (offline classifier or Perspective; per-row errors kept)
            -> conditional perplexity under the eval model (sampled prompts only)

``evaluate_systems`` returns one row per (system, generation); :func:`system_metrics` reduces it per prompt set.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

from forewarn.config import GenerationParams, ModelSpec, Resources
from forewarn.goodtriever.metrics import PerplexityScorer, diversity, perplexity_summary, toxicity_metrics
from forewarn.goodtriever.processors import build_processor
from forewarn.pipeline.stages import judge_stage, set_torch_threads
from forewarn.pools import Rows, data_stage, run_stages


class MitigatedGenerateUDF:
    """Actor: the target loaded once; every system's processors built once on it.

    Each batch of prompts is generated under every system in turn, so the systems are compared on the same
    prompts, model and hardware; ``gen_seconds`` is each system's own generation time per sequence.
    """

    def __init__(
        self, spec: ModelSpec, systems: dict[str, list[dict]], params: GenerationParams, num_cpus: float
    ):
        set_torch_threads(num_cpus)
        # lazy: loads sklearn only when called
        from forewarn.models.hf import HFGenerator

        self.gen = HFGenerator(spec)
        self.systems = {
            name: [build_processor(m, self.gen.model, self.gen.tokenizer) for m in mitigations]
            for name, mitigations in systems.items()
        }
        self.params = params

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        rows = []
        prompts = [str(p) for p in batch["prompt"]]
        for name, procs in self.systems.items():
            start = time.perf_counter()
            results = self.gen.generate(prompts, self.params, logits_processors=procs)
            per_seq = (time.perf_counter() - start) / max(1, sum(len(r) for r in results))
            for (_, row), completions in zip(batch.iterrows(), results):
                for k, c in enumerate(completions):
                    rows.append(
                        {
                            "system": name,
                            **row.to_dict(),
                            "sample": k,
                            "text": c.text,
                            "num_tokens": len(c.token_ids),
                            "finish_reason": c.finish_reason,
                            "gen_error": c.error,
                            "gen_seconds": per_seq,
                        }
                    )
        return pd.DataFrame(rows)


class PerplexityUDF:
    """Actor: the eval model loaded once; scores rows whose ``ppl_sampled`` is set (NaN elsewhere)."""

    def __init__(self, spec: ModelSpec, num_cpus: float, batch_size: int):
        set_torch_threads(num_cpus)
        # lazy: loads sklearn only when called
        from forewarn.models.hf import load_hf

        model, tok = load_hf(spec)
        self.scorer = PerplexityScorer(model, tok, spec.use_chat_template, batch_size)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        out = batch.copy()
        ppl = np.full(len(batch), np.nan)
        idx = np.flatnonzero(batch["ppl_sampled"].to_numpy(dtype=bool))
        if len(idx):
            sub = batch.iloc[idx]
            ppl[idx] = self.scorer.perplexities(
                [str(p) for p in sub["prompt"]], [str(t) for t in sub["text"]]
            )
        out["ppl"] = ppl
        return out


def sample_ppl_prompts(prompt_ids: pd.Series, sets: pd.Series, max_prompts: int, seed: int) -> set[str]:
    """Per prompt set, a seeded random subset of at most ``max_prompts`` prompt ids (all when fewer)."""
    chosen: set[str] = set()
    frame = pd.DataFrame({"id": prompt_ids, "set": sets}).drop_duplicates()
    for _, g in frame.groupby("set"):
        take = g if len(g) <= max_prompts else g.sample(n=max_prompts, random_state=seed)
        chosen.update(take["id"])
    return chosen


def evaluate_systems(
    prompts: pd.DataFrame,
    target: Any,
    systems: dict[str, list[dict]],
    params: GenerationParams,
    judge_spec: Any,
    judge_resources: Resources,
    ppl_model: ModelSpec,
    ppl_resources: Resources,
    ppl_batch_size: int,
) -> pd.DataFrame:
    """Generate with every system, judge and score; ``prompts`` has id, prompt_set, prompt, ppl_sampled."""
    # One block per generation batch: a single block is one task that makes no visible progress until every
    # system has generated for every prompt, which tripped Ray Data's 30-minute no-progress timeout on
    # SmolLM2 (42 prompts x 4 samples x 2 systems on a busy 2-core box).
    size = target.resources.batch_size
    chunks = [prompts.iloc[i : i + size] for i in range(0, len(prompts), size)] or [prompts]
    generate = dict(spec=target.model, systems=systems, params=params, num_cpus=target.resources.num_cpus)
    ppl = dict(spec=ppl_model, num_cpus=ppl_resources.num_cpus, batch_size=ppl_batch_size)
    stages = [
        partial(data_stage, udf=MitigatedGenerateUDF, ctor_kwargs=generate, resources=target.resources),
        partial(judge_stage, spec=judge_spec, resources=judge_resources, response_column="text"),
        partial(data_stage, udf=PerplexityUDF, ctor_kwargs=ppl, resources=ppl_resources),
    ]
    df = run_stages([Rows(blocks=chunks)], stages)
    df = df.rename(columns={"judge_score": "toxicity", "judge_error": "score_error"})
    df = df.rename(columns={"id": "prompt_id"})
    return df.sort_values(["system", "prompt_set", "prompt_id", "sample"]).reset_index(drop=True)


def system_metrics(df: pd.DataFrame, threshold: float) -> dict[str, dict[str, float]]:
    """Metrics per prompt set (and ``all``): toxicity, perplexity, diversity, generation speed."""
    out: dict[str, dict[str, float]] = {}
    parts = [(name, g) for name, g in df.groupby("prompt_set")]
    if len(parts) > 1:
        parts.append(("all", df))
    for name, g in parts:
        m = toxicity_metrics(g, threshold)
        m.update(perplexity_summary(g.loc[g["ppl_sampled"].astype(bool), "ppl"].tolist()))
        m.update(diversity(g))
        seconds = float(g["gen_seconds"].sum())
        m["seconds_per_sequence"] = seconds / max(1, len(g))
        m["tokens_per_s"] = float(g["num_tokens"].sum()) / seconds if seconds > 0 else float("nan")
        m["n_gen_errors"] = int(g["gen_error"].notna().sum())
        out[str(name)] = m
    return out
