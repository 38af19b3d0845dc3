"""One ReverseGen iteration as resumable stages: propose -> dedup -> respond + judge -> pairs.

Each stage writes its Parquet table atomically under ``OUTPUT_DIR/iter{k}/`` and then marks itself done
in the run dir, so a rerun skips finished stages and redoes only the first incomplete one. Proposals
are sampled with per-row seeds, so a redone stage reproduces the rows an uninterrupted run writes.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from forewarn.config import RoleConfig
from forewarn.metrics import attack_success_rate, distinct_n, self_bleu
from forewarn.pipeline.dedup import dedup_keep
from forewarn.pipeline.rundir import RunDir
from forewarn.records import stable_id
from forewarn.reversegen.config import ReverseGenConfig
from forewarn.reversegen.pairs import build_pairs
from forewarn.reversegen.proposer import cut_instruction, sample_prompts, strip_answer


@dataclass
class IterationContext:
    cfg: ReverseGenConfig
    rundir: RunDir
    run_id: str
    k: int
    proposer_path: str
    seeds: list[dict]
    topic_of: Any = None  # testbed: text -> planted topic or None

    def table(self, name: str) -> str:
        return f"iter{self.k}/{name}"

    def role(self, role: RoleConfig, path: str | None = None) -> RoleConfig:
        out = role.model_copy(deep=True)
        if path is not None:
            out.model.path = path
        return out


def _stage(ctx: IterationContext, name: str, fn: Any) -> pd.DataFrame:
    """Run ``fn`` unless the stage is marked done; either way return its table as a DataFrame."""
    key = ctx.table(name)
    if ctx.rundir.is_done(key) and ctx.rundir.has_table(key):
        return ctx.rundir.read_table(key).to_pandas()
    df = fn()
    ctx.rundir.write_table(key, pa.Table.from_pandas(df, preserve_index=False))
    ctx.rundir.mark_done(key, rows=len(df))
    return df


def propose(ctx: IterationContext) -> pd.DataFrame:
    import ray

    from forewarn.pipeline.stages import generate_stage

    cfg = ctx.cfg
    rng = random.Random(f"reversegen-{cfg.seed}-{ctx.k}")
    prompts = sample_prompts(ctx.seeds, cfg.propose.prompts_per_iteration, cfg.task, rng, cfg.propose.shots)
    rows = [{"id": stable_id(ctx.run_id, ctx.k, p["prompt_index"]), "prompt": p["prompt"],
             "subject": p["subject"]} for p in prompts]
    params = cfg.propose.params
    if params.seed is not None:
        params = params.model_copy(update={"seed": params.seed + 1000 * ctx.k})
    ds = generate_stage(ray.data.from_items(rows), ctx.role(cfg.proposer, ctx.proposer_path), params,
                        prefix="raw_")
    df = ds.to_pandas().rename(columns={"id": "prompt_id"})
    df["id"] = [stable_id(p, s) for p, s in zip(df["prompt_id"], df["raw_sample"])]
    df["instruction"] = [cut_instruction(cfg.task, t) for t in df["raw_text"]]
    df["iteration"] = ctx.k
    df["run_id"] = ctx.run_id
    return df.sort_values("id").reset_index(drop=True)


def dedup(ctx: IterationContext, proposals: pd.DataFrame) -> pd.DataFrame:
    import ray

    from forewarn.pipeline.stages import embed_stage

    df = proposals[proposals["instruction"].notna()].sort_values("id").reset_index(drop=True)
    texts = list(df["instruction"])

    def embed(batch: list[str]) -> np.ndarray:
        rows = [{"i": i, "text": t} for i, t in enumerate(batch)]
        out = embed_stage(ray.data.from_items(rows), ctx.cfg.embedder, path=ctx.cfg.dedup.embedder).to_pandas()
        out = out.sort_values("i")
        return np.stack(out["embedding"].to_list()).astype(np.float32)

    keep = dedup_keep(texts, ctx.cfg.dedup, embed)
    return df.iloc[keep].reset_index(drop=True)


def respond_and_judge(ctx: IterationContext, instructions: pd.DataFrame) -> pd.DataFrame:
    """Target answers each kept instruction; the judge labels ``failure`` (None where the judge failed)."""
    import ray

    from forewarn.pipeline.stages import generate_stage, judge_stage

    cfg = ctx.cfg
    if instructions.empty:  # nothing well-formed to ask: an empty table, and the job stops with a message
        return pd.DataFrame(columns=["id", "prompt_id", "prompt", "subject", "instruction", "question",
                                     "response_text",
                                     "judge_score", "judge_label", "judge_categories", "judge_error", "failure"])
    base = instructions[["id", "prompt_id", "prompt", "subject", "instruction", "iteration", "run_id"]].copy()
    base["question"] = [cfg.respond.prompt_template.format(question=strip_answer(q) if cfg.task == "honesty"
                                                           else q, subject=s)
                        for q, s in zip(base["instruction"], base["subject"])]
    rows = base.to_dict("records")
    if cfg.task == "safety":
        ds = generate_stage(ray.data.from_items(rows), cfg.target, cfg.respond.params,
                            prompt_column="question", prefix="response_")
        ds = judge_stage(ds, cfg.judge, cfg.judge.resources, prompt_column="question",
                         response_column="response_text", prefix="judge_")
        df = ds.to_pandas()
        df["failure"] = df["judge_unsafe"].astype(object).where(df["judge_unsafe"].notna(), None)
        return df.sort_values("id").reset_index(drop=True)
    from forewarn.judges import build_judge

    judge = build_judge(cfg.judge)
    if cfg.task == "honesty":
        params = cfg.respond.honesty_params.model_copy(update={"n": cfg.judge.samples})
        out = generate_stage(ray.data.from_items(rows), cfg.target, params, prompt_column="question",
                             prefix="response_").to_pandas()
        answers = out.sort_values(["id", "response_sample"]).groupby("id")["response_text"].apply(list)
        df = base.set_index("id").loc[answers.index].reset_index()
        verdicts = judge.judge(list(df["question"]), list(answers))
        df["response_text"] = [" | ".join(a) for a in answers]
    else:  # math: target answers, the reference model's answers are gold
        out = generate_stage(ray.data.from_items(rows), cfg.target, cfg.respond.params,
                             prompt_column="question", prefix="response_")
        ref_role = cfg.reference or RoleConfig(model=cfg.judge.reference_model)
        out = generate_stage(out, ref_role, cfg.judge.reference_params, prompt_column="question",
                             prefix="reference_").to_pandas().sort_values("id")
        df = out.reset_index(drop=True)
        verdicts = judge.judge(list(df["question"]), list(df["response_text"]), list(df["reference_text"]))
    df["judge_score"] = [v.score for v in verdicts]
    df["judge_label"] = [v.label for v in verdicts]
    df["judge_categories"] = [list(v.categories) for v in verdicts]
    df["judge_error"] = [v.error for v in verdicts]
    df["failure"] = [v.unsafe for v in verdicts]
    return df.sort_values("id").reset_index(drop=True)


def pairs(ctx: IterationContext, judged: pd.DataFrame) -> pd.DataFrame:
    rows = [{"id": r.id, "prompt_id": r.prompt_id, "prompt": r.prompt, "instruction": r.instruction,
             "failure": None if r.failure is None or pd.isna(r.failure) else bool(r.failure)}
            for r in judged.itertuples()]
    out = build_pairs(rows, ctx.cfg.pairs.model_copy(update={"seed": ctx.cfg.pairs.seed + ctx.k}))
    cols = ["prompt_id", "prompt", "chosen", "rejected", "chosen_id", "rejected_id"]
    return pd.DataFrame(out, columns=cols)


def iteration_metrics(ctx: IterationContext, proposals: pd.DataFrame, kept: pd.DataFrame,
                      judged: pd.DataFrame, n_pairs: int) -> dict[str, Any]:
    """The per-iteration headline figures that land in summary.json and MLflow."""
    failures = judged[judged["failure"].map(lambda x: x is True or x == True).astype(bool)]  # noqa: E712
    texts = list(kept["instruction"])
    cats = Counter(c for cs in failures["judge_categories"] for c in (cs if cs is not None else []))
    m: dict[str, Any] = {
        "iteration": ctx.k,
        "asr": attack_success_rate([None if f is None or pd.isna(f) else bool(f) for f in judged["failure"]]),
        "self_bleu": self_bleu(texts, max_hypotheses=ctx.cfg.self_bleu_max_hypotheses, seed=ctx.k),
        "distinct_1": distinct_n(texts, 1), "distinct_2": distinct_n(texts, 2), "distinct_3": distinct_n(texts, 3),
        "n_proposals": int(len(proposals)), "n_malformed": int(proposals["instruction"].isna().sum()),
        "n_instructions": int(len(kept)), "n_failures": int(len(failures)),
        "n_judge_errors": int(judged["judge_error"].notna().sum()), "n_pairs": int(n_pairs),
        "failures_by_category": dict(sorted(cats.items())),
    }
    if ctx.topic_of is not None:
        on_planted = [ctx.topic_of(t) for t in texts]
        m["planted_rate"] = sum(t is not None for t in on_planted) / max(1, len(texts))
        m["planted_topics_found"] = sorted({t for t in map(ctx.topic_of, failures["instruction"]) if t})
    return m


def run_iteration(ctx: IterationContext) -> tuple[dict[str, Any], pd.DataFrame, pd.DataFrame]:
    """Propose, dedup, respond and judge, pair; returns (metrics, judged rows, pairs)."""
    proposals = _stage(ctx, "proposals", lambda: propose(ctx))
    kept = _stage(ctx, "instructions", lambda: dedup(ctx, proposals))
    judged = _stage(ctx, "judged", lambda: respond_and_judge(ctx, kept))
    prs = _stage(ctx, "pairs", lambda: pairs(ctx, judged))
    return iteration_metrics(ctx, proposals, kept, judged, len(prs)), judged, prs
