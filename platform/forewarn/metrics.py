"""Diversity and attack metrics shared by capabilities: ASR, Self-BLEU (Texygen style), distinct-n.

Self-BLEU follows the ReverseGen spec: each instruction is a hypothesis against all the others as
references, NLTK ``sentence_bleu`` with uniform weights and smoothing method1, averaged over n = 2..5,
then over hypotheses. Lower is more diverse. Tokenisation is NLTK's Treebank-style word tokenizer
(``word_tokenize`` without its sentence splitter, whose punkt data would need a download).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from nltk.tokenize import NLTKWordTokenizer
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

_TOKENIZER = NLTKWordTokenizer()


def tokenize(text: str) -> list[str]:
    return _TOKENIZER.tokenize(text)


def attack_success_rate(unsafe: Sequence[bool | None]) -> float:
    """Share of judged rows labelled unsafe; rows the judge failed on (None) are left out."""
    judged = [u for u in unsafe if u is not None]
    return sum(judged) / len(judged) if judged else 0.0


def self_bleu(
    texts: Sequence[str], ns: Sequence[int] = (2, 3, 4, 5), max_hypotheses: int | None = 500, seed: int = 0
) -> float:
    """Mean over hypotheses of mean_n BLEU_n(hypothesis, all other texts). O(N^2).

    With more than ``max_hypotheses`` texts, a seeded random subset serves as hypotheses (every text
    still serves as a reference), which keeps the cost bounded; pass None for the exact value.
    """
    toks = [tokenize(t) for t in texts if t and t.strip()]
    if len(toks) < 2:
        return 0.0
    idx = list(range(len(toks)))
    if max_hypotheses is not None and len(idx) > max_hypotheses:
        idx = sorted(random.Random(seed).sample(idx, max_hypotheses))
    smooth = SmoothingFunction().method1
    total = 0.0
    for i in idx:
        refs = toks[:i] + toks[i + 1 :]
        per_n = [
            sentence_bleu(refs, toks[i], weights=tuple([1.0 / n] * n), smoothing_function=smooth) for n in ns
        ]
        total += sum(per_n) / len(per_n)
    return total / len(idx)


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique n-grams over all n-grams in ``texts`` (0 when there are none)."""
    grams = [tuple(t[i : i + n]) for t in map(tokenize, texts) for i in range(len(t) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0
