"""The guarded-generation pipeline, as plain Python.

    input guard → generation (decoding mitigations as logits processors, stop detectors as a stopping
    criterion) → output guard

:class:`GenerationEngine` is the generation step over an :class:`~forewarn.models.hf.HFGenerator`: it
turns the configured ``decoding`` and ``stop_detectors`` entries into processors and a stopping
criterion, and marks rows a detector ended with that detector's finish reason (``recurrence``).

:class:`GuardedPipeline` runs one request through the guards. It is async and takes its judges and its
generation step as async callables, so the same code runs locally (threads around in-process models,
:func:`build_local`) and under Ray Serve (calls to the judge and generator deployments).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from forewarn.config import GenerationParams, Section
from forewarn.guard.config import GuardPolicy, ServeConfig
from forewarn.guard.detectors import DetectorStoppingCriteria, StopDetector, StopReason
from forewarn.guard.mitigations import OpenAIPenaltyProcessor
from forewarn.guard.policy import Decision, GuardJudge, decide, redact
from forewarn.models.base import Completion, Prompt
from forewarn.models.hf import HFGenerator, render_prompt


@dataclass
class Generated:
    """One completion and, when a stop detector ended it, why."""

    completion: Completion
    stop: StopReason | None = None


@dataclass
class GenerationResult:
    """The ``n`` completions of one prompt and the prompt's length in tokens."""

    choices: list[Generated]
    prompt_tokens: int


class GenerationEngine:
    """Generation with the configured mitigations and stop detectors (built once, used for every batch)."""

    def __init__(
        self, generator: HFGenerator, decoding: Sequence[Section] = (), stop_detectors: Sequence[Section] = ()
    ):
        self.generator = generator
        self.processors = [spec.build(generator) for spec in decoding]
        self.detectors: list[StopDetector] = [spec.build(generator) for spec in stop_detectors]
        tok = generator.tokenizer
        self.end_ids = [tok.eos_token_id, tok.pad_token_id]

    def prompt_tokens(self, prompt: Prompt) -> int:
        tok = self.generator.tokenizer
        text = render_prompt(tok, prompt, self.generator.spec.use_chat_template)
        n = len(tok(text, add_special_tokens=False)["input_ids"])
        return min(n, self.generator.spec.max_input_tokens)

    def generate(self, prompts: list[Prompt], params: GenerationParams) -> list[GenerationResult]:
        """``params.n`` completions per prompt, in order; rows a detector stopped carry its finish reason."""
        if not prompts:
            return []
        processors = list(self.processors)
        if params.presence_penalty or params.frequency_penalty:
            processors.append(OpenAIPenaltyProcessor(params.presence_penalty, params.frequency_penalty))
        criteria = DetectorStoppingCriteria(self.detectors, self.end_ids) if self.detectors else None
        rows = self.generator.generate(
            prompts, params, logits_processors=processors, stopping_criteria=[criteria] if criteria else []
        )
        per_prompt = self._per_prompt(criteria, len(prompts), params)
        out = []
        for i, (prompt, comps) in enumerate(zip(prompts, rows)):
            choices = []
            for j, c in enumerate(comps):
                row = i * per_prompt + (j if j < per_prompt else 0)  # greedy n>1 copies sample 0
                stop = criteria.stopped.get(row) if criteria else None
                if stop is not None:
                    c = Completion(c.text, c.token_ids, stop.finish_reason, c.logprobs, c.error)
                choices.append(Generated(c, stop))
            out.append(GenerationResult(choices, self.prompt_tokens(prompt)))
        return out

    @staticmethod
    def _per_prompt(
        criteria: DetectorStoppingCriteria | None, n_prompts: int, params: GenerationParams
    ) -> int:
        if criteria is not None and criteria.batch_rows:
            return criteria.batch_rows // n_prompts
        return 1 if params.greedy else params.n


# ---------------------------------------------------------------- one request through the guards

GenerateFn = Callable[[Prompt, GenerationParams], Awaitable[GenerationResult]]


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

    def forewarn(self) -> dict[str, Any]:
        """The ``forewarn`` field of a response: every guard verdict and every early stop."""
        return {
            "blocked": self.blocked,
            "input": self.input.to_dict() if self.input else None,
            "output": [c.output.to_dict() if c.output else None for c in self.choices],
            "stops": [c.stop.to_dict() if c.stop else None for c in self.choices],
        }


