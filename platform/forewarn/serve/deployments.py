"""The model-holding Serve deployments of the guarded generator: the generator and the guard judges.

``GeneratorDeployment`` loads the model once per replica (``hf``, or ``vllm`` on its CPU or GPU build)
and serves two calls: ``generate`` (``@serve.batch``: concurrent requests with identical sampling
parameters share one ``generate`` call) and ``stream`` (one request, chunk by chunk; cancelling the call
stops generation at its next step). A request that fails inside a batch is retried alone, so it fails
by itself and its batch-mates are answered; a replica whose every request fails reports itself
unhealthy (``check_health``) and Serve replaces it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

from ray import serve

from forewarn.config import GenerationParams
from forewarn.judges.base import Verdict
from forewarn.judges.spec import build_judge, parse_judge_spec
from forewarn.models.base import Prompt
from forewarn.models.hf import HFGenerator
from forewarn.models.vllm import VLLMGenerator
from forewarn.pipeline.stages import set_torch_threads
from forewarn.serve.config import GeneratorSection
from forewarn.serve.engine import Engine, GenerationEngine, GenerationResult, StreamChunk, stream_chunks
from forewarn.serve.engine_vllm import VLLMEngine

logger = logging.getLogger("ray.serve")
Item = tuple[Prompt, GenerationParams, threading.Event]  # a request in a batch, and its "nobody waits" flag
BROKEN_AFTER = 8  # consecutive failed requests (no success in between) that mark a replica unhealthy


def build_engine(cfg: GeneratorSection) -> Engine:
    """The generation engine of a generator section: ``hf`` with logits processors, or ``vllm``."""
    if cfg.model.backend == "vllm":
        return VLLMEngine(VLLMGenerator(cfg.model), cfg.stop_detectors)

    return GenerationEngine(HFGenerator(cfg.model), cfg.decoding, cfg.stop_detectors)


def _failed(e: BaseException) -> GenerationResult:
    return GenerationResult([], 0, error=f"{type(e).__name__}: {str(e)[:200]}")


@serve.deployment(name="generator")
class GeneratorDeployment:
    """Holds the model once; batched and streamed generation with per-request isolation."""

    def __init__(self, section: dict[str, Any]):
        cfg = GeneratorSection.model_validate(section)
        set_torch_threads(cfg.resources.num_cpus)
        self.engine = build_engine(cfg)
        self._batched.set_max_batch_size(cfg.batching.max_batch_size)
        self._batched.set_batch_wait_timeout_s(cfg.batching.batch_wait_timeout_s)
        self.failures_in_a_row = 0
        self.streams = {"active": 0, "completed": 0, "cancelled": 0, "last_cancelled_tokens": -1}
        # active: requests now inside a batch's generation; cancelled: work stopped because nobody waits for it
        self.batches = {"active": 0, "cancelled": 0, "last_cancelled_tokens": -1}
        # vLLM without stop detectors answers in one engine call, which cannot stop mid-way; a token tap would
        # force its chunked path (slower), so there a hung-up request's batch runs to its end
        self.tap_batches = not (isinstance(self.engine, VLLMEngine) and not cfg.stop_detectors)

    def _one_group(self, items: list[Item]) -> list[GenerationResult]:
        prompts, params, cancels = [p for p, _, _ in items], items[0][1], [c for _, _, c in items]
        steps = 0

        def on_tokens(_new: list[list[int]]) -> bool:
            nonlocal steps
            steps += 1
            if not all(c.is_set() for c in cancels):
                return False
            self.batches["cancelled"] += 1
            self.batches["last_cancelled_tokens"] = steps
            return True

        try:
            return self.engine.generate(prompts, params, on_tokens if self.tap_batches else None)
        except Exception as e:  # noqa: BLE001 -- isolate: retry each request alone below
            if len(items) == 1:
                logger.warning("forewarn generator: a request failed (%s)", type(e).__name__)
                return [_failed(e)]
        return [r for item in items for r in self._one_group([item])]

    def _run_groups(self, items: list[Item]) -> list[GenerationResult]:
        groups: dict[str, list[int]] = {}
        for k, (_, params, _) in enumerate(items):
            groups.setdefault(params.model_dump_json(), []).append(k)
        out: list[GenerationResult] = [_failed(RuntimeError("not run"))] * len(items)
        for idx in groups.values():
            for k, r in zip(idx, self._one_group([items[k] for k in idx])):
                out[k] = r
        for r in out:
            self.failures_in_a_row = self.failures_in_a_row + 1 if r.error else 0
        return out

    async def generate(self, request: tuple[Prompt, GenerationParams]) -> GenerationResult:
        """One request, batched with concurrent ones; cancelling the call (the client hung up) stops the
        batch's generation at its next token once no request of the batch is still waited for."""
        cancel = threading.Event()
        try:
            return await self._batched((*request, cancel))
        except asyncio.CancelledError:
            cancel.set()
            raise

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _batched(self, items: list[Item]) -> list[GenerationResult]:
        self.batches["active"] += len(items)
        try:
            return await asyncio.to_thread(self._run_groups, items)
        finally:
            self.batches["active"] -= len(items)

    async def stream(
        self, prompt: Prompt, params: GenerationParams, chunk_tokens: int
    ) -> AsyncIterator[StreamChunk]:
        """Chunks of one request as they are generated; a cancelled call stops the generation."""
        self.streams["active"] += 1
        tokens, done = 0, False
        try:
            async for chunk in stream_chunks(self.engine, prompt, params, chunk_tokens):
                tokens = chunk.tokens
                done = chunk.final is not None
                yield chunk
        finally:
            self.streams["active"] -= 1
            if done:
                self.streams["completed"] += 1
            else:
                self.streams["cancelled"] += 1
                self.streams["last_cancelled_tokens"] = tokens

    def stats(self) -> dict[str, int]:
        """Stream counters (how many were cancelled, and how far the last one got) and the same for batches
        of plain requests (``batch_active``, ``batch_cancelled``, ``batch_last_cancelled_tokens``): operators
        and tests."""
        return {**self.streams, **{f"batch_{k}": v for k, v in self.batches.items()}}

    def check_health(self) -> None:
        """Serve calls this periodically; raising takes the replica out of rotation and replaces it."""
        if self.failures_in_a_row >= BROKEN_AFTER:
            raise RuntimeError(f"the last {self.failures_in_a_row} requests all failed inside generation")


