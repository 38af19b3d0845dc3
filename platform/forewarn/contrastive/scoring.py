"""Scoring prompts with the contrastive decoder: in process (:class:`LocalScorer`), or on a long-lived role
pool (:class:`PoolScorer`) whose actors each hold one :class:`ContrastiveDecoder` (both models, loaded once
per run, torch's threads set to the actor's CPU share). Both are finder scorers: ``prompts -> DecodedSample
list``, in prompt order.
"""

from __future__ import annotations

from functools import partial

from forewarn.config import ModelSpec, Resources
from forewarn.contrastive.config import DecoderConfig
from forewarn.contrastive.decoder import ContrastiveDecoder, DecodedSample
from forewarn.pools import RolePool


class PoolScorer:
    """A finder scorer on a long-lived role pool (:class:`forewarn.pools.RolePool`): each of
    ``resources.replicas`` actors loads both models once, for the whole run, and every cycle's candidates are
    spread over them in batches of ``resources.batch_size`` (a Ray Data pass per cycle reloaded both models
    every cycle). ``close()`` releases the actors; ``stats()`` says what the pool cost."""

    def __init__(self, start: ModelSpec, comparison: ModelSpec, cfg: DecoderConfig, resources: Resources):
        self.factory = partial(ContrastiveDecoder.from_specs, start, comparison, cfg)
        self.resources = resources
        self.pool: RolePool | None = None

    def __call__(self, prompts: list[str]) -> list[DecodedSample]:
        if not prompts:
            return []
        if self.pool is None:
            self.pool = RolePool("scoring", self.factory, self.resources)
        size, out = self.resources.batch_size, []
        for b, (samples, _) in enumerate(self.pool.map_batches("decode", {"prompts": list(prompts)})):
            for s in samples:
                s.prompt_index += b * size  # batch-local -> the caller's index
                out.append(s)
        return sorted(out, key=lambda s: (s.prompt_index, s.sample))

    def stats(self) -> dict[str, float | int]:
        return self.pool.stats.as_dict() if self.pool is not None else {}

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()


class LocalScorer:
    """A finder scorer that decodes in this process (tests, notebooks, one-GPU runs)."""

    def __init__(self, decoder: ContrastiveDecoder):
        self.decoder = decoder

    def __call__(self, prompts: list[str]) -> list[DecodedSample]:
        return self.decoder.decode(prompts)
