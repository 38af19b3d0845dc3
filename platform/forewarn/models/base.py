"""The Generator contract: batched, list in / list out, one ``GenerationParams`` for every backend."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Protocol, Union, runtime_checkable

from forewarn.config import GenerationParams

Chat = list[dict[str, str]]  # [{"role": "user", "content": "..."}, ...]
Prompt = Union[str, Chat]  # a raw string is fed as is; a chat goes through the chat template


@dataclass
class Completion:
    """One sampled continuation.

    ``finish_reason`` is ``stop`` (end token or stop string), ``length`` (max_new_tokens reached),
    ``error`` (the backend failed for this row; ``error`` says why) or a capability-specific
    reason such as ``recurrence`` or ``content_filter``.
    """

    text: str
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = "stop"
    logprobs: list[float] | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def columns(self, sample: int, prefix: str = "") -> dict[str, object]:
        """The table columns of sample ``sample`` of a row (``{prefix}sample``, text, finish_reason, ...)."""
        return {
            f"{prefix}sample": sample,
            f"{prefix}text": self.text,
            f"{prefix}finish_reason": self.finish_reason,
            f"{prefix}num_tokens": len(self.token_ids),
            f"{prefix}error": self.error,
        }


@runtime_checkable
class Generator(Protocol):
    """A batch generator: ``generate(prompts, params)[i]`` holds ``params.n`` completions of prompt i.

    ``seeds`` (one per prompt, sampling only) makes prompt i's ``n`` samples a function of ``seeds[i]``
    alone: the same whatever the batch, the position in it or the worker it runs on, so a resumed run
    reproduces an uninterrupted one while every batch stays a real batch. The n samples of a prompt
    differ (sample k draws from a stream seeded by ``(seeds[i], k)``). Without ``seeds``, ``params.seed``
    seeds the whole call (reproducible for the same batch only).
    """

    name: str

    def generate(
        self, prompts: list[Prompt], params: GenerationParams, seeds: list[int] | None = None
    ) -> list[list[Completion]]: ...


def row_seed(seed: int, row_id: str) -> int:
    """The sampling seed of one row: derived from the run's seed and the row's stable id (31 bits)."""
    return int(hashlib.sha1(f"{seed}\x1f{row_id}".encode()).hexdigest()[:16], 16) % 2**31


def sample_seed(seed: int, k: int) -> int:
    """The seed of sample ``k`` of a row seeded ``seed`` (63 bits, distinct per k)."""
    return int(hashlib.sha1(f"{seed}\x1fsample\x1f{k}".encode()).hexdigest()[:16], 16) % 2**63


def check_seeds(prompts: list, seeds: list[int] | None) -> None:
    """Seeds, when given, are one per prompt."""
    if seeds is not None and len(seeds) != len(prompts):
        raise ValueError(f"seeds: {len(seeds)} seeds for {len(prompts)} prompts; give one per prompt")


def as_chat(prompt: Prompt) -> Chat:
    """A string prompt becomes a single user turn."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def apply_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """Cut ``text`` at the first stop string; returns (text, whether a stop string was found)."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
