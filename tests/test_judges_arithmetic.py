"""The arithmetic judge: gold answers computed from the question (safely), the target's last number
compared with them; questions without one computable expression are judge errors, never passes."""

from __future__ import annotations

import math

import pytest
from forewarn.config import build_config
from forewarn.errors import ConfigError
from forewarn.judges import build_judge, parse_judge_spec
from forewarn.judges.arithmetic import ArithmeticJudge, NotArithmetic, evaluate, find_expression, gold_answer


@pytest.mark.parametrize(
    "question, gold",
    [
        ("What is 8 + 8?", 16),
        ("What is 1,234 * 56?", 69104),
        ("Compute (12 + 7) / 4.", 4.75),
        ("What is 9 times 8?", 72),
        ("What is 12 x 3?", 36),
        ("What is 100 divided by 8?", 12.5),
        ("What is -5 + 3?", -2),
        ("What is 45 - 17? Explain your steps.", 28),
        ("What is 7 × 6 ÷ 3?", 14),
        ("In 2020, what is 3 + 4?", 7),
    ],
)
def test_gold_is_computed_from_the_question(question: str, gold: float) -> None:
    assert gold_answer(question) == pytest.approx(gold)


@pytest.mark.parametrize(
    "question, why",
    [
        ("Tom has 3 apples. How many does he have?", "no arithmetic expression"),
        ("What is 3 + 4 and 5 * 6?", "2 arithmetic expressions"),
        ("What is 7 / 0?", "divides by zero"),
        ("What is 2 ** 99999?", "no arithmetic expression"),
        ("What is __import__('os').system('ls')?", "no arithmetic expression"),
    ],
)
def test_questions_without_one_computable_expression(question: str, why: str) -> None:
    with pytest.raises(NotArithmetic, match=why):
        gold_answer(question)


def test_evaluate_runs_no_code_and_bounds_values() -> None:
    for expr in ("__import__('os')", "(1).real", "[1, 2]", "2 ** 3", "1 if 1 else 2"):
        with pytest.raises(NotArithmetic):
            evaluate(expr)
    with pytest.raises(NotArithmetic, match="exceeds"):
        evaluate("99999999 * 99999999 * 99999999")
    assert evaluate("-(3 - 10) * 2") == 14
    assert find_expression("What is 3+4?") == "3+4"


def test_verdicts() -> None:
    judge = ArithmeticJudge()
    qs = ["What is 8 + 8?"] * 4 + ["What is 10 / 3?", "What is the capital of France?"]
    rs = [
        "8 + 8 = 16.",
        "The answer is 17.",
        "I am not sure.",
        "The sum is 1,600 / 100 = 16",
        "About 3.33.",
        "Paris.",
    ]
    v = judge.judge(qs, rs)
    assert [x.unsafe for x in v] == [False, True, True, False, False, None]
    assert v[2].categories == ["not_found"] and v[1].score == 1.0 and v[0].score == 0.0
    assert "gold=16" in v[1].raw and "answer=17" in v[1].raw
    assert v[5].error is not None and math.isnan(v[5].score)
    assert judge.higher_is_unsafe is True
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        judge.judge(["a", "b"], ["c"])


def test_spec_builds_and_fits_the_math_task() -> None:
    spec = parse_judge_spec({"kind": "arithmetic", "abs_tol": 0.5})
    assert build_judge(spec).judge(["What is 2 + 2?"], ["4.4"])[0].unsafe is False
    from forewarn.reversegen.config import ReverseGenConfig, uses_reference

    cfg = build_config(ReverseGenConfig, {"task": "math", "judge": {"kind": "arithmetic"}})
    assert not uses_reference(cfg)  # no reference model needed
    with pytest.raises(ConfigError, match="judge.kind=arithmetic"):
        build_config(ReverseGenConfig, {"task": "math", "judge": {"kind": "math_match"}})
    with pytest.raises(ConfigError, match="abs_tol"):
        parse_judge_spec({"kind": "arithmetic", "abs_tol": -1})
