"""Topic relevance: how much each source-run example is about each user topic, and a summary per topic.

Two raters, both giving a relevance in [0, 1] per (example, topic):

- ``embedding``: cosine similarity of MiniLM embeddings of the topic and of the example's prompt and
  continuation (negative similarities count as 0);
- ``analyst``: the analyst rates each example 0-10 per topic (``prompts/topics.txt``) and writes one
  sentence per topic.

The summary of a topic says how many examples are on it (relevance >= ``relevant_at``), the mean
divergence of those against the rest, and the Spearman correlation of relevance with divergence, so a
reviewer sees at a glance whether the models diverge more on that topic.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from forewarn.analyze.analyst import Analyst, parse_topic_ratings
from forewarn.analyze.config import TopicConfig
from forewarn.analyze.source import Example


def example_text(e: Example) -> str:
    return f"{e.prompt} {e.response}".strip()


def rate_by_embedding(examples: list[Example], topics: list[str], embedder: Any) -> np.ndarray:
    """(examples x topics) relevance: cosine similarity of L2-normalised embeddings, clipped at 0."""
    ex = np.asarray(embedder.embed([example_text(e) for e in examples]), dtype=np.float64)
    tv = np.asarray(embedder.embed(list(topics)), dtype=np.float64)
    return np.clip(ex @ tv.T, 0.0, 1.0)


def rate_by_analyst(
    analyst: Analyst, examples: list[Example], topics: list[str]
) -> tuple[np.ndarray, dict[str, str]]:
    """(examples x topics) relevance from the analyst's 0-10 ratings, and its one-line summary per topic."""
    lines = [
        f"{i}. divergence {e.divergence:.3f} | prompt: {_one_line(e.prompt)} | continuation: "
        f"{_one_line(e.response)}"
        for i, e in enumerate(examples, 1)
    ]
    chat = analyst.prompts.chat(
        "topics", topics=", ".join(f'"{t}"' for t in topics), examples="\n".join(lines)
    )
    grid, summaries = analyst.ask(
        chat, lambda text: parse_topic_ratings(text, len(examples), topics), "topics"
    )
    return np.array(grid, dtype=np.float64), summaries


def summarise(
    examples: list[Example],
    topics: list[str],
    relevance: np.ndarray,
    cfg: TopicConfig,
    notes: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """One row per topic (see the module docstring); topics sorted by the divergence of their examples."""
    div = np.array([e.divergence for e in examples], dtype=np.float64)
    rows = []
    for j, topic in enumerate(topics):
        r = relevance[:, j]
        ok = np.isfinite(r)
        on = ok & (r >= cfg.relevant_at)
        rho = spearmanr(r[ok], div[ok]).statistic if ok.sum() > 2 and np.ptp(r[ok]) > 0 else math.nan
        order = np.argsort(-np.where(ok, r, -np.inf))[:3]
        rows.append(
            {
                "topic": topic,
                "method": cfg.method,
                "n_examples": int(ok.sum()),
                "n_relevant": int(on.sum()),
                "mean_relevance": _mean(r[ok]),
                "divergence_relevant": _mean(div[on]),
                "divergence_other": _mean(div[ok & ~on]),
                "spearman": float(rho),
                "top_examples": [examples[i].prompt for i in order if ok[i]],
                "note": (notes or {}).get(topic, ""),
            }
        )
    return sorted(
        rows, key=lambda x: -x["divergence_relevant"] if math.isfinite(x["divergence_relevant"]) else math.inf
    )


def _mean(x: np.ndarray) -> float:
    return float(np.mean(x)) if len(x) else math.nan


def _one_line(text: str, limit: int = 300) -> str:
    t = " ".join(str(text).split())
    return t if len(t) <= limit else t[: limit - 3] + "..."
