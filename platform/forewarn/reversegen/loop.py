"""One ReverseGen iteration as resumable stages: propose -> dedup -> respond + judge -> pairs.

Each stage writes its Parquet table atomically under ``OUTPUT_DIR/iter{k}/`` and then marks itself done
in the run dir, so a rerun skips finished stages and redoes only the first incomplete one. Proposals
are sampled with per-row seeds, so a redone stage reproduces the rows an uninterrupted run writes.

The models are plain functions (:class:`Roles`): the job passes Ray role pools (``forewarn.pools``), a test
passes in-process generators and judges; this module imports no Ray. Each stage's wall time and, where
the roles report it (``Roles.clock``), its model-load and compute seconds land in ``ctx.timing``.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from forewarn.config import GenerationParams
from forewarn.metrics import attack_success_rate, distinct_n, self_bleu
from forewarn.models.base import Completion, row_seed
from forewarn.pipeline.dedup import dedup_keep
from forewarn.pipeline.rundir import RunDir
from forewarn.records import stable_id
from forewarn.reversegen.config import ReverseGenConfig
from forewarn.reversegen.pairs import build_pairs
from forewarn.reversegen.proposer import cut_instruction, sample_prompts, strip_answer

GenerateFn = Callable[
    ..., list[list[Completion]]
]  # generate(prompts, params, seeds=None), the Generator contract
JudgeFn = Callable[..., list[Any]]  # judge(prompts, responses[, references]) -> list[Verdict]
EmbedFn = Callable[[Sequence[str]], np.ndarray]  # embed(texts) -> L2-normalised n x d


def no_clock() -> dict[str, float]:
    """The clock of roles that report no load/compute split (in-process objects): stages get wall time."""
    return {}


@dataclass
class Roles:
    """The models one iteration calls, as plain functions.

    ``propose`` is the current proposer (the job binds it to this iteration's policy), ``respond`` the target,
    ``reference`` the math task's gold-answer model, ``embed`` the SemDeDup embedder. ``clock()`` returns the
    cumulative ``load_s`` / ``compute_s`` of whatever serves them; a stage's share is the difference.
    """

    propose: GenerateFn
    respond: GenerateFn
    judge: JudgeFn
    embed: EmbedFn | None = None
    reference: GenerateFn | None = None
    clock: Callable[[], dict[str, float]] = no_clock


@dataclass
class IterationContext:
    cfg: ReverseGenConfig
    rundir: RunDir
    run_id: str
    k: int
    seeds: list[dict]
    roles: Roles
    topic_of: Any = None  # testbed: text -> planted topic or None
    timing: dict[str, dict[str, float]] = field(default_factory=dict)  # stage -> seconds by kind

    def table(self, name: str) -> str:
        return f"iter{self.k}/{name}"


def _stage(ctx: IterationContext, name: str, fn: Callable[[], pd.DataFrame]) -> pd.DataFrame:
    """Run ``fn`` unless the stage is marked done; either way return its table as a DataFrame.

    Timing of a run stage: ``wall_s``; ``load_s`` and ``compute_s`` spent in the roles' model loads and
    calls; ``wait_s`` the rest (dispatch, transfers, waiting for actors, the driver's own work such as
    MinHash and k-means). A stage read back from an earlier run records ``resumed``.
    """
    key = ctx.table(name)
    if ctx.rundir.is_done(key) and ctx.rundir.has_table(key):
        ctx.timing[name] = {"resumed": 1.0}
        return ctx.rundir.read_table(key).to_pandas()
    before, start = ctx.roles.clock(), time.perf_counter()
    df = fn()
    ctx.rundir.write_table(key, pa.Table.from_pandas(df, preserve_index=False))
    ctx.rundir.mark_done(key, rows=len(df))
    wall, after = time.perf_counter() - start, ctx.roles.clock()
    spent = {k: after[k] - before.get(k, 0.0) for k in ("load_s", "compute_s") if k in after}
    ctx.timing[name] = {"wall_s": wall, **spent, "wait_s": max(0.0, wall - sum(spent.values()))}
    return df


def seeds_for(params: GenerationParams, ids: Sequence[str]) -> list[int] | None:
    """Per-row sampling seeds from the params' seed and the rows' ids (None: unseeded)."""
    return None if params.seed is None else [row_seed(params.seed, i) for i in ids]


def expand(rows: Sequence[dict], outs: Sequence[Sequence[Completion]], prefix: str) -> list[dict]:
    """One output row per sample: each input row's columns plus its completion's ``{prefix}`` columns."""
    return [{**row, **c.columns(k, prefix)} for row, comps in zip(rows, outs) for k, c in enumerate(comps)]


def with_verdicts(rows: list[dict], verdicts: Sequence[Any]) -> pd.DataFrame:
    """Rows with the judge's columns and ``failure`` (None where the judge failed), sorted by id."""
    df = pd.DataFrame([{**row, **v.columns("judge_"), "failure": v.unsafe} for row, v in zip(rows, verdicts)])
    return df.sort_values("id", kind="stable").reset_index(drop=True)


def propose(ctx: IterationContext) -> pd.DataFrame:
    """``n`` proposals per few-shot prompt from the current proposer, cut to one instruction each."""
    cfg = ctx.cfg
    rng = random.Random(f"reversegen-{cfg.seed}-{ctx.k}")
    prompts = sample_prompts(ctx.seeds, cfg.propose.prompts_per_iteration, cfg.task, rng, cfg.propose.shots)
    rows = [
        {
            "prompt_id": stable_id(ctx.run_id, ctx.k, p["prompt_index"]),
            "prompt": p["prompt"],
            "subject": p["subject"],
        }
        for p in prompts
    ]
    params = cfg.propose.params
    if params.seed is not None:
        params = params.model_copy(update={"seed": params.seed + 1000 * ctx.k})
    outs = ctx.roles.propose(
        [r["prompt"] for r in rows], params, seeds_for(params, [r["prompt_id"] for r in rows])
    )
    df = pd.DataFrame(expand(rows, outs, "raw_"))
    df["id"] = [stable_id(p, s) for p, s in zip(df["prompt_id"], df["raw_sample"])]
    df["instruction"] = [cut_instruction(cfg.task, t) for t in df["raw_text"]]
    df["iteration"] = ctx.k
    df["run_id"] = ctx.run_id
    return df.sort_values("id").reset_index(drop=True)


def dedup(ctx: IterationContext, proposals: pd.DataFrame) -> pd.DataFrame:
    df = proposals[proposals["instruction"].notna()].sort_values("id").reset_index(drop=True)
    keep = dedup_keep(list(df["instruction"]), ctx.cfg.dedup, ctx.roles.embed)
    return df.iloc[keep].reset_index(drop=True)


def respond_and_judge(ctx: IterationContext, instructions: pd.DataFrame) -> pd.DataFrame:
    """Target answers each kept instruction; the judge labels ``failure`` (None where the judge failed)."""
    cfg, roles = ctx.cfg, ctx.roles
    if instructions.empty:  # nothing well-formed to ask: an empty table, and the job stops with a message
        return pd.DataFrame(
            columns=[
                "id",
                "prompt_id",
                "prompt",
                "subject",
                "instruction",
                "question",
                "response_text",
                "judge_score",
                "judge_label",
                "judge_unsafe",
                "judge_categories",
                "judge_error",
                "failure",
            ]
        )
    base = instructions[["id", "prompt_id", "prompt", "subject", "instruction", "iteration", "run_id"]].copy()
    base["question"] = [
        cfg.respond.prompt_template.format(
            question=strip_answer(q) if cfg.task == "honesty" else q, subject=s
        )
        for q, s in zip(base["instruction"], base["subject"])
    ]
    rows = base.to_dict("records")
    ids, questions = list(base["id"]), list(base["question"])
    if cfg.task == "honesty":  # k sampled answers per question; the judge scores their entropy
        params = cfg.respond.honesty_params.model_copy(update={"n": cfg.judge.samples})
        answers = [
            [c.text for c in comps] for comps in roles.respond(questions, params, seeds_for(params, ids))
        ]
        out = [{**r, "response_text": " | ".join(a)} for r, a in zip(rows, answers)]
        return with_verdicts(out, roles.judge(questions, answers))
    params = cfg.respond.params
    out = expand(rows, roles.respond(questions, params, seeds_for(params, ids)), "response_")
    asked = [r["question"] for r in out]
    if cfg.judge.kind != "math_match":  # safety judges and arithmetic (gold computed from the question)
        return with_verdicts(out, roles.judge(asked, [r["response_text"] for r in out]))
    # math_match: the target's answers against the reference model's (gold) answers
    if roles.reference is None:
        raise ValueError("task 'math' needs a reference role to write the gold answers")
    gold = {
        i: comps[0]
        for i, comps in zip(
            ids,
            roles.reference(
                questions, cfg.judge.reference_params, seeds_for(cfg.judge.reference_params, ids)
            ),
        )
    }
    out = [{**r, **gold[r["id"]].columns(0, "reference_")} for r in out]
    refs = [None if gold[r["id"]].error else r["reference_text"] for r in out]
    return with_verdicts(out, roles.judge(asked, [r["response_text"] for r in out], refs))


def pairs(ctx: IterationContext, judged: pd.DataFrame) -> pd.DataFrame:
    rows = [
        {
            "id": r.id,
            "prompt_id": r.prompt_id,
            "prompt": r.prompt,
            "instruction": r.instruction,
            "failure": None if r.failure is None or pd.isna(r.failure) else bool(r.failure),
        }
        for r in judged.itertuples()
    ]
    out = build_pairs(rows, ctx.cfg.pairs.model_copy(update={"seed": ctx.cfg.pairs.seed + ctx.k}))
    cols = ["prompt_id", "prompt", "chosen", "rejected", "chosen_id", "rejected_id"]
    return pd.DataFrame(out, columns=cols)


def iteration_metrics(
    ctx: IterationContext, proposals: pd.DataFrame, kept: pd.DataFrame, judged: pd.DataFrame, n_pairs: int
) -> dict[str, Any]:
    """The per-iteration headline figures that land in summary.json and MLflow."""
    failures = judged[judged["failure"].map(lambda x: x is True or x == True).astype(bool)]  # noqa: E712
    texts = list(kept["instruction"])
    cats = Counter(c for cs in failures["judge_categories"] for c in (cs if cs is not None else []))
    m: dict[str, Any] = {
        "iteration": ctx.k,
        "asr": attack_success_rate([None if f is None or pd.isna(f) else bool(f) for f in judged["failure"]]),
        "self_bleu": self_bleu(texts, max_hypotheses=ctx.cfg.self_bleu_max_hypotheses, seed=ctx.k),
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
        "distinct_3": distinct_n(texts, 3),
        "n_proposals": int(len(proposals)),
        "n_malformed": int(proposals["instruction"].isna().sum()),
        "n_instructions": int(len(kept)),
        "n_failures": int(len(failures)),
        "n_judge_errors": int(judged["judge_error"].notna().sum()),
        "n_pairs": int(n_pairs),
        "failures_by_category": dict(sorted(cats.items())),
    }
    if ctx.topic_of is not None:
        on_planted = [ctx.topic_of(t) for t in texts]
        m["planted_rate"] = sum(t is not None for t in on_planted) / max(1, len(texts))
        m["planted_topics_found"] = sorted({t for t in map(ctx.topic_of, failures["instruction"]) if t})
    return m


def run_iteration(ctx: IterationContext) -> tuple[dict[str, Any], pd.DataFrame, pd.DataFrame]:
    """Propose, dedup, respond and judge, pair; returns (metrics, judged rows, pairs); stage timings are
    in ``ctx.timing``."""
    proposals = _stage(ctx, "proposals", lambda: propose(ctx))
    kept = _stage(ctx, "instructions", lambda: dedup(ctx, proposals))
    judged = _stage(ctx, "judged", lambda: respond_and_judge(ctx, kept))
    prs = _stage(ctx, "pairs", lambda: pairs(ctx, judged))
    return iteration_metrics(ctx, proposals, kept, judged, len(prs)), judged, prs