def prompt_text(prompt: Prompt) -> str:
    """The text the input guard judges: a string prompt, or every non-assistant turn of a chat."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(m["content"] for m in prompt if m.get("role") != "assistant")


class GuardedPipeline:
    """Input guard → generation → output guard for one request (``n`` choices)."""

    def __init__(
        self,
        policy: GuardPolicy,
        generate: GenerateFn,
        input_judge: GuardJudge | None,
        output_judge: GuardJudge | None,
    ):
        self.policy, self.generate = policy, generate
        self.input_judge = input_judge if policy.input.judge is not None else None
        self.output_judge = output_judge if policy.output.judge is not None else None

    def _refused(self, n: int, prompt_tokens: int, decision: Decision) -> GuardedResult:
        choices = [GuardedChoice(i, self.policy.refusal_message, "content_filter", 0) for i in range(n)]
        return GuardedResult(choices, prompt_tokens, input=decision, blocked="input")

    async def run(self, prompt: Prompt, params: GenerationParams) -> GuardedResult:
        pol = self.policy
        text = prompt_text(prompt)
        decision: Decision | None = None
        if self.input_judge is not None:
            verdict = (await self.input_judge.call([text], [text]))[0]
            decision = decide("input", pol.input, verdict, self.input_judge, pol.on_judge_error)
            if decision.blocked:
                if pol.input.action == "refuse" or decision.reason == "judge_error":
                    return self._refused(params.n, 0, decision)
                prompt, decision.redacted_sentences = await self._redact_prompt(prompt, text)
                text = prompt_text(prompt)
        gen = await self.generate(prompt, params)
        choices = [
            GuardedChoice(
                i, g.completion.text, g.completion.finish_reason, len(g.completion.token_ids), stop=g.stop
            )
            for i, g in enumerate(gen.choices)
        ]
        result = GuardedResult(
            choices,
            gen.prompt_tokens,
            input=decision,
            blocked="input" if decision is not None and decision.blocked else None,
        )
        if self.output_judge is not None and choices:
            verdicts = await self.output_judge.call([text] * len(choices), [c.text for c in choices])
            for c, v in zip(choices, verdicts):
                c.output = decide("output", pol.output, v, self.output_judge, pol.on_judge_error)
                if not c.output.blocked:
                    continue
                result.blocked = result.blocked or "output"
                c.finish_reason = "content_filter"
                if pol.output.action == "refuse" or c.output.reason == "judge_error":
                    c.text = pol.refusal_message
                else:
                    c.text, c.output.redacted_sentences = await redact(
                        pol.output, self.output_judge, text, c.text, pol.redaction_marker, pol.on_judge_error
                    )
        return result

    async def _redact_prompt(self, prompt: Prompt, text: str) -> tuple[Prompt, int]:
        pol, judge = self.policy, self.input_judge
        assert judge is not None
        if isinstance(prompt, str):
            return await redact(pol.input, judge, text, prompt, pol.redaction_marker, pol.on_judge_error)
        out, total = [], 0
        for m in prompt:
            if m.get("role") == "assistant":
                out.append(m)
                continue
            content, k = await redact(
                pol.input, judge, text, m["content"], pol.redaction_marker, pol.on_judge_error
            )
            out.append({**m, "content": content})
            total += k
        return out, total


# ---------------------------------------------------------------- in-process (no Ray)


def local_judge(judge: Any) -> GuardJudge:
    """Wrap a ``Judge`` for the pipeline; calls run in a thread and are serialised (models are not
    thread-safe)."""
    lock = asyncio.Lock()

    async def call(prompts: list[str], responses: list[str]) -> list:
        async with lock:
            return await asyncio.to_thread(judge.judge, prompts, responses)

    return GuardJudge(call, judge.name, judge.higher_is_unsafe)


def build_local(cfg: ServeConfig, generator: HFGenerator | None = None) -> GuardedPipeline:
    """The whole pipeline in this process (tests, notebooks, the benchmark's reference): same policy
    code as the Serve app, no batching across requests. ``cfg.generator.model.path`` must be a folder."""
    from forewarn.judges.spec import build_judge

    gen = generator or HFGenerator(cfg.generator.model)
    engine = GenerationEngine(gen, cfg.generator.decoding, cfg.generator.stop_detectors)
    lock = asyncio.Lock()

    async def generate(prompt: Prompt, params: GenerationParams) -> GenerationResult:
        async with lock:
            return (await asyncio.to_thread(engine.generate, [prompt], params))[0]

    judges: dict[str, GuardJudge] = {}

    def judge_for(spec: Any) -> GuardJudge | None:
        if spec is None or not cfg.guard_enabled:
            return None
        key = spec.model_dump_json()
        if key not in judges:
            judges[key] = local_judge(build_judge(spec))
        return judges[key]

    return GuardedPipeline(
        cfg.guard, generate, judge_for(cfg.guard.input.judge), judge_for(cfg.guard.output.judge)
    )
