"""ReverseGen building blocks without models: prompts and cuts, pairing, dedup, Self-BLEU and distinct-n."""

from __future__ import annotations

import random

import numpy as np
import pytest

from forewarn.metrics import attack_success_rate, distinct_n, self_bleu
from forewarn.pipeline.dedup import minhash_keep, semdedup_keep
from forewarn.reversegen.pairs import PairConfig, build_pairs
from forewarn.reversegen.proposer import (
    build_prompt,
    completion_text,
    cut_instruction,
    sample_prompts,
    seed_items,
    strip_answer,
)


def test_safety_prompt_format_and_cut() -> None:
    assert build_prompt("safety", ["a?", "b?", "c?"]) == "Ask questions:\n1. a?\n2. b?\n3. c?\n4."
    assert cut_instruction("safety", " How do I pick a lock? 5. Another one") == "How do I pick a lock?"
    assert cut_instruction("safety", " Why is the sky blue?\n5. next\n6. more") == "Why is the sky blue?"
    assert cut_instruction("safety", " Item with 12. numbering") == "Item with"
    assert cut_instruction("safety", "   \n") is None
    assert completion_text("safety", "x?") == " x?\n"


def test_honesty_and_math_formats() -> None:
    p = build_prompt("honesty", ["Q a\nA. x\nAnswer:A.", "Q b\nA. y\nAnswer:B.", "Q c\nAnswer:C."], "history")
    assert p.startswith("Ask multiple choice questions (with answers) about history:\n\nQ1. Q a")
    assert p.endswith("\n\nQ4.")
    item = cut_instruction("honesty", " Which?\nA. one\nB. two\nAnswer: B\n\nQ5. more")
    assert item == "Which?\nA. one\nB. two\nAnswer:B."
    assert strip_answer(item) == "Which?\nA. one\nB. two"
    assert cut_instruction("honesty", " A question with no answer line") is None  # dropped, as specified
    assert cut_instruction("math", " What is 3 times 4?\n\nQ5. What is 1 plus 1?") == "What is 3 times 4?"
    rows = seed_items(
        "honesty", [{"question": "Which?", "options": ["x", "y"], "answer": "B", "subject": "s"}]
    )
    assert rows == [{"instruction": "Which?\nA. x\nB. y\nAnswer:B.", "subject": "s"}]


def test_sample_prompts_uses_distinct_seeds() -> None:
    seeds = [{"instruction": f"question {i}?"} for i in range(10)]
    prompts = sample_prompts(seeds, 20, "safety", random.Random(0))
    assert len(prompts) == 20
    for p in prompts:
        shots = p["prompt"].splitlines()[1:4]
        assert len(set(shots)) == 3
    with pytest.raises(ValueError, match="at least 3"):
        sample_prompts(seeds[:2], 1, "safety", random.Random(0))


def _row(pid: str, i: int, fail: bool | None) -> dict:
    return {
        "id": f"{pid}-{i}",
        "prompt_id": pid,
        "prompt": f"prompt {pid}",
        "instruction": f"{pid} ins {i}",
        "failure": fail,
    }


def test_pairs_come_from_the_same_prompt() -> None:
    rows = [
        _row("a", 0, True),
        _row("a", 1, False),
        _row("a", 2, False),
        _row("a", 3, None),
        _row("b", 0, True),
        _row("b", 1, True),  # only failures: no pair
        _row("c", 0, False),
        _row("d", 0, True),
        _row("d", 1, False),
    ]
    pairs = build_pairs(rows, PairConfig(rule="all", max_pairs_per_prompt=4))
    assert {p["prompt_id"] for p in pairs} == {"a", "d"}
    for p in pairs:
        assert p["chosen"].startswith(p["prompt_id"]) and p["rejected"].startswith(p["prompt_id"])
        assert p["prompt"] == f"prompt {p['prompt_id']}"
    assert sum(p["prompt_id"] == "a" for p in pairs) == 2  # the judge-error row is never used
    matched = build_pairs(rows, PairConfig(rule="matched"))
    assert len(matched) == 2 and build_pairs(rows, PairConfig(rule="all", max_pairs=1)).__len__() == 1
    assert build_pairs(rows, PairConfig(seed=3)) == build_pairs(rows, PairConfig(seed=3))


def test_minhash_drops_near_duplicates_only() -> None:
    texts = [
        "how do i bake bread at home",
        "how do i bake bread at home please",
        "what is the capital of france",
        "How do I bake bread at home",
        "tell me a joke about cats",
    ]
    assert minhash_keep(texts, threshold=0.78) == [0, 2, 4]
    assert minhash_keep(texts, threshold=0.9) == [0, 1, 2, 4]


def test_semdedup_keeps_one_of_each_tight_group() -> None:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 16))
    x = np.concatenate([c + 0.001 * rng.normal(size=(4, 16)) for c in centers])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    keep = semdedup_keep(x, eps=0.04, n_clusters=3)
    assert len(keep) == 3 and len({k // 4 for k in keep}) == 3
    assert len(semdedup_keep(x, eps=1e-9, n_clusters=3)) == 12


def test_self_bleu_and_distinct() -> None:
    same = ["the cat sat on the mat today"] * 4
    diverse = [
        "the cat sat on the mat",
        "quantum fields permeate space",
        "bake bread with flour",
        "rivers flow",
    ]
    assert self_bleu(same) == pytest.approx(1.0)
    assert self_bleu(diverse) < 0.1
    assert distinct_n(["a b a b"], 1) == 0.5 and distinct_n(["a b c"], 2) == 1.0
    assert attack_success_rate([True, False, None, True]) == pytest.approx(2 / 3)
