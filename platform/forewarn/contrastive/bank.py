"""The divergence finder's example bank: entries, diversity scores and the biased subsample.

Weighted subsample (what the assistant sees next cycle)::

    w_i  = divergence_weight * minmax(d)_i
         + criterion_weight * criterion_i                  (only when the criterion is used for scoring)
         + diversity_weight * minmax(H)_i                  (only when diversity is on)
    w    = minmax(w)
    P_i  = softmax(+w / T)   (or -w / T to prefer low divergence)
    draw min(n, N) without replacement ~ P, then sort the draw by divergence, descending

``H_i`` is the harmonic-mean L2 distance of entry i to the other entries (``1 / mean_j 1/(D_ij + 1e-8)``
with ``D_ii = inf``), so an entry far from everything else scores high. Every min-max guards a zero range
(all-equal scores become 0), and the temperature must be positive (checked by the config).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class BankEntry:
    """A prompt with its prefix-mean divergence and the evidence that goes with it."""

    prompt: str
    divergence: float
    divergence_max: float = math.nan
    response: str = ""
    criterion: float | None = None
    cycle: int = 0
    repeat: int = 0
    source: str = "seed"  # seed | assistant
    embedding: np.ndarray | None = field(default=None, repr=False)
    diversity: float | None = None


def entries_from_samples(
    prompts: Sequence[str], means: dict[int, float], samples: Sequence[Any], **fields: Any
) -> list[BankEntry]:
    """One entry per prompt from its decoded samples (``prompt_index`` picks the prompt): the prompt's mean
    divergence ``means[i]``, its largest token divergence, and the text of its most divergent sample;
    ``fields`` (cycle, repeat, source) go to every entry."""
    by_prompt: dict[int, list[Any]] = {}
    for s in samples:
        by_prompt.setdefault(s.prompt_index, []).append(s)
    out = []
    for i, p in enumerate(prompts):
        ss = by_prompt.get(i, [])
        best = max(
            ss,
            key=lambda s: s.divergence_mean if math.isfinite(s.divergence_mean) else -math.inf,
            default=None,
        )
        out.append(
            BankEntry(
                prompt=p,
                divergence=means.get(i, math.nan),
                divergence_max=max((s.divergence_max for s in ss), default=math.nan),
                response=best.text if best else "",
                **fields,
            )
        )
    return out


def minmax(x: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    """(x - min) / max(max - min, eps): all-equal inputs map to zeros instead of dividing by zero."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return x
    return (x - x.min()) / max(float(x.max() - x.min()), eps)


def diversity_scores(embeddings: np.ndarray) -> np.ndarray:
    """Harmonic-mean L2 distance of each row to the others (the mean runs over all n; j = i adds 0)."""
    e = np.asarray(embeddings, dtype=np.float64)
    n = len(e)
    if n < 2:
        return np.zeros(n)
    d = np.sqrt(np.maximum(((e[:, None, :] - e[None, :, :]) ** 2).sum(-1), 0.0))
    np.fill_diagonal(d, np.inf)
    return 1.0 / np.mean(1.0 / (d + 1e-8), axis=1)


def subsample_weights(
    entries: Sequence[BankEntry],
    divergence_weight: float = 1.0,
    diversity_weight: float = 0.0,
    criterion_weight: float = 0.0,
) -> np.ndarray:
    """Per-entry scores in [0, 1] before the softmax (see the module docstring)."""
    d = np.array([e.divergence for e in entries], dtype=np.float64)
    d = np.nan_to_num(d, nan=float(np.nanmin(d)) if np.isfinite(d).any() else 0.0)
    w = divergence_weight * minmax(d)
    if criterion_weight:
        w = w + criterion_weight * np.array([e.criterion or 0.0 for e in entries], dtype=np.float64)
    if diversity_weight:
        if any(e.diversity is None for e in entries):
            raise ValueError(
                "diversity_weight > 0 needs a diversity score on every entry "
                "(call Bank.update_diversity after embedding)"
            )
        w = w + diversity_weight * minmax(np.array([e.diversity for e in entries], dtype=np.float64))
    return minmax(w)


def weighted_subsample(
    entries: Sequence[BankEntry],
    n: int,
    temperature: float,
    rng: np.random.Generator,
    prefer: str = "high",
    divergence_weight: float = 1.0,
    diversity_weight: float = 0.0,
    criterion_weight: float = 0.0,
) -> list[BankEntry]:
    """Draw ``min(n, len(entries))`` entries without replacement, biased by the softmax of their scores."""
    if temperature <= 0:
        raise ValueError(f"subsample temperature must be > 0, got {temperature}")
    if not entries:
        return []
    w = subsample_weights(entries, divergence_weight, diversity_weight, criterion_weight)
    logits = (w if prefer == "high" else -w) / temperature
    p = np.exp(logits - logits.max())
    p /= p.sum()
    k = min(n, len(entries))
    idx = rng.choice(len(entries), size=k, replace=False, p=p)
    picked = [entries[i] for i in idx]
    return sorted(picked, key=lambda e: -e.divergence if math.isfinite(e.divergence) else math.inf)


def stats(values: Sequence[float]) -> dict[str, float]:
    """mean, std, min, max of the finite values (NaN when there are none)."""
    v = np.array([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan}
    return {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "max": float(v.max())}


class Bank:
    """The growing set of scored prompts of one repeat; keeps diversity scores current."""

    def __init__(self) -> None:
        self.entries: list[BankEntry] = []
        self._seen: set[str] = set()

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, prompt: str) -> bool:
        return normalise(prompt) in self._seen

    def add(self, entries: Sequence[BankEntry]) -> None:
        for e in entries:
            self._seen.add(normalise(e.prompt))
            self.entries.append(e)

    def update_diversity(self) -> None:
        """Recompute every entry's diversity against the whole bank (it changes as the bank grows)."""
        if any(e.embedding is None for e in self.entries):
            raise ValueError("every bank entry needs an embedding to compute diversity")
        h = diversity_scores(np.stack([e.embedding for e in self.entries])) if self.entries else []
        for e, v in zip(self.entries, h):
            e.diversity = float(v)

    def ranked(self, k: int | None = None) -> list[BankEntry]:
        """Entries by divergence, highest first."""
        r = sorted(self.entries, key=lambda e: -e.divergence if math.isfinite(e.divergence) else math.inf)
        return r if k is None else r[:k]


def normalise(prompt: str) -> str:
    """The dedup key of a prompt: case and whitespace do not make a prompt new."""
    return " ".join(prompt.lower().split())
