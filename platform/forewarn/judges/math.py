"""Math judge: does the target's final answer match the gold answer (ReverseGen §5)?

Model answer = the text after the last ``####`` (first line of it), normalised; "not_found" if there is
no ``####`` (a failure, not a judge error). Gold = the last ``\\boxed{...}`` of the reference solution,
else its last number. The gold comes from a reference field (``references=``) or from a reference model
answering the question (Qwen2.5-Math style: "Please reason step by step, and put your final answer within
\\boxed{}."). Items whose gold has no answer are judge errors, so accuracy = correct / (correct + incorrect)
skips them. Failure iff the normalised strings differ; score 1.0 for a failure, 0.0 for a match.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from forewarn.config import GenerationParams
from forewarn.judges.base import Verdict
from forewarn.models.base import Generator

NOT_FOUND = "not_found"
REFERENCE_SYSTEM = "You are a helpful assistant."
REFERENCE_SUFFIX = "\nPlease reason step by step, and put your final answer within \\boxed{}."
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_FRAC = re.compile(r"\\d?frac\{([^{}]*)\}\{([^{}]*)\}")
_TEXT = re.compile(r"\\(?:text|mathrm|mbox)\{([^{}]*)\}")


def normalize_answer(ans: str) -> str:
    """Canonical form for comparison: no $, spaces or thousands commas; numbers without trailing zeros."""
    s = ans.strip()
    s = _TEXT.sub(r"\1", s)
    s = _FRAC.sub(r"\1/\2", s)
    for junk in ("\\$", "$", "\\!", "\\,", "\\ ", " "):
        s = s.replace(junk, "")
    s = s.rstrip(".")
    if re.fullmatch(r"-?[\d,]+(\.\d+)?|-?\.\d+", s):
        s = s.replace(",", "")
    try:
        d = Decimal(s)
    except InvalidOperation:
        return s
    if not d.is_finite():
        return s
    d = d.normalize()
    text = format(d, "f")
    return "0" if text in ("-0", "0") else text


def extract_model_answer(text: str) -> str:
    """The normalised answer after the last ``####``, or ``not_found``."""
    if "####" not in (text or ""):
        return NOT_FOUND
    tail = text.rsplit("####", 1)[1].strip()
    line = tail.splitlines()[0] if tail else ""
    return normalize_answer(line) if line.strip() else NOT_FOUND


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (nested braces handled), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i, depth = start + len("\\boxed{"), 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
    return None


def extract_gold(text: str) -> str | None:
    """Gold answer of a reference solution: last ``\\boxed{}`` content, else the last number; None if neither."""
    boxed = last_boxed(text or "")
    if boxed is not None and boxed.strip():
        return normalize_answer(boxed)
    nums = _NUMBER.findall(text or "")
    return normalize_answer(nums[-1]) if nums else None


class MathMatchJudge:
    """Answer match against references or a reference model; ``higher_is_unsafe`` (1.0 = wrong answer)."""

    higher_is_unsafe = True
    name = "math_match"

    def __init__(
        self, reference_generator: Generator | None = None, reference_params: GenerationParams | None = None
    ):
        self.reference_generator = reference_generator
        self.reference_params = reference_params or GenerationParams(max_new_tokens=1024, temperature=0.0)

    def reference_solutions(self, questions: list[str]) -> list[str | None]:
        """The reference model's solutions (None where generation failed)."""
        if self.reference_generator is None:
            raise ValueError("math_match needs references= or a reference model (judge.reference_model)")
        chats = [
            [
                {"role": "system", "content": REFERENCE_SYSTEM},
                {"role": "user", "content": q + REFERENCE_SUFFIX},
            ]
            for q in questions
        ]
        outs = self.reference_generator.generate(chats, self.reference_params)
        return [None if row[0].error else row[0].text for row in outs]

    def judge(
        self, prompts: list[str], responses: list[str], references: list[str | None] | None = None
    ) -> list[Verdict]:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        if references is None:
            references = self.reference_solutions(prompts)
        elif len(references) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(references)} references")
        return [self.judge_one(r, ref) for r, ref in zip(responses, references)]

    def judge_one(self, response: str, reference: str | None) -> Verdict:
        gold = extract_gold(reference) if reference is not None else None
        if gold is None:
            return Verdict.failed(
                "the reference has no answer (no \\boxed{} and no number); item skipped",
                raw=None if reference is None else reference[-200:],
            )
        answer = extract_model_answer(response)
        wrong = answer != gold
        return Verdict(
            score=1.0 if wrong else 0.0,
            label="incorrect" if wrong else "correct",
            unsafe=wrong,
            categories=["not_found"] if answer == NOT_FOUND else [],
            raw=f"answer={answer} gold={gold}",
        )
