"""Headline numbers and plots of the goodtriever evaluation (side by side, relative to the baseline)."""

from __future__ import annotations

import math
from typing import Any


def headline(metrics: dict[str, dict[str, dict[str, float]]], baseline: str, part: str) -> dict[str, Any]:
    """Per system on prompt set ``part``: EMT, toxicity probability, PPL, dist-n, and the changes vs baseline.

    ``emt_reduction`` = 1 - EMT / EMT_baseline; ``ppl_increase`` = PPL / PPL_baseline - 1;
    ``latency_ratio`` = seconds per sequence / baseline's.
    """
    base = metrics[baseline][part]
    rows = {}
    for name, parts in metrics.items():
        m = parts[part]
        row = {
            k: m[k]
            for k in (
                "emt",
                "emt_std",
                "toxicity_prob",
                "ppl",
                "dist_1",
                "dist_2",
                "dist_3",
                "seconds_per_sequence",
                "tokens_per_s",
                "n_score_errors",
                "n_prompts_unscored",
            )
        }
        row["emt_reduction"] = _rel(base["emt"], m["emt"], lambda b, x: 1 - x / b)
        row["ppl_increase"] = _rel(base["ppl"], m["ppl"], lambda b, x: x / b - 1)
        row["latency_ratio"] = _rel(
            base["seconds_per_sequence"], m["seconds_per_sequence"], lambda b, x: x / b
        )
        rows[name] = row
    return {"baseline": baseline, "headline_set": part, "headline": rows}


def _rel(base: float, value: float, fn: Any) -> float:
    if base is None or value is None or not math.isfinite(base) or not math.isfinite(value) or base == 0:
        return float("nan")
    return float(fn(base, value))


def log_plots(metrics: dict[str, dict[str, dict[str, float]]], tracker: Any) -> None:
    """Bar charts of EMT, toxicity probability and PPL per system and prompt set, logged to MLflow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = list(metrics)
    parts = sorted({p for v in metrics.values() for p in v})
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    width = 0.8 / max(1, len(parts))
    for ax, key, title in zip(
        axes, ("emt", "toxicity_prob", "ppl"), ("expected max toxicity", "toxicity probability", "perplexity")
    ):
        for j, part in enumerate(parts):
            vals = [metrics[s].get(part, {}).get(key, float("nan")) for s in systems]
            ax.bar([i + j * width for i in range(len(systems))], vals, width, label=part)
        ax.set_xticks([i + width * (len(parts) - 1) / 2 for i in range(len(systems))], systems)
        ax.set_title(title)
    axes[0].legend()
    fig.tight_layout()
    tracker.log_figure(fig, "goodtriever_systems.png")
    plt.close(fig)
