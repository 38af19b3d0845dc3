"""The Generator contract: batched, list in / list out, one ``GenerationParams`` for every backend."""

from __future__ import annotations

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


@runtime_checkable
class Generator(Protocol):
    """A batch generator: ``generate(prompts, params)[i]`` holds ``params.n`` completions of prompt i."""

    name: str

    def generate(self, prompts: list[Prompt], params: GenerationParams) -> list[list[Completion]]: ...


def as_chat(prompt: Prompt) -> Chat:
    """A string prompt becomes a single user turn."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def apply_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """Cut ``text`` at the first stop string; returns (text, whether a stop string was found)."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