@serve.deployment(name="judge")
class JudgeDeployment:
    """One judge model (a guard); ``@serve.batch`` merges the rows of concurrent calls into one judge call."""

    def __init__(self, spec: dict[str, Any], max_batch_size: int, batch_wait_timeout_s: float):
        parsed = parse_judge_spec(spec)
        set_torch_threads(parsed.resources.num_cpus)
        self.judge_impl = build_judge(parsed)
        self.judge.set_max_batch_size(max_batch_size)
        self.judge.set_batch_wait_timeout_s(batch_wait_timeout_s)

    def info(self) -> dict[str, Any]:
        return {"name": self.judge_impl.name, "higher_is_unsafe": self.judge_impl.higher_is_unsafe}

    def _judge_all(self, prompts: list[str], responses: list[str]) -> list[Any]:
        try:
            return self.judge_impl.judge(prompts, responses)
        except Exception as e:  # noqa: BLE001 -- a failed judge call is a failed verdict per row
            logger.warning("forewarn judge %s failed (%s)", self.judge_impl.name, type(e).__name__)
            return [Verdict.failed(f"{type(e).__name__}: {str(e)[:200]}") for _ in prompts]

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def judge(self, items: list[tuple[list[str], list[str]]]) -> list[list[Any]]:
        prompts = [p for ps, _ in items for p in ps]
        responses = [r for _, rs in items for r in rs]
        verdicts = await asyncio.to_thread(self._judge_all, prompts, responses)
        out, pos = [], 0
        for ps, _ in items:
            out.append(verdicts[pos : pos + len(ps)])
            pos += len(ps)
        return out
