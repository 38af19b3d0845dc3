"""Plots of a divergence run, logged to MLflow: divergence per finder cycle and the divergence histogram."""

from __future__ import annotations

import math
from typing import Any


def log_plots(tracker: Any, entries: list, cycles: list[dict], divergence: str) -> None:
    """Log ``divergence_by_cycle.png`` (finder runs) and ``divergence_hist.png`` to the tracker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if cycles:
        fig, ax = plt.subplots(figsize=(6, 4))
        for repeat in sorted({c["repeat"] for c in cycles}):
            rows = [c for c in cycles if c["repeat"] == repeat]
            x = [c["cycle"] for c in rows]
            ax.plot(
                x, [c["top10_divergence_mean"] for c in rows], marker="o", label=f"top-10 mean (r{repeat})"
            )
            ax.plot(
                x,
                [c["new_divergence_mean"] for c in rows],
                marker=".",
                ls="--",
                label=f"new mean (r{repeat})",
            )
            ax.plot(x, [c["bank_divergence_mean"] for c in rows], ls=":", label=f"bank mean (r{repeat})")
        ax.set_xlabel("cycle")
        ax.set_ylabel(divergence)
        ax.set_title("divergence by finder cycle")
        ax.legend(fontsize=7)
        fig.tight_layout()
        tracker.log_figure(fig, "plots/divergence_by_cycle.png")
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    for source in sorted({e.source for e in entries}):
        vals = [e.divergence for e in entries if e.source == source and math.isfinite(e.divergence)]
        if vals:
            ax.hist(vals, bins=30, alpha=0.6, label=f"{source} ({len(vals)})")
    ax.set_xlabel(f"prompt divergence: {divergence}")
    ax.set_ylabel("prompts")
    ax.legend(fontsize=8)
    fig.tight_layout()
    tracker.log_figure(fig, "plots/divergence_hist.png")
    plt.close(fig)
