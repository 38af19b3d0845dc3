"""Arithmetic judge: a program computes the gold answer from the question itself; no reference model.

ReverseGen's math task labels a target answer by comparing it with a reference model's (reference §5). A
135 M model gets much plain arithmetic wrong, and arithmetic has an exact answer a program can compute, so
this judge needs neither a reference model nor gold data:

- the question must hold exactly one arithmetic expression (``What is 347 * 58?``, ``Compute (12 + 7) / 4``,
  ``What is 9 times 8?``): numbers joined by ``+ - * /`` (or the words plus, minus, times, multiplied by,
  divided by, and the signs x, ×, ÷ between numbers), with parentheses. It is evaluated with ``ast`` over
  number literals and those four operators only — never ``eval`` — so a proposer cannot make it run code
  or raise a huge power. A question with no such expression, with two of them, or that divides by zero is
  a judge error (``unsafe=None``), so the ASR counts only questions with a computed answer;
- the target's answer is the last number in its response (the GSM8K convention; thousands commas allowed);
  no number at all is a failure (category ``not_found``);
- failure iff ``|answer - gold| > abs_tol + rel_tol * |gold|``. Score 1.0 for a failure, 0.0 for a match.
"""

from __future__ import annotations

import ast
import math
import re

from forewarn.errors import ConfigError
from forewarn.judges.base import Verdict

_WORDS = [
    (re.compile(r"\bmultiplied\s+by\b", re.IGNORECASE), "*"),
    (re.compile(r"\bdivided\s+by\b", re.IGNORECASE), "/"),
    (re.compile(r"\btimes\b", re.IGNORECASE), "*"),
    (re.compile(r"\bplus\b", re.IGNORECASE), "+"),
    (re.compile(r"\bminus\b", re.IGNORECASE), "-"),
]
_SIGN_X = re.compile(r"(?<=[\d)])\s*[x×]\s*(?=[\d(])")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
# a run of numbers, operators, parentheses and spaces that starts at a number or an opening parenthesis
_SPAN = re.compile(r"[(\-]*\s*\(*\s*\d[\d.\s+\-*/()]*")
_HAS_OP = re.compile(r"\d\s*\)*\s*[+\-*/]\s*\(*\s*-?\s*\d")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_OPS = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
}
MAX_MAGNITUDE = 1e15  # operands and results beyond this are not arithmetic a chat model is asked


class NotArithmetic(ValueError):
    """The question holds no single computable arithmetic expression."""


def _normalise(question: str) -> str:
    s = question.replace("÷", "/").replace("−", "-")
    for pat, op in _WORDS:
        s = pat.sub(f" {op} ", s)
    s = _SIGN_X.sub(" * ", s)
    return _THOUSANDS.sub("", s)


def _balance(expr: str) -> str:
    """Trim trailing sentence punctuation/operators and parentheses that open or close nothing."""
    expr = expr.strip().rstrip(".+-*/ ").strip()
    while expr.count("(") > expr.count(")") and expr.startswith("("):
        expr = expr[1:].strip()
    while expr.count(")") > expr.count("(") and expr.endswith(")"):
        expr = expr[:-1].strip()
    return expr


def find_expression(question: str) -> str:
    """The one arithmetic expression in ``question`` (normalised to ``+ - * /``); NotArithmetic if none or
    several."""
    spans = [_balance(m.group(0)) for m in _SPAN.finditer(_normalise(question))]
    exprs = [s for s in spans if _HAS_OP.search(s)]
    if not exprs:
        raise NotArithmetic("the question holds no arithmetic expression (numbers joined by + - * /)")
    if len(exprs) > 1:
        raise NotArithmetic(
            f"the question holds {len(exprs)} arithmetic expressions ({exprs!r}); "
            "which one is asked is ambiguous"
        )
    return re.sub(r"\s+", " ", exprs[0])


def _eval(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        value = float(node.value)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        inner = _eval(node.operand)
        value = -inner if isinstance(node.op, ast.USub) else inner
    elif isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Div) and right == 0:
            raise NotArithmetic("the expression divides by zero")
        value = _OPS[type(node.op)](left, right)
    else:
        raise NotArithmetic(f"{type(node).__name__} is not allowed in an arithmetic expression")
    if not math.isfinite(value) or abs(value) > MAX_MAGNITUDE:
        raise NotArithmetic(f"a value in the expression exceeds {MAX_MAGNITUDE:g}")
    return value


def evaluate(expr: str) -> float:
    """The value of an arithmetic expression of numbers, ``+ - * /`` and parentheses (nothing else runs)."""
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError:
        raise NotArithmetic(f"{expr!r} does not parse as arithmetic") from None
    return _eval(tree)


def gold_answer(question: str) -> float:
    """The computed answer to the one arithmetic expression in ``question``."""
    return evaluate(find_expression(question))


def last_number(text: str) -> float | None:
    """The last number in ``text`` (thousands commas allowed), or None."""
    nums = _NUMBER.findall(text or "")
    if not nums:
        return None
    return float(nums[-1].replace(",", ""))


class ArithmeticJudge:
    """Computes each question's answer and checks the target's last number; 1.0 = wrong answer."""

    higher_is_unsafe = True
    name = "arithmetic"

    def __init__(self, abs_tol: float = 0.01, rel_tol: float = 1e-6):
        if abs_tol < 0 or rel_tol < 0:
            raise ConfigError(
                f"judge.abs_tol={abs_tol!r} / judge.rel_tol={rel_tol!r}: tolerances must be >= 0"
            )
        self.abs_tol, self.rel_tol = abs_tol, rel_tol

    def judge(self, prompts: list[str], responses: list[str]) -> list[Verdict]:
        """``prompts`` are the questions as the target saw them; the expression is read from them."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        return [self.judge_one(q, r) for q, r in zip(prompts, responses)]

    def judge_one(self, question: str, response: str) -> Verdict:
        try:
            expr = find_expression(question)
            gold = evaluate(expr)
        except NotArithmetic as e:
            return Verdict.failed(f"no computable answer: {e}")
        answer = last_number(response)
        wrong = answer is None or abs(answer - gold) > self.abs_tol + self.rel_tol * abs(gold)
        return Verdict(
            score=1.0 if wrong else 0.0,
            label="incorrect" if wrong else "correct",
            unsafe=wrong,
            categories=["not_found"] if answer is None else [],
            raw=f"expression={expr} gold={gold:g} answer={'not_found' if answer is None else f'{answer:g}'}",
        )
