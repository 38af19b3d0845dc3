"""The guarded generator's engine on the ``vllm`` backend (CPU build or GPU), same contract as the hf one.

``vllm.LLM.generate`` runs whole requests and takes no per-step callback, so stop detectors and streaming
work **by chunks**: each row is generated ``chunk`` tokens at a time (its prompt plus what it has so far is
the next call's prompt, which vLLM's prefix cache makes cheap), the detectors check each row after every
chunk, stop strings are checked on the decoded text, and ``on_tokens`` receives each chunk's new tokens.
Without detectors and without a listener a request is one plain ``generate`` call. Two approximations
of chunked mode, stated here rather than hidden: a detector fires at the end of the chunk in which the
loop became detectable (at most ``chunk - 1`` tokens later than on hf), and OpenAI's presence / frequency
penalties count the tokens of the current chunk only (vLLM counts output tokens, and earlier chunks are
prompt by then). Decoding mitigations are logits processors of the hf backend; the config refuses them here.

``vllm.LLM`` is not thread-safe: calls are serialised by a lock, so a stream and a batch interleave chunk
by chunk rather than wait for each other whole.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from forewarn.config import GenerationParams, Section
from forewarn.serve.stop_detectors import build_stop_detector
from forewarn.models.stopping import StopDetector, StopReason
from forewarn.serve.engine import Generated, GenerationResult, OnTokens
from forewarn.models.base import Completion, Prompt, apply_stop
from forewarn.models.vllm import VLLMGenerator, request_seeds

CHUNK_TOKENS = 8  # tokens per chunk without detectors (streaming only)


@dataclass
class _Row:
    prompt: list[int]
    seed: int | None
    gen: list[int] = field(default_factory=list)
    finish: str | None = None
    stop: StopReason | None = None


class VLLMEngine:
    """Generation with a :class:`~forewarn.models.vllm.VLLMGenerator` and the configured stop detectors."""

    def __init__(self, generator: VLLMGenerator, stop_detectors: Sequence[Section] = ()):
        self.generator = generator
        self.tokenizer = generator.tokenizer
        self.detectors: list[StopDetector] = [build_stop_detector(spec, generator) for spec in stop_detectors]
        self.end_ids = [
            t for t in (self.tokenizer.eos_token_id, self.tokenizer.pad_token_id) if t is not None
        ]
        self.chunk = min((d.check_every for d in self.detectors), default=CHUNK_TOKENS)
        self.lock = threading.Lock()

    def generate(
        self, prompts: list[Prompt], params: GenerationParams, on_tokens: OnTokens | None = None
    ) -> list[GenerationResult]:
        """``params.n`` completions per prompt, in order; detector stops carry their finish reason."""
        if not prompts:
            return []
        encoded = [e["prompt_token_ids"] for e in self.generator.encode(prompts)]
        if not self.detectors and on_tokens is None:
            with self.lock:
                rows_out = self.generator.generate(prompts, params)
            return [
                GenerationResult([Generated(c) for c in comps], len(ids))
                for comps, ids in zip(rows_out, encoded)
            ]
        seeds = request_seeds(params, params.seed)  # one per request: greedy runs once and is copied
        per_prompt = len(seeds)
        rows = [_Row(list(ids), seed) for ids in encoded for seed in seeds]
        self._chunked(rows, params, on_tokens)
        out = []
        for i, ids in enumerate(encoded):
            done = [self._completion(r, params) for r in rows[i * per_prompt : (i + 1) * per_prompt]]
            done = done + [Generated(Completion(g.completion.text, list(g.completion.token_ids),
                                                g.completion.finish_reason), g.stop)
                           for g in done * (params.n - per_prompt)]  # fmt: skip
            out.append(GenerationResult(done[: params.n], len(ids)))
        return out

    def _chunked(self, rows: list[_Row], params: GenerationParams, on_tokens: OnTokens | None) -> None:
        round_no = 0
        while True:
            active = [r for r in rows if r.finish is None]
            if not active:
                return
            sps = []
            for r in active:
                chunk = params.model_copy(
                    update={"max_new_tokens": min(self.chunk, params.max_new_tokens - len(r.gen))}
                )
                sps.append(
                    self.generator.sampling_params(
                        chunk, None if r.seed is None else r.seed + 7919 * round_no
                    )
                )
            with self.lock:
                outs = self.generator.llm.generate(
                    [{"prompt_token_ids": r.prompt + r.gen} for r in active], sps, use_tqdm=False
                )
            new: dict[int, list[int]] = {}
            for r, o in zip(active, outs):
                c = o.outputs[0]
                ids = [int(t) for t in c.token_ids]
                new[id(r)] = ids
                r.gen.extend(ids)
                self._settle(r, c.finish_reason, params)
            round_no += 1
            if on_tokens is not None and on_tokens([new.get(id(r), []) for r in rows]):
                return

    def _settle(self, r: _Row, vllm_finish: str | None, params: GenerationParams) -> None:
        if vllm_finish == "stop":
            r.finish = "stop"
            return
        if params.stop and apply_stop(self.tokenizer.decode(r.gen, skip_special_tokens=True), params.stop)[1]:
            r.finish = "stop"  # a stop string across two chunks
            return
        for det in self.detectors:
            reason = det.check(self._cut(r.gen))
            if reason is not None:
                r.finish, r.stop = reason.finish_reason, reason
                return
        if len(r.gen) >= params.max_new_tokens:
            r.finish = "length"

    def _cut(self, ids: list[int]) -> list[int]:
        ends = set(self.end_ids)
        k = next((i for i, t in enumerate(ids) if t in ends), len(ids))
        return ids[:k]

    def _completion(self, r: _Row, params: GenerationParams) -> Generated:
        ids = self._cut(r.gen)
        text, _ = apply_stop(self.tokenizer.decode(ids, skip_special_tokens=True), params.stop)
        return Generated(Completion(text, ids, r.finish or "length"), r.stop)
