"""The analysis report: one self-contained HTML page a reviewer opens in any browser, offline.

It holds, in order: how the analysis ended, the headline counts, the analyst's closing summary, the
hypotheses (status, effect size, p-value, means) with filter buttons, per hypothesis its rationale and its
strongest test and control continuations with tokens coloured by divergence, the plots (inline PNG), the
per-topic summary, the strongest examples of the source run, and the analysis log. CSS and the one small
script are inline; nothing is fetched. The script also counts script errors into ``#js-status`` so a
headless browser check can read them from the DOM.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from typing import Any

from forewarn.analyze.kb import KnowledgeBase
from forewarn.analyze.plots import png_data_uri
from forewarn.contrastive.view import TOKEN_CSS, colour_scale, legend_html, sample_html
from forewarn.records import FindingRow

_CSS = (
    TOKEN_CSS
    + """
.badge{display:inline-block;padding:.1em .5em;border-radius:1em;color:#fff;font-size:.85em;font-weight:600}
.badge.supported{background:#2e7d32}.badge.refuted{background:#c62828}.badge.proposed{background:#757575}
.banner{padding:.7em 1em;border-radius:6px;margin:1em 0}.banner.ok{background:#e8f5e9}
.banner.stopped{background:#fff3e0;border:1px solid #ffb74d}
.finding{border:1px solid #ccc;border-radius:8px;padding:.6em 1em;margin:1em 0}
.finding summary{cursor:pointer;font-weight:600}.arms{display:grid;grid-template-columns:1fr 1fr;gap:1em}
.filters button{margin-right:.4em}img.plot{max-width:100%;border:1px solid #eee;margin:.5em 0}
.note{color:#555}
"""
)

_HEAD_SCRIPT = """<script>
window.forewarnErrors = [];
window.addEventListener('error', function (e) { window.forewarnErrors.push(String(e.message || e)); });
</script>"""

_TAIL_SCRIPT = """<script>
(function () {
  document.querySelectorAll('.filters button').forEach(function (b) {
    b.addEventListener('click', function () {
      var want = b.getAttribute('data-filter');
      document.querySelectorAll('[data-status]').forEach(function (el) {
        el.style.display = (want === 'all' || el.getAttribute('data-status') === want) ? '' : 'none';
      });
    });
  });
  window.addEventListener('load', function () {
    var el = document.getElementById('js-status');
    el.textContent = 'page script ran; script errors: ' + window.forewarnErrors.length;
    el.setAttribute('data-errors', String(window.forewarnErrors.length));
  });
})();
</script>"""


_SHOWN_ELSEWHERE = {"message", "analyst_summary"}


def _e(x: Any) -> str:
    return html.escape(str(x))


def _f(v: Any, digits: str = ".3g") -> str:
    if isinstance(v, float):
        return "–" if not math.isfinite(v) else format(v, digits)
    return "–" if v is None else str(v)


def _table(rows: Mapping[str, Any]) -> str:
    return (
        "<table>"
        + "".join(f"<tr><th>{_e(k)}</th><td>{_e(_f(v))}</td></tr>" for k, v in rows.items())
        + "</table>"
    )


def render_report(
    kb: KnowledgeBase,
    outcome: Any,
    source: Any,
    summary: Mapping[str, Any],
    figures: Mapping[str, Any],
    malformed: list[dict] | None = None,
    n_evidence: int = 3,
    n_examples: int = 8,
) -> str:
    """The page (see the module docstring). ``figures`` maps captions to matplotlib figures; ``malformed``
    lists the analyst answers that could not be used."""
    examples, _ = source.examples(n_examples, 0, 0)
    example_samples = [e.sample for e in examples if e.sample]
    shown = [ev.__dict__ for ev in kb.evidence] + example_samples
    scale = colour_scale(shown)
    title = f"forewarn analysis: {summary.get('run_id', kb.run_id)}"
    stopped = outcome.stop_reason != "completed"
    p = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>",
        f"<style>{_CSS}</style>{_HEAD_SCRIPT}</head><body>",
        f"<h1>{_e(title)}</h1>",
        f"<p>Source: contrastive run <code>{_e(source.ref)}</code> · divergence: {_e(source.divergence_name)}</p>",
        (
            f"<div class='banner {'stopped' if stopped else 'ok'}' id='stop'><b>"
            f"{'Analysis stopped early' if stopped else 'Analysis completed'}</b> ({_e(outcome.stop_reason)}): "
            f"{_e(outcome.message)}</div>"
        ),
    ]
    p.append(
        "<h2>Summary</h2>"
        + _table(
            {
                k: v
                for k, v in summary.items()
                if not isinstance(v, (list, dict)) and k not in _SHOWN_ELSEWHERE
            }
        )
    )
    if outcome.analyst_summary:
        p.append(f"<h2>Analyst's summary</h2><p id='analyst-summary'>{_e(outcome.analyst_summary)}</p>")
    p.append(_hypotheses_table(kb))
    p.append("<h2>Evidence</h2>" + legend_html(scale))
    p.append(
        "<p class='note'>Experiment prompts were scored by the contrastive decoder with the source run's "
        "models and settings; tokens are coloured by their per-token divergence (hover for the value).</p>"
    )
    for i, f in enumerate(kb.findings, 1):
        p.append(_finding_card(kb, f, i, scale, n_evidence))
    if figures:
        p.append(
            "<h2>Plots</h2>"
            + "".join(
                f"<figure><img class='plot' alt='{_e(cap)}' src='{png_data_uri(fig)}'>"
                f"<figcaption>{_e(cap)}</figcaption></figure>"
                for cap, fig in figures.items()
            )
        )
    if outcome.topics:
        p.append(_topics_table(outcome.topics))
    p.append("<h2>Strongest examples of the source run</h2>")
    p.extend(sample_html(s, scale, r, "source ") for r, s in enumerate(example_samples, 1))
    p.append(_log(kb, outcome, malformed or []))
    p.append("<p id='js-status' class='note'>page script did not run</p>")
    p.append(_TAIL_SCRIPT + "</body></html>")
    return "\n".join(p)


def _hypotheses_table(kb: KnowledgeBase) -> str:
    rows = []
    for i, f in enumerate(kb.findings, 1):
        rows.append(
            f"<tr data-status='{f.status}'><td>H{i}</td><td><span class='badge {f.status}'>{f.status}</span>"
            f"</td><td>{_e(f.hypothesis)}</td><td>{_e(f.topic)}</td><td>{_f(f.auc, '.2f')}</td>"
            f"<td>{_f(f.p_value, '.2g')}</td><td>{_f(f.mean_test)}</td><td>{_f(f.mean_control)}</td>"
            f"<td>{f.n_test}+{f.n_control}</td><td class='note'>{_e(f.note)}</td></tr>"
        )
    buttons = "".join(
        f"<button type='button' data-filter='{s}'>{s}</button>"
        for s in ("all", "supported", "refuted", "proposed")
    )
    return (
        f"<h2>Hypotheses</h2><p class='filters'>show: {buttons}</p><table id='hypotheses'><tr><th>#</th>"
        "<th>status</th><th>hypothesis</th><th>topic</th><th>AUC</th><th>p</th><th>test mean</th>"
        "<th>control mean</th><th>prompts</th><th>verdict</th></tr>" + "".join(rows) + "</table>"
    )


def _finding_card(kb: KnowledgeBase, f: FindingRow, i: int, scale: float, n: int) -> str:
    arms = []
    for arm in ("test", "control"):
        ev = sorted(
            (e for e in kb.evidence if e.finding_id == f.id and e.arm == arm),
            key=lambda e: -e.divergence if math.isfinite(e.divergence) else math.inf,
        )[:n]
        cards = "".join(sample_html(e.__dict__, scale, r, f"{arm} ") for r, e in enumerate(ev, 1))
        arms.append(f"<div><h4>{arm} prompts (highest divergence)</h4>{cards or '<p>none scored</p>'}</div>")
    extra = f" · planted topic: {_e(f.planted_topic)}" if f.planted_topic else ""
    return (
        f"<details class='finding' data-status='{f.status}' {'open' if f.status == 'supported' else ''}>"
        f"<summary>H{i} <span class='badge {f.status}'>{f.status}</span> {_e(f.hypothesis)}</summary>"
        f"<p class='note'>topic: {_e(f.topic or '–')} · proposed in cycle {f.cycle_proposed}{extra}</p>"
        f"<p>{_e(f.rationale)}</p><div class='arms'>{''.join(arms)}</div></details>"
    )


def _topics_table(rows: list[dict]) -> str:
    body = "".join(
        f"<tr><td>{_e(r['topic'])}</td><td>{r['n_relevant']}/{r['n_examples']}</td><td>{_f(r['mean_relevance'])}</td>"
        f"<td>{_f(r['divergence_relevant'])}</td><td>{_f(r['divergence_other'])}</td><td>{_f(r['spearman'], '.2f')}"
        f"</td><td>{_e('; '.join(r['top_examples']))}</td><td>{_e(r['note'])}</td></tr>"
        for r in rows
    )
    return (
        f"<h2>Topics ({_e(rows[0]['method'])})</h2><table id='topics'><tr><th>topic</th><th>on topic</th>"
        "<th>mean relevance</th><th>divergence on topic</th><th>divergence other</th><th>Spearman</th>"
        "<th>most relevant examples</th><th>note</th></tr>" + body + "</table>"
    )


def _log(kb: KnowledgeBase, outcome: Any, malformed: list[dict]) -> str:
    number = {f.id: f"H{i}" for i, f in enumerate(kb.findings, 1)}
    items = [
        f"<li>cycle {_e(x.get('cycle'))}: {_e(x.get('event'))} {_e(x.get('message', ''))}"
        + _e(", ".join(f"{number.get(f['id'], f['id'])} {f['status']}" for f in x.get("findings", [])))
        + "</li>"
        for x in kb.log
    ]
    items += [f"<li>{_e(n)}</li>" for n in outcome.notes]
    items += [f"<li>malformed answer to {_e(m['request'])}: {_e(m['reason'])}</li>" for m in malformed]
    return "<h2>Analysis log</h2><ul>" + "".join(items) + "</ul>"
