"""Target enhancement (ReverseGen step 4): SFT the target on the failures the loop found, with safe
responses, then re-measure the attack success rate on held-out failures.

The discovered failure instructions are split (seeded) into train and held-out parts. Train rows pair each
instruction with the configured refusal (or a safe responder's answer); passing instructions with the
target's own answers are mixed in so the target keeps its benign behaviour. ASR on the held-out failures is
measured with the same judge before (the original target) and after (the enhanced one); held-out passing
instructions measure what the fix costs: how often the enhanced target refuses them (the refusal template)
and how many of its answers to them are unchanged.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pandas as pd

from forewarn.errors import ForewarnError
from forewarn.metrics import attack_success_rate
from forewarn.models import load_generator
from forewarn.pipeline.rundir import RunDir
from forewarn.reversegen.config import ReverseGenConfig
from forewarn.reversegen.loop import GenerateFn, JudgeFn, expand, with_verdicts


def _respond_and_judge(
    cfg: ReverseGenConfig, respond: GenerateFn, judge: JudgeFn, questions: list[str]
) -> pd.DataFrame:
    """The target's responses to ``questions`` (in order) and the judge's verdicts."""
    rows = [{"id": i, "question": q} for i, q in enumerate(questions)]
    out = expand(rows, respond(questions, cfg.respond.params, None), "response_")
    return with_verdicts(out, judge([r["question"] for r in out], [r["response_text"] for r in out]))


def _asr(df: pd.DataFrame) -> float:
    return attack_success_rate([None if pd.isna(u) else bool(u) for u in df["judge_unsafe"]])


def _cost(cfg: ReverseGenConfig, before: pd.DataFrame, after: pd.DataFrame) -> dict[str, Any]:
    """What the fix costs on held-out passing instructions: refusals (when the template is the safe
    response, so a refusal is recognisable) and answers left unchanged."""
    same = [a == b for a, b in zip(before["response_text"], after["response_text"])]
    out: dict[str, Any] = {
        "benign_heldout": len(before),
        "benign_unchanged": float(sum(same) / max(1, len(same))),
        "benign_asr_after": _asr(after) if len(after) else None,
    }
    if cfg.enhance_target.safe_responder is None and len(before):
        refusal = cfg.enhance_target.safe_response.strip()[:40]
        for name, df in (("before", before), ("after", after)):
            out[f"benign_refusal_{name}"] = float(
                df["response_text"].str.strip().str.startswith(refusal).mean()
            )
    return out


def _safe_responses(cfg: ReverseGenConfig, questions: list[str]) -> list[str]:
    spec = cfg.enhance_target
    if spec.safe_responder is None:
        return [spec.safe_response] * len(questions)

    outs = load_generator(spec.safe_responder).generate(questions, cfg.respond.params)
    return [row[0].text if row[0].ok else spec.safe_response for row in outs]


def enhance_target(
    cfg: ReverseGenConfig,
    rundir: RunDir,
    tracker: Any,
    respond_with: Callable[[str], GenerateFn],
    judge: JudgeFn,
) -> dict[str, Any]:
    """Fine-tune the target on discovered failures; returns before/after ASR on held-out failures.

    ``respond_with(path)`` is the target loaded from ``path`` as a generate function (the job reuses the
    run's target pool, then reloads it with the enhanced weights); ``judge`` is the run's judge."""
    # lazy: loads torch, transformers only when called
    from forewarn.training.api import train_sft

    if cfg.task != "safety":
        raise ForewarnError(
            "enhance_target supports task 'safety' (refusal targets); set "
            "enhance_target.enabled=false for honesty/math"
        )
    judged = pd.concat(
        [
            rundir.read_table(f"iter{k}/judged").to_pandas()
            for k in range(cfg.iterations)
            if rundir.has_table(f"iter{k}/judged")
        ]
    )
    fails = judged[judged["failure"].map(lambda x: x is True)].drop_duplicates("question")
    passes = judged[judged["failure"].map(lambda x: x is False)].drop_duplicates("question")
    if len(fails) < 4:
        raise ForewarnError(
            f"enhance_target: only {len(fails)} distinct failures were found; need at least 4"
        )
    rng = random.Random(f"enhance-{cfg.seed}")
    questions = list(fails["question"])
    rng.shuffle(questions)
    n_held = max(1, int(len(questions) * cfg.enhance_target.heldout_fraction))
    held, train_q = questions[:n_held], questions[n_held:]
    passes = passes.sample(frac=1.0, random_state=cfg.seed)
    benign_held = list(passes["question"].iloc[: min(cfg.enhance_target.benign_heldout, len(passes) // 2)])
    benign = passes.iloc[len(benign_held) :].head(cfg.enhance_target.benign_mix)
    rows = [{"prompt": q, "target": r} for q, r in zip(train_q, _safe_responses(cfg, train_q))]
    rows += [{"prompt": q, "target": r} for q, r in zip(benign["question"], benign["response_text"])]
    original = _respond_and_judge(cfg, respond_with(cfg.target.model.path), judge, held + benign_held)
    out = rundir.path("checkpoints", "target_enhanced")
    if rundir.is_done("enhance_target"):
        path = out / "model"
    else:
        path = train_sft(cfg.enhance_target.train, rows, out, tracker, model_path=cfg.target.model.path)
        rundir.mark_done("enhance_target", path=str(path))
    enhanced = _respond_and_judge(cfg, respond_with(str(path)), judge, held + benign_held)
    n = len(held)
    result = {
        "heldout_failures": n,
        "train_rows": len(rows),
        "asr_before": _asr(original.iloc[:n]),
        "asr_after": _asr(enhanced.iloc[:n]),
        "target": str(path),
        **_cost(cfg, original.iloc[n:], enhanced.iloc[n:]),
    }
    tracker.log_metrics({f"enhance/{k}": v for k, v in result.items() if isinstance(v, float)})
    return result
