"""Recurrence detection on token ids: an explicit cycle detector, and the original length rule beside it.

The original RecurrentGenerator calls a response "recurrent" iff it generated at least
``max_new_tokens - 20`` tokens. That measures length, not repetition: a long non-repetitive answer counts, a
loop that ends with EOS does not. :func:`find_cycle` looks for the real thing -- a block of ``period`` tokens
repeated back to back -- and :func:`analyse` records both views for every generation so runs stay
comparable with the original while labels and goals use the explicit test.

    >>> analyse([5, 1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2], max_new_tokens=12).period
    3
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

Rule = Literal["length", "cycle", "both"]


@dataclass(frozen=True)
class Cycle:
    """The longest back-to-back repetition in a sequence: ``period`` tokens repeated from ``start`` on."""

    period: int
    start: int
    covered: int  # tokens inside the periodic run (first copy included)

    @property
    def repeats(self) -> float:
        return self.covered / self.period


@dataclass(frozen=True)
class Recurrence:
    """What one generation did: its length, both recurrence verdicts and where its cycle lies."""

    num_tokens: int
    hit_cap: bool  # the original rule: num_tokens >= max_new_tokens - cap_margin
    cycled: bool  # an exact cycle of >= min_repeats copies that runs to the end of the response
    period: int  # 0 when no exact cycle
    cycle_start: int  # -1 when no exact cycle
    repeats: float
    repeated_tokens: int  # positions whose n-gram already occurred earlier (a graded repetition measure)
    loop_share: float  # share of the second half's n-grams that already occurred earlier
    looping: bool  # cycled, or loop_share >= min_loop_share (a loop with slight variation, as sampling makes)

    def recurrent(self, rule: Rule) -> bool:
        """The verdict under ``rule``: ``length`` (original), ``cycle`` (explicit repetition, exact or with slight
        variation), ``both`` (a loop that ran to the cap)."""
        if rule == "length":
            return self.hit_cap
        if rule == "cycle":
            return self.looping
        return self.hit_cap and self.looping

    def to_dict(self) -> dict:
        return asdict(self)


def _runs(eq: np.ndarray) -> tuple[int, int]:
    """(length, start) of the longest run of True in ``eq`` (the last one on ties)."""
    if not eq.any():
        return 0, 0
    padded = np.concatenate(([0], eq.astype(np.int8), [0]))
    edges = np.flatnonzero(np.diff(padded))
    starts, ends = edges[0::2], edges[1::2]
    lengths = ends - starts
    k = len(lengths) - 1 - int(np.argmax(lengths[::-1]))
    return int(lengths[k]), int(starts[k])


def find_cycle(
    token_ids: Sequence[int], max_period: int = 64, min_repeats: float = 3.0, at_end: bool = True
) -> Cycle | None:
    """The periodic run covering the most tokens, or None when no period repeats ``min_repeats`` times.

    For each period p, ``ids[i] == ids[i - p]`` marks positions that continue a p-periodic run; a run of m
    such positions covers m + p tokens. With ``at_end`` only runs reaching the last token count (the
    generation is still looping when it stops). Ties go to the smallest period, so a loop of "ab" is period 2,
    not 4. Cost: O(len x max_period) vectorised comparisons.
    """
    ids = np.asarray(token_ids, dtype=np.int64)
    n = len(ids)
    best: Cycle | None = None
    for p in range(1, min(max_period, n // 2) + 1):
        eq = ids[p:] == ids[:-p]
        if at_end:
            m = int(np.argmin(eq[::-1])) if not eq.all() else len(eq)
            start = n - m - p
        else:
            m, s = _runs(eq)
            start = s
        covered = m + p
        if m == 0 or covered < min_repeats * p:
            continue
        if best is None or covered > best.covered:
            best = Cycle(period=p, start=start, covered=covered)
    return best


def _repeat_flags(token_ids: Sequence[int], n: int) -> list[bool]:
    seen: set[tuple[int, ...]] = set()
    flags = []
    ids = list(token_ids)
    for i in range(len(ids) - n + 1):
        g = tuple(ids[i : i + n])
        flags.append(g in seen)
        seen.add(g)
    return flags


def repeated_ngrams(token_ids: Sequence[int], n: int = 4) -> int:
    """How many positions start an n-gram that already occurred earlier in the sequence.

    A graded repetition signal: a normal answer scores about 0, two copies of a sentence score about its
    length, a full loop scores almost the whole response. Used by the cycle-aware fitness.
    """
    return sum(_repeat_flags(token_ids, n))


def loop_share(token_ids: Sequence[int], n: int = 4) -> float:
    """Share of n-grams in the second half of the sequence that already occurred earlier: near 1 for a loop,
    also one with small variations that break an exact period (sampled loops insert or drop a word)."""
    flags = _repeat_flags(token_ids, n)
    tail = flags[len(token_ids) // 2 :]
    return sum(tail) / len(tail) if tail else 0.0


def analyse(
    token_ids: Sequence[int],
    max_new_tokens: int,
    cap_margin: int = 20,
    max_period: int = 64,
    min_repeats: float = 3.0,
    ngram: int = 4,
    min_loop_share: float = 0.7,
    min_loop_tokens: int = 24,
) -> Recurrence:
    """Both recurrence verdicts for one response (token ids without the prompt and without EOS).

    ``cap_margin`` is the original's 20-token slack, clipped so that a short ``max_new_tokens`` (tests)
    still needs most of the budget: the cap line is ``max(max_new_tokens - cap_margin, 0.9 * max_new_tokens)``.
    """
    n = len(token_ids)
    cap_line = max(max_new_tokens - cap_margin, int(0.9 * max_new_tokens))
    cyc = find_cycle(token_ids, max_period=max_period, min_repeats=min_repeats, at_end=True)
    share = loop_share(token_ids, ngram)
    return Recurrence(
        num_tokens=n,
        hit_cap=n >= cap_line,
        cycled=cyc is not None,
        period=cyc.period if cyc else 0,
        cycle_start=cyc.start if cyc else -1,
        repeats=round(cyc.repeats, 3) if cyc else 0.0,
        repeated_tokens=repeated_ngrams(token_ids, ngram),
        loop_share=round(share, 4),
        looping=cyc is not None or (n >= min_loop_tokens and share >= min_loop_share),
    )


def length_rule(num_tokens: int, max_new_tokens: int, margin: int = 20) -> bool:
    """The original recurrence rule, kept for comparison: tokens generated >= max_new_tokens - margin."""
    return num_tokens >= max_new_tokens - margin
