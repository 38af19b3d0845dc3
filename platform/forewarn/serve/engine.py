"""The generation step of the guarded generator, batched or streamed token by token.

:class:`GenerationEngine` wraps an :class:`~forewarn.models.hf.HFGenerator`: the configured ``decoding``
entries become logits processors, the ``stop_detectors`` a stopping criterion, and rows a detector
ended carry its finish reason (``recurrence``). Streaming reuses the very same ``generate`` call: a
:class:`_Tap` stopping criterion sees each new token of every row, hands it to the caller and stops the
call when the caller cancels (a client disconnect), so mitigations, loop stop, seeds and stop strings
behave identically with and without ``stream``.

:func:`stream_chunks` turns that per-step callback into an async iterator of :class:`StreamChunk`
(text deltas of ``chunk_tokens`` tokens per choice), running ``generate`` on a thread; closing the
iterator cancels the generation. The vLLM engine (:mod:`forewarn.serve.engine_vllm`) offers the same
``generate(prompts, params, on_tokens)`` and plugs into the same iterator.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from transformers import StoppingCriteria

from forewarn.config import GenerationParams, Section
from forewarn.serve.stop_detectors import build_stop_detector
from forewarn.serve.mitigations import build_decoding
from forewarn.models.stopping import DetectorStoppingCriteria, StopDetector, StopReason
from forewarn.serve.mitigations import OpenAIPenaltyProcessor
from forewarn.models.base import Completion, Prompt
from forewarn.models.hf import HFGenerator, render_prompt

logger = logging.getLogger(__name__)

# Called with the newest token ids of every row (one list per row); returns True to cancel generation.
OnTokens = Callable[[list[list[int]]], bool]


@dataclass
class Generated:
    """One completion and, when a stop detector ended it, why."""

    completion: Completion
    stop: StopReason | None = None


@dataclass
class GenerationResult:
    """The ``n`` completions of one prompt and the prompt's length in tokens (``error`` when this request
    failed inside generation: the batch-mates of a failing request are still answered)."""

    choices: list[Generated]
    prompt_tokens: int
    error: str | None = None


class Engine(Protocol):
    """What the guard needs from a generation backend."""

    end_ids: list[int]
    tokenizer: Any

    def generate(
        self, prompts: list[Prompt], params: GenerationParams, on_tokens: OnTokens | None = None
    ) -> list[GenerationResult]: ...


class _Tap(StoppingCriteria):
    """A stopping criterion that only listens: hands each step's new tokens to ``on_tokens`` and stops every
    row once it returns True."""

    def __init__(self, on_tokens: OnTokens):
        self.on_tokens = on_tokens

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        cancel = self.on_tokens([[int(t)] for t in input_ids[:, -1].tolist()])
        return torch.full((input_ids.shape[0],), bool(cancel), dtype=torch.bool, device=input_ids.device)


class GenerationEngine:
    """HF generation with the configured mitigations and stop detectors (built once, used for every call)."""

    def __init__(
        self, generator: HFGenerator, decoding: Sequence[Section] = (), stop_detectors: Sequence[Section] = ()
    ):
        self.generator = generator
        self.tokenizer = generator.tokenizer
        self.processors = [build_decoding(spec, generator) for spec in decoding]
        self.detectors: list[StopDetector] = [build_stop_detector(spec, generator) for spec in stop_detectors]
        self.end_ids = [
            t for t in (self.tokenizer.eos_token_id, self.tokenizer.pad_token_id) if t is not None
        ]

    def prompt_tokens(self, prompt: Prompt) -> int:
        tok = self.tokenizer
        text = render_prompt(tok, prompt, self.generator.spec.use_chat_template)
        n = len(tok(text, add_special_tokens=False)["input_ids"])
        return min(n, self.generator.spec.max_input_tokens)

    def generate(
        self, prompts: list[Prompt], params: GenerationParams, on_tokens: OnTokens | None = None
    ) -> list[GenerationResult]:
        """``params.n`` completions per prompt, in order; rows a detector stopped carry its finish reason."""
        if not prompts:
            return []
        processors = list(self.processors)
        if params.presence_penalty or params.frequency_penalty:
            processors.append(OpenAIPenaltyProcessor(params.presence_penalty, params.frequency_penalty))
        criteria = DetectorStoppingCriteria(self.detectors, self.end_ids) if self.detectors else None
        stops: list[StoppingCriteria] = [criteria] if criteria else []
        if on_tokens is not None:
            stops.append(_Tap(on_tokens))
        rows = self.generator.generate(prompts, params, logits_processors=processors, stopping_criteria=stops)
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


# ---------------------------------------------------------------- streaming


@dataclass
class StreamChunk:
    """Text deltas of a streamed request, one per choice (``""`` when a choice has nothing new); the last
    chunk carries the final :class:`GenerationResult` (the authoritative text and finish reasons)."""

    deltas: list[str]
    tokens: int  # generation steps so far (tokens of the longest choice)
    final: GenerationResult | None = None


@dataclass
class _Rows:
    """Per-choice token ids and text already handed out (held back: a possible stop-string prefix)."""

    ids: list[list[int]]
    sent: list[str] = field(default_factory=list)
    ended: list[bool] = field(default_factory=list)


def _deltas(rows: _Rows, tokenizer: Any, end_ids: set[int], hold: int) -> list[str]:
    out = []
    for r, ids in enumerate(rows.ids):
        cut = next((k for k, t in enumerate(ids) if t in end_ids), None)
        text = tokenizer.decode(ids if cut is None else ids[:cut], skip_special_tokens=True)
        if text.endswith("\ufffd"):  # a multi-byte character split over tokens: wait for the rest
            text = text.rstrip("\ufffd")
        safe = text[: max(0, len(text) - hold)] if hold else text
        if not safe.startswith(rows.sent[r]):
            safe = rows.sent[r]  # decoding changed an earlier character (rare); the final text settles it
        out.append(safe[len(rows.sent[r]) :])
        rows.sent[r] = safe
    return out


async def stream_chunks(
    engine: Engine,
    prompt: Prompt,
    params: GenerationParams,
    chunk_tokens: int,
    lock: asyncio.Lock | None = None,
) -> AsyncIterator[StreamChunk]:
    """Generate on a thread and yield a :class:`StreamChunk` every ``chunk_tokens`` tokens, then the rest
    with the final result. Closing the iterator early (the caller is cancelled or a guard ends the
    stream) stops ``generate`` at its next step."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    cancel = threading.Event()

    def on_tokens(new: list[list[int]]) -> bool:
        loop.call_soon_threadsafe(queue.put_nowait, ("tokens", new))
        return cancel.is_set()

    def run() -> None:
        try:
            result = engine.generate([prompt], params, on_tokens)[0]
            loop.call_soon_threadsafe(queue.put_nowait, ("final", result))
        except BaseException as e:  # noqa: BLE001 -- handed to the consumer, which raises it
            loop.call_soon_threadsafe(queue.put_nowait, ("error", e))

    async def start() -> asyncio.Future[None]:
        if lock is not None:
            await lock.acquire()
        return loop.run_in_executor(None, run)

    fut = await start()
    rows: _Rows | None = None
    hold = max((len(s) for s in params.stop), default=1) - 1
    end_ids = set(engine.end_ids)
    pending, steps = 0, 0
    try:
        while True:
            kind, value = await queue.get()
            if kind == "error":
                raise value
            if kind == "final":
                if rows is None:
                    rows = _Rows([], [])
                rows.sent += [""] * (len(value.choices) - len(rows.sent))  # greedy n > 1: one row streamed
                tail = [g.completion.text[len(s) :] if g.completion.text.startswith(s) else ""
                        for g, s in zip(value.choices, rows.sent)]  # fmt: skip
                yield StreamChunk(tail, steps, value)
                return
            if rows is None:
                rows = _Rows([[] for _ in value], [""] * len(value))
            for r, ids in enumerate(value):
                rows.ids[r].extend(ids)
            fresh = max((len(ids) for ids in value), default=0)  # 1 per step on hf, a chunk on vllm
            steps += fresh
            pending += fresh
            if pending >= chunk_tokens:
                pending = 0
                yield StreamChunk(_deltas(rows, engine.tokenizer, end_ids, hold), steps)
    finally:
        cancel.set()
        try:
            await asyncio.shield(fut)  # the thread ends at its next step
        except Exception as e:  # noqa: BLE001 -- its error was already raised to the consumer if it mattered
            logger.debug(
                "forewarn stream: generation ended with %s after the stream closed", type(e).__name__
            )
        finally:
            if lock is not None:
                lock.release()
