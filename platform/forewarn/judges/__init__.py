"""Judges: batched ``judge(prompts, responses) -> list[Verdict]``; build any of them from config.

Kinds: ``offline_toxicity`` (alt-profanity-check, no download), ``llama_guard`` (v2 / v3 prompt formats),
``perspective`` (HTTP client with rate limit and retries), ``classifier`` (HF sequence classifier),
``honesty_entropy`` (answer entropy), ``math_match`` (final-answer match against a reference) and
``arithmetic`` (the answer computed from the question). Importing this package is
cheap; each judge's heavy imports happen when it is built.
"""

from forewarn.judges.base import Judge, Verdict
from forewarn.judges.spec import (
    JUDGE_KINDS,
    ArithmeticSpec,
    ClassifierSpec,
    HonestyEntropySpec,
    JudgeSpec,
    LlamaGuardSpec,
    MathMatchSpec,
    OfflineToxicitySpec,
    PerspectiveSpec,
    build_judge,
    parse_judge_spec,
)

__all__ = [
    "JUDGE_KINDS",
    "ArithmeticSpec",
    "ClassifierSpec",
    "HonestyEntropySpec",
    "Judge",
    "JudgeSpec",
    "LlamaGuardSpec",
    "MathMatchSpec",
    "OfflineToxicitySpec",
    "PerspectiveSpec",
    "Verdict",
    "build_judge",
    "parse_judge_spec",
]
