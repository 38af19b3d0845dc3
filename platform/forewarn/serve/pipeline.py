"""One request through the guards, as plain async Python.

    input guard ─┐ (concurrently; a block cancels the generation)
    generation ──┴→ output guard

:class:`GuardedPipeline` takes its judges and its generation step as async callables, so the same code
runs locally (threads around in-process models, :func:`build_local`) and under Ray Serve (calls to
the judge and generator deployments). The input guard judges every turn the model reads, normalised,
and only the part inside the model's input window (:class:`~forewarn.serve.text.PromptViewer`); it runs
while generation starts, so a clean request does not pay for it serially. Streaming lives in
:mod:`forewarn.serve.streaming` and shares the helpers here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from forewarn.config import GenerationParams
from forewarn.judges.base import Verdict
from forewarn.models.base import Prompt
from forewarn.models.stopping import StopReason
from forewarn.serve.config import GuardPolicy
from forewarn.serve.engine import Generated, GenerationEngine, GenerationResult, StreamChunk  # noqa: F401
from forewarn.serve.openai_schema import ApiError
from forewarn.serve.policy import Decision, GuardJudge, decide, redact
from forewarn.serve.text import PromptView, PromptViewer, normalize_text

GenerateFn = Callable[[Prompt, GenerationParams], Awaitable[GenerationResult]]
StreamFn = Callable[[Prompt, GenerationParams, int], AsyncIterator[StreamChunk]]


@dataclass
class GuardedChoice:
    index: int
    text: str
    finish_reason: str
    completion_tokens: int
    output: Decision | None = None
    stop: StopReason | None = None


@dataclass
class GuardedResult:
    """What the caller gets back: choices, the input decision and where (if anywhere) it was blocked."""

    choices: list[GuardedChoice]
    prompt_tokens: int
    input: Decision | None = None
    blocked: str | None = None  # "input", "output" or None

    def forewarn(self, expose_verdicts: bool) -> dict[str, Any]:
        """The ``forewarn`` field: where it was blocked, the real finish reasons and every early stop; the
        guard verdicts (labels, never scores) only with ``expose_verdicts``."""
        out: dict[str, Any] = {
            "blocked": self.blocked,
            "finish_reasons": [c.finish_reason for c in self.choices],
            "stops": [c.stop.to_dict() if c.stop else None for c in self.choices],
        }
        if expose_verdicts:
            out["input"] = self.input.public() if self.input else None
            out["output"] = [c.output.public() if c.output else None for c in self.choices]
        return out


def prompt_text(prompt: Prompt) -> str:
    """Every turn of a prompt as one text (for the request log with ``logging.log_prompts``)."""
    # lazy: serve.text imports this module
    from forewarn.serve.text import turns_text

    return turns_text(prompt)


class GuardedPipeline:
    """Input guard ‖ generation → output guard for one request (``n`` choices)."""

    def __init__(
        self,
        policy: GuardPolicy,
        generate: GenerateFn,
        input_judge: GuardJudge | None,
        output_judge: GuardJudge | None,
        viewer: PromptViewer,
        judge_timeout_s: float = 30.0,
        stream: StreamFn | None = None,
    ):
        self.policy, self.generate, self.stream_fn, self.viewer = policy, generate, stream, viewer
        self.input_judge = input_judge if policy.input.judge is not None else None
        self.output_judge = output_judge if policy.output.judge is not None else None
        self.judge_timeout_s = judge_timeout_s

    # ------------------------------------------------------------ shared steps

    def view(self, prompt: Prompt) -> PromptView:
        """The prompt as the model reads it; a 400 when it overruns the window and the policy rejects."""
        view = self.viewer.view(prompt)
        if view.truncated and self.policy.overlong_input == "reject":
            raise ApiError(
                400,
                f"The prompt is longer than the model's input window of {self.viewer.max_input_tokens} "
                "tokens; shorten it (this server rejects rather than truncates).",
                "messages",
                "context_length_exceeded",
            )
        return view

    async def judge(self, judge: GuardJudge, prompts: list[str], responses: list[str]) -> list[Verdict]:
        """One judge call bounded by ``judge_timeout_s``; a timeout is a failed verdict per row."""
        try:
            return await asyncio.wait_for(judge.call(prompts, responses), self.judge_timeout_s)
        except asyncio.TimeoutError:
            return [Verdict.failed(f"judge timed out after {self.judge_timeout_s:g} s") for _ in prompts]

    async def input_decision(self, view: PromptView) -> Decision | None:
        if self.input_judge is None:
            return None
        (verdict,) = await self.judge(self.input_judge, [view.text], [view.text])
        return decide("input", self.policy.input, verdict, self.input_judge, self.policy.on_judge_error)

    def refused(self, n: int, decision: Decision) -> GuardedResult:
        choices = [GuardedChoice(i, self.policy.refusal_message, "content_filter", 0) for i in range(n)]
        return GuardedResult(choices, 0, input=decision, blocked="input")

    async def redact_prompt(self, prompt: Prompt, decision: Decision) -> Prompt | None:
        """The prompt with its unsafe sentences redacted (every turn), or None when it must be refused: the
        input stage refuses, the judge failed, or the redacted prompt as a whole still trips the guard."""
        pol, judge = self.policy, self.input_judge
        if judge is None or pol.input.action == "refuse" or decision.reason == "judge_error":
            return None
        turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        context = normalize_text("\n".join(m["content"] for m in turns))
        out, total = [], 0
        for m in turns:
            content, k, _ = await redact(
                pol.input, judge, context, m["content"], pol.redaction_marker, pol.on_judge_error
            )
            out.append({**m, "content": content})
            total += k
        decision.redacted_sentences = total
        new: Prompt = out[0]["content"] if isinstance(prompt, str) else out
        again = await self.input_decision(self.view(new))
        if again is not None and again.blocked:
            decision.action = "refuse"
            return None
        return new

    # ------------------------------------------------------------ the whole request

    async def run(self, prompt: Prompt, params: GenerationParams) -> GuardedResult:
        """Judge the input while generation starts; a block cancels the generation."""
        view = self.view(prompt)
        gen_task = asyncio.ensure_future(self.generate(prompt, params))
        try:
            decision = await self.input_decision(view)
            if decision is not None and decision.blocked:
                gen_task.cancel()
                redacted = await self.redact_prompt(prompt, decision)
                if redacted is None:
                    return self.refused(params.n, decision)
                prompt, view = redacted, self.view(redacted)
                gen_task = asyncio.ensure_future(self.generate(prompt, params))
            gen = await gen_task
        finally:
            if not gen_task.done():
                gen_task.cancel()
        if gen.error is not None:
            raise RuntimeError(f"generation failed for this request: {gen.error}")
        choices = [
            GuardedChoice(
                i, g.completion.text, g.completion.finish_reason, len(g.completion.token_ids), stop=g.stop
            )
            for i, g in enumerate(gen.choices)
        ]
        blocked = "input" if decision is not None and decision.blocked else None
        result = GuardedResult(choices, gen.prompt_tokens, input=decision, blocked=blocked)
        await self._guard_output(result, view)
        return result

    async def _guard_output(self, result: GuardedResult, view: PromptView) -> None:
        pol, judge = self.policy, self.output_judge
        if judge is None or not result.choices:
            return
        texts = [normalize_text(c.text) for c in result.choices]
        verdicts = await self.judge(judge, [view.text] * len(texts), texts)
        for c, v in zip(result.choices, verdicts):
            c.output = decide("output", pol.output, v, judge, pol.on_judge_error)
            if not c.output.blocked:
                continue
            result.blocked = result.blocked or "output"
            c.finish_reason = "content_filter"
            if pol.output.action == "redact" and c.output.reason != "judge_error":
                text, c.output.redacted_sentences, still = await redact(
                    pol.output, judge, view.text, c.text, pol.redaction_marker, pol.on_judge_error
                )
                if not still:
                    c.text = text
                    continue
                c.output.action = "refuse"
            c.text = pol.refusal_message
