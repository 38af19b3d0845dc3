"""The whole guarded pipeline in one process, without Ray: tests, notebooks and the benchmark's reference.

Same policy code as the Serve app, no batching across requests: judge and generation calls run on threads
and are serialised per model (models are not thread-safe to share between concurrent calls here).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from forewarn.config import GenerationParams
from forewarn.judges.spec import build_judge
from forewarn.models.base import Prompt
from forewarn.models.hf import HFGenerator
from forewarn.serve.config import ServeConfig
from forewarn.serve.engine import GenerationEngine, GenerationResult, StreamChunk, stream_chunks
from forewarn.serve.pipeline import GuardedPipeline
from forewarn.serve.policy import GuardJudge, threaded_judge
from forewarn.serve.text import PromptViewer


def build_local(cfg: ServeConfig, generator: HFGenerator | None = None) -> GuardedPipeline:
    """The pipeline of ``cfg`` in this process (``cfg.generator.model.path`` must be a folder)."""

    gen = generator or HFGenerator(cfg.generator.model)
    engine = GenerationEngine(gen, cfg.generator.decoding, cfg.generator.stop_detectors)
    lock = asyncio.Lock()

    async def generate(prompt: Prompt, params: GenerationParams) -> GenerationResult:
        async with lock:
            return (await asyncio.to_thread(engine.generate, [prompt], params))[0]

    def stream(prompt: Prompt, params: GenerationParams, chunk_tokens: int) -> AsyncIterator[StreamChunk]:
        return stream_chunks(engine, prompt, params, chunk_tokens, lock)

    judges: dict[str, GuardJudge] = {}

    def judge_for(spec: Any) -> GuardJudge | None:
        if spec is None or not cfg.guard_enabled:
            return None
        key = spec.model_dump_json()
        if key not in judges:
            judges[key] = threaded_judge(build_judge(spec))
        return judges[key]

    spec = cfg.generator.model
    viewer = PromptViewer(gen.tokenizer, spec.max_input_tokens, spec.use_chat_template)
    return GuardedPipeline(
        cfg.guard, generate, judge_for(cfg.guard.input.judge), judge_for(cfg.guard.output.judge), viewer,
        cfg.limits.judge_timeout_s, stream,
    )  # fmt: skip
