"""Token view: continuations with each token coloured by its divergence, as HTML and in the terminal.

The HTML page is self-contained (inline CSS, no scripts, no network) so it opens anywhere and can be
logged to MLflow as an artifact; each token carries its value in a tooltip. The terminal rendering uses
rich background colours with the same scale. Both take decoded samples (``DecodedSample`` objects or
rows of ``samples.parquet`` as dicts), so the later analysis report can reuse them.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

Sample = Any  # DecodedSample or a mapping with the same fields


def _get(s: Sample, key: str, default: Any = None) -> Any:
    return s.get(key, default) if isinstance(s, Mapping) else getattr(s, key, default)


def by_divergence(samples: Sequence[Any]) -> list[Any]:
    """Samples by mean divergence, largest first (samples with no finite mean last)."""
    return sorted(
        samples,
        key=lambda s: (
            -_get(s, "divergence_mean", 0.0)
            if math.isfinite(_get(s, "divergence_mean", math.nan))
            else math.inf
        ),
    )


def colour_scale(samples: Sequence[Sample], quantile: float = 0.98) -> float:
    """The divergence mapped to full colour: a high quantile of all token values (robust to one outlier)."""
    vals = sorted(v for s in samples for v in _get(s, "token_divergences", []) if math.isfinite(v))
    if not vals:
        return 1.0
    return max(vals[min(len(vals) - 1, int(quantile * len(vals)))], 1e-6)


def _rgb(value: float, scale: float) -> tuple[int, int, int]:
    """White (no divergence) to red (at or above ``scale``); negative values (weighted log-ratios) to blue."""
    x = max(-1.0, min(1.0, value / scale)) if math.isfinite(value) else 0.0
    fade = int(round(255 * (1 - abs(x))))
    return (255, fade, fade) if x >= 0 else (fade, fade, 255)


def _token_html(tok: str, value: float, scale: float, prompt: bool) -> str:
    r, g, b = _rgb(value, scale)
    shown = html.escape(tok).replace("\n", "↵<br>") or "&#8203;"
    cls = "tok prompt" if prompt else "tok"
    return f'<span class="{cls}" style="background:rgb({r},{g},{b})" title="{value:.4f}">{shown}</span>'


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:70em}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}
.sample{border:1px solid #ddd;border-radius:6px;padding:.8em;margin:1em 0}
.meta{color:#555;font-size:.9em;margin-bottom:.4em}.prompt-text{font-weight:600;margin-bottom:.4em}
.tok{font-family:ui-monospace,monospace;white-space:pre-wrap;border-radius:2px}
.tok.prompt{opacity:.75;font-style:italic}
.legend span{display:inline-block;width:4em;text-align:center;font-family:monospace}
"""
TOKEN_CSS = _CSS  # the styles sample_html and legend_html need, for pages that embed them


def render_html(
    samples: Sequence[Sample],
    title: str = "forewarn: model divergence",
    divergence: str = "divergence",
    summary: Mapping[str, Any] | None = None,
    top: int | None = 50,
) -> str:
    """A self-contained HTML page of the ``top`` samples by mean divergence, tokens coloured by divergence."""
    ranked = by_divergence(samples)
    shown = ranked[:top] if top else ranked
    scale = colour_scale(shown)
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>",
        f"<p>Each generated token is coloured by its per-token {html.escape(divergence)} "
        f"(hover for the value); full red = {scale:.4g} or more.</p>",
    ]
    parts.append(legend_html(scale))
    if summary:
        rows = "".join(
            f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>"
            for k, v in summary.items()
            if not isinstance(v, (dict, list))
        )
        parts.append(f"<h2>Summary</h2><table>{rows}</table>")
    parts.append(f"<h2>Top {len(shown)} continuations by mean divergence</h2>")
    parts.extend(sample_html(s, scale, rank) for rank, s in enumerate(shown, 1))
    parts.append("</body></html>")
    return "\n".join(parts)


def sample_html(s: Sample, scale: float, rank: int, label: str = "") -> str:
    """One sample as an HTML card: a meta line, the prompt and its tokens coloured by divergence.

    Needs the page to carry :data:`TOKEN_CSS`; ``label`` is prefixed to the meta line (e.g. an arm name).
    """
    toks, vals = list(_get(s, "tokens", [])), list(_get(s, "token_divergences", []))
    n_prompt = int(_get(s, "n_prompt_tokens", 0) or 0)
    spans = "".join(_token_html(t, v, scale, i < n_prompt) for i, (t, v) in enumerate(zip(toks, vals)))
    meta = (
        f"{label}#{rank} · mean {_fmt(_get(s, 'divergence_mean'))} · max {_fmt(_get(s, 'divergence_max'))} · "
        f"ppl start {_fmt(_get(s, 'ppl_start'))} · ppl comparison {_fmt(_get(s, 'ppl_comparison'))}"
        f" · sample {_get(s, 'sample', 0)}"
    )
    return (
        f'<div class="sample"><div class="meta">{html.escape(meta)}</div>'
        f'<div class="prompt-text">{html.escape(str(_get(s, "prompt", "")))}</div>'
        f"<div>{spans}</div></div>"
    )


def legend_html(scale: float) -> str:
    """The colour legend paragraph: five swatches from 0 to ``scale``."""
    legend = "".join(
        f'<span style="background:rgb{_rgb(scale * f, scale)}">{scale * f:.3g}</span>'
        for f in (0, 0.25, 0.5, 0.75, 1.0)
    )
    return f'<p class="legend">scale: {legend}</p>'


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def token_text(s: Sample, scale: float) -> Text:
    """A rich Text of one sample's scored tokens with background colours."""
    out = Text()
    n_prompt = int(_get(s, "n_prompt_tokens", 0) or 0)
    for i, (tok, v) in enumerate(zip(_get(s, "tokens", []), _get(s, "token_divergences", []))):
        r, g, b = _rgb(v, scale)
        style = f"black on rgb({r},{g},{b})" + (" italic" if i < n_prompt else "")
        out.append(tok.replace("\n", "↵"), style=style)
    return out


def render_terminal(
    samples: Sequence[Sample], console: Console | None = None, top: int = 10, divergence: str = "divergence"
) -> None:
    """Print the ``top`` samples by mean divergence as a table with coloured tokens."""
    console = console or Console()
    ranked = by_divergence(samples)[:top]
    scale = colour_scale(ranked)
    table = Table(
        title=f"top {len(ranked)} continuations by mean {divergence} (full red = {scale:.3g})",
        show_lines=True,
    )
    table.add_column("#", justify="right")
    table.add_column("mean", justify="right")
    table.add_column("max", justify="right")
    table.add_column("prompt")
    table.add_column("continuation (tokens coloured by divergence)")
    for rank, s in enumerate(ranked, 1):
        table.add_row(
            str(rank),
            _fmt(float(_get(s, "divergence_mean"))),
            _fmt(float(_get(s, "divergence_max"))),
            str(_get(s, "prompt", "")),
            token_text(s, scale),
        )
    console.print(table)
