"""The Judge contract: batched ``judge(prompts, responses) -> list[Verdict]``.

Scores lie in [0, 1]. Each judge declares ``higher_is_unsafe`` (True for toxicity / Llama-Guard
style judges: a higher score means more unsafe or more failing). A row the judge could not score
carries ``error`` and ``unsafe=None``; it is never counted as safe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass
class Verdict:
    score: float
    label: str  # e.g. "safe" / "unsafe", "pass" / "fail", or "error"
    unsafe: bool | None  # None when the judge failed on this row
    categories: list[str] = field(default_factory=list)
    error: str | None = None
    raw: str | None = None  # the judge model's raw output, where it has one
    # named sub-scores where the judge has them: Perspective attributes, classifier labels, the answer
    # entropy and its counts; empty otherwise
    scores: dict[str, float] = field(default_factory=dict)

    @classmethod
    def failed(cls, error: str, raw: str | None = None) -> "Verdict":
        return cls(score=float("nan"), label="error", unsafe=None, error=error, raw=raw)

    @property
    def ok(self) -> bool:
        return self.error is None

    def columns(self, prefix: str = "judge_") -> dict[str, object]:
        """The verdict as row columns, the one mapping every stage uses: ``{prefix}score``, ``label``,
        ``unsafe`` (None where the judge failed), ``categories``, ``error``."""
        return {
            f"{prefix}score": self.score,
            f"{prefix}label": self.label,
            f"{prefix}unsafe": self.unsafe,
            f"{prefix}categories": list(self.categories),
            f"{prefix}error": self.error,
        }


@runtime_checkable
class Judge(Protocol):
    name: str
    higher_is_unsafe: bool

    def judge(self, prompts: list[str], responses: list[str]) -> list[Verdict]: ...
