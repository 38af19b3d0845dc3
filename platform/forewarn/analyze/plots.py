"""Figures of an analysis: hypothesis effect sizes, test vs control divergences, topic divergences.

Each function returns a matplotlib figure (Agg backend); the report embeds them as inline PNG
(:func:`png_data_uri`) and the job logs the same figures to MLflow.
"""

from __future__ import annotations

import base64
import io
import math
from typing import Any

from forewarn.analyze.kb import KnowledgeBase, is_tested

STATUS_COLOURS = {"supported": "#2e7d32", "refuted": "#c62828", "proposed": "#9e9e9e"}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def short(text: str, n: int = 48) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def auc_figure(kb: KnowledgeBase, min_auc: float) -> Any:
    """A horizontal bar per tested hypothesis: its AUC, coloured by status, with the support threshold."""
    plt = _plt()
    tested = [f for f in kb.findings if math.isfinite(f.auc)]
    fig, ax = plt.subplots(figsize=(8, 0.5 * max(2, len(tested)) + 1.4))
    y = list(range(len(tested)))
    ax.barh(y, [f.auc for f in tested], color=[STATUS_COLOURS[f.status] for f in tested])
    ax.errorbar(
        [f.auc for f in tested],
        y,
        xerr=[[0] * len(tested), [max(0.0, f.auc_upper - f.auc) for f in tested]],
        fmt="none",
        ecolor="black",
        capsize=3,
        lw=1,
    )
    ax.set_yticks(y, [f"H{i + 1}: {short(f.hypothesis)}" for i, f in enumerate(tested)], fontsize=7)
    ax.axvline(0.5, color="grey", ls=":", lw=1, label="no effect")
    ax.axvline(min_auc, color="black", ls="--", lw=1, label=f"support threshold {min_auc}")
    ax.set_xlim(0, 1.02)
    ax.invert_yaxis()
    ax.set_xlabel("AUC = P(test prompt diverges more than control); whisker: upper bound", fontsize=8)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("hypotheses by effect size")
    fig.tight_layout()
    return fig


def arms_figure(kb: KnowledgeBase, divergence: str) -> Any:
    """Divergence of every experiment prompt, test vs control, one column pair per tested hypothesis."""
    plt = _plt()
    import numpy as np

    tested = [f for f in kb.findings if is_tested(f)]
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(tested) + 2), 4))
    rng = np.random.default_rng(0)
    for i, f in enumerate(tested):
        for k, (arm, colour) in enumerate((("test", "#d32f2f"), ("control", "#1976d2"))):
            vals = [v for v in kb.arm(f, arm) if math.isfinite(v)]
            x = i * 3 + k + rng.uniform(-0.25, 0.25, len(vals))
            ax.scatter(x, vals, s=14, color=colour, alpha=0.7, label=arm if i == 0 else None)
            if vals:
                ax.hlines(float(np.mean(vals)), i * 3 + k - 0.35, i * 3 + k + 0.35, color="black", lw=1.5)
    ax.set_xticks([i * 3 + 0.5 for i in range(len(tested))], [f"H{i + 1}" for i in range(len(tested))])
    ax.set_ylabel(divergence)
    ax.set_title("experiment prompts: test vs control (line = mean)")
    if tested:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def topics_figure(rows: list[dict], divergence: str) -> Any:
    """Mean divergence of the examples on each topic against the rest."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 0.55 * max(2, len(rows)) + 1.2))
    y = list(range(len(rows)))
    on = [r["divergence_relevant"] if math.isfinite(r["divergence_relevant"]) else 0.0 for r in rows]
    off = [r["divergence_other"] if math.isfinite(r["divergence_other"]) else 0.0 for r in rows]
    ax.barh([v - 0.2 for v in y], on, height=0.4, color="#d32f2f", label="examples on the topic")
    ax.barh([v + 0.2 for v in y], off, height=0.4, color="#90a4ae", label="other examples")
    ax.set_yticks(y, [f"{short(r['topic'], 30)} ({r['n_relevant']})" for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"mean {divergence}")
    ax.legend(fontsize=7)
    ax.set_title("divergence by topic")
    fig.tight_layout()
    return fig


def png_data_uri(fig: Any) -> str:
    """The figure as a ``data:image/png;base64,...`` URI (the report needs no files beside it)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
