"""Guard policy: turn a judge's verdict into a block decision, and redact unsafe sentences.

Plain functions over :class:`forewarn.judges.Verdict`; the Serve ingress and the local pipeline share them.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from forewarn.judges.base import Verdict
from forewarn.serve.config import GuardStage

# An async judge call: (prompts, responses) -> verdicts. Locally a thread around judge.judge, under Serve
# a call to the judge deployment.
JudgeFn = Callable[[list[str], list[str]], Awaitable[list[Verdict]]]


@dataclass
class GuardJudge:
    """A judge as the pipeline sees it: the async call plus what its scores mean."""

    call: JudgeFn
    name: str
    higher_is_unsafe: bool = True


def threaded_judge(judge: Any) -> GuardJudge:
    """A ``Judge`` in this process as a :class:`GuardJudge`: calls run on a thread, one at a time (a
    judge's model is not safe to share between concurrent calls)."""
    lock = asyncio.Lock()

    async def call(prompts: list[str], responses: list[str]) -> list[Verdict]:
        async with lock:
            return await asyncio.to_thread(judge.judge, prompts, responses)

    return GuardJudge(call, judge.name, judge.higher_is_unsafe)


def inline_judge(judge: Any) -> GuardJudge:
    """A cheap ``Judge`` (no model, well under a millisecond a row) called right on the event loop: a thread
    hand-off would cost more than the call (up to a GIL switch interval, 5 ms, each way on a busy CPU)."""

    async def call(prompts: list[str], responses: list[str]) -> list[Verdict]:
        return judge.judge(prompts, responses)

    return GuardJudge(call, judge.name, judge.higher_is_unsafe)


@dataclass
class Decision:
    """One guard verdict and what the policy made of it."""

    stage: str  # "input" or "output"
    judge: str
    blocked: bool
    reason: str | None  # "unsafe", "judge_error" or None
    score: float | None
    label: str
    categories: list[str] = field(default_factory=list)
    error: str | None = None
    action: str | None = None  # "refuse" / "redact" when blocked
    redacted_sentences: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Everything, score included: for logs the operator reads, never for clients."""
        d = {k: v for k, v in self.__dict__.items()}
        if d["score"] is not None and d["score"] != d["score"]:  # NaN is not JSON
            d["score"] = None
        return d

    def public(self) -> dict[str, Any]:
        """What a client may see (``guard.expose_verdicts``): labels and categories, never the score,
        which would be an oracle for tuning evasions against the judge."""
        return {k: v for k, v in self.to_dict().items() if k not in ("score", "error")}


def is_unsafe(stage: GuardStage, verdict: Verdict, higher_is_unsafe: bool) -> bool | None:
    """Whether ``verdict`` trips this stage (None when the judge failed on the row)."""
    if not verdict.ok or verdict.unsafe is None:
        return None
    if stage.threshold is None:
        unsafe = bool(verdict.unsafe)
    elif higher_is_unsafe:
        unsafe = verdict.score >= stage.threshold
    else:
        unsafe = verdict.score <= stage.threshold
    if unsafe and stage.categories:
        unsafe = bool(set(verdict.categories) & set(stage.categories))
    return unsafe


def decide(
    stage_name: str, stage: GuardStage, verdict: Verdict, judge: GuardJudge, on_error: str
) -> Decision:
    """The policy's decision on one verdict; a failed judge blocks when ``on_error == 'block'``."""
    unsafe = is_unsafe(stage, verdict, judge.higher_is_unsafe)
    cats = [c for c in verdict.categories if not stage.categories or c in stage.categories]
    if unsafe is None:
        blocked, reason = on_error == "block", "judge_error"
    else:
        blocked, reason = unsafe, ("unsafe" if unsafe else None)
    return Decision(
        stage=stage_name,
        judge=judge.name,
        blocked=blocked,
        reason=reason,
        score=None if not verdict.ok else float(verdict.score),
        label=verdict.label,
        categories=cats,
        error=verdict.error,
        action=stage.action if blocked else None,
    )


_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")


def split_sentences(text: str) -> list[tuple[str, str]]:
    """``text`` as (sentence, separator-after) pairs; joining them gives ``text`` back."""
    out, pos = [], 0
    for m in _SENTENCE.finditer(text):
        out.append((text[pos : m.start()], m.group(0)))
        pos = m.end()
    out.append((text[pos:], ""))
    return [(s, sep) for s, sep in out if s or sep]


async def redact(
    stage: GuardStage, judge: GuardJudge, prompt_text: str, text: str, marker: str, on_error: str
) -> tuple[str, int, bool]:
    """Replace each sentence of ``text`` the stage blocks with ``marker``, then judge the redacted text as a
    whole: unsafe text spread over sentences that each pass alone still trips it.

    Returns (redacted text, sentences redacted, whether the redacted text is still blocked)."""
    # lazy: serve.text imports this module
    from forewarn.serve.text import normalize_text

    parts = split_sentences(text)
    idx = [i for i, (s, _) in enumerate(parts) if s.strip()]
    if not idx:
        return text, 0, False
    verdicts = await judge.call([prompt_text] * len(idx), [normalize_text(parts[i][0]) for i in idx])
    redacted = 0
    pieces = [list(p) for p in parts]
    for i, v in zip(idx, verdicts):
        if decide("redact", stage, v, judge, on_error).blocked:
            pieces[i][0] = marker
            redacted += 1
    out = "".join(s + sep for s, sep in pieces)
    (whole,) = await judge.call([prompt_text], [normalize_text(out)])
    return out, redacted, decide("redact", stage, whole, judge, on_error).blocked
