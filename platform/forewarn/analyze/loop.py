"""The analysis loop: the analyst reads divergences, proposes hypotheses, designs experiments; we run them.

One cycle:

1. the analyst sees the most and least divergent prompts of the source run (with continuations and their
   most divergent tokens) and the findings so far, and answers with hypotheses, each with test and control
   prompts (``prompts/propose.txt``);
2. every new prompt of the cycle is scored by the contrastive decoder with the source run's models and
   settings, in one batch on a role pool (:class:`forewarn.analyze.source.ExperimentScorer`);
3. each hypothesis is (re-)evaluated on all its evidence and becomes supported, refuted or stays proposed
   (:mod:`forewarn.analyze.kb`); the knowledge base is checkpointed.

The loop is bounded by ``max_cycles``, the analyst budget and ``max_failed_cycles`` consecutive cycles
without a usable answer. Whatever ends it (budget, an unavailable endpoint, malformed answers), it returns
normally with the findings so far and a ``stop_reason`` + ``message``; then come the optional topic
ratings and the analyst's closing summary, each skipped with a note when the loop stopped early (MiniLM
topic ratings need no analyst and always run).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from forewarn.analyze.analyst import (
    Analyst,
    AnalystStop,
    MalformedAnswer,
    Proposal,
    parse_hypotheses,
    parse_summary,
)
from forewarn.analyze.config import AnalystConfig, ExperimentConfig, TopicConfig
from forewarn.analyze.kb import KnowledgeBase, is_tested
from forewarn.analyze.source import Example, SourceRun
from forewarn.analyze.topics import _one_line, rate_by_analyst, rate_by_embedding, summarise
from forewarn.contrastive.bank import normalise
from forewarn.records import EvidenceRow, FindingRow, evidence_of, stable_id
from forewarn.tracking import NullTracker

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """How the analysis ended and what it produced besides the knowledge base."""

    stop_reason: str  # completed | budget | analyst_error | malformed
    message: str
    topics: list[dict[str, Any]] = field(default_factory=list)
    topic_relevance: np.ndarray | None = None  # (topic examples x topics)
    topic_examples: list[Example] = field(default_factory=list)
    analyst_summary: str | None = None
    notes: list[str] = field(default_factory=list)


def example_lines(examples: list[Example]) -> str:
    lines = []
    for e in examples:
        toks = ", ".join(f"{t.strip()!r} {v:.2f}" for t, v in e.top_tokens)
        lines.append(
            f"- divergence {e.divergence:.3f} | prompt: {_one_line(e.prompt)} | continuation: "
            f"{_one_line(e.response)}" + (f" | top tokens: {toks}" if toks else "")
        )
    return "\n".join(lines) or "(none)"


def finding_lines(findings: list[FindingRow]) -> str:
    lines = []
    for f in findings:
        stats = (
            f"AUC {f.auc:.2f}, p = {f.p_value:.2g}, test mean {f.mean_test:.3f} vs control "
            f"{f.mean_control:.3f}, {f.n_test}+{f.n_control} prompts"
            if math.isfinite(f.auc)
            else f.note
        )
        lines.append(f"- [{f.status}] {f.hypothesis} ({stats})")
    return "\n".join(lines) or "(nothing yet: this is the first cycle)"


class DivergenceAnalysis:
    """Runs the loop of the module docstring over one source run and one knowledge base."""

    def __init__(
        self,
        analyst: Analyst,
        scorer: Any,
        source: SourceRun,
        kb: KnowledgeBase,
        cfg: AnalystConfig,
        experiment: ExperimentConfig,
        topics: TopicConfig | None = None,
        embedder: Any | None = None,
        tracker: Any | None = None,
        progress: bool = True,
        checkpoint: Callable[[], None] | None = None,
    ):
        self.analyst, self.scorer, self.source, self.kb = analyst, scorer, source, kb
        self.cfg, self.experiment, self.topics = cfg, experiment, topics or TopicConfig()
        if self.topics.topics and self.topics.method == "embedding" and embedder is None:
            raise ValueError("topics.method='embedding' needs an embedder (forewarn.models.embed.Embedder)")
        self.embedder = embedder
        self.tracker = tracker or NullTracker()
        self.progress = progress
        self.checkpoint = checkpoint or (lambda: None)

    def run(self) -> Outcome:
        c = self.cfg
        top, low = self.source.examples(c.n_top_examples, c.n_low_examples, c.n_top_tokens)
        first = self.kb.cycles_done + 1
        n_cycles = (
            max(0, self.kb.cycles_target - self.kb.cycles_done) if self.kb.cycles_target else c.max_cycles
        )
        outcome = Outcome("completed", f"completed {n_cycles} cycle(s)")
        failed = 0
        columns = [TextColumn("analysis cycles"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
        with Progress(*columns, disable=not self.progress) as bar:
            task = bar.add_task("cycles", total=n_cycles)
            for cycle in range(first, first + n_cycles):
                n_bad = len(self.analyst.malformed)
                try:
                    proposals = self._propose(top, low)
                except AnalystStop as e:
                    outcome = Outcome(e.reason, f"stopped in cycle {cycle}: {e}")
                    self.kb.log.append({"cycle": cycle, "event": e.reason, "message": str(e)})
                    break
                except MalformedAnswer as e:
                    failed += 1
                    self.kb.log.append({"cycle": cycle, "event": "malformed", "message": str(e)})
                    log.warning("cycle %d: %s", cycle, e)
                    if failed >= c.max_failed_cycles:
                        outcome = Outcome(
                            "malformed",
                            f"stopped in cycle {cycle}: the analyst gave no usable "
                            f"answer in {failed} cycle(s) in a row ({e})",
                        )
                        break
                    bar.advance(task)
                    continue
                failed = 0
                touched = self._experiment(proposals, cycle)
                self.kb.cycles_done = cycle
                self.kb.log.append(
                    {
                        "cycle": cycle,
                        "event": "tested",
                        "n_malformed": len(self.analyst.malformed) - n_bad,
                        "findings": [{"id": f.id, "status": f.status} for f in touched],
                    }
                )
                self.tracker.log_metrics(
                    {
                        **{f"n_{k}": v for k, v in self.kb.counts().items()},
                        "analyst_calls": self.analyst.budget.calls,
                        "analyst_tokens": self.analyst.budget.tokens,
                    },
                    step=cycle,
                )
                self.checkpoint()
                bar.advance(task)
        self._topics(outcome)
        self._conclude(outcome)
        return outcome

    # ------------------------------------------------------------ steps

    def _propose(self, top: list[Example], low: list[Example]) -> list[Proposal]:
        e, c = self.experiment, self.cfg
        d = self.source.config
        chat = self.analyst.prompts.chat(
            "propose",
            start_model=d.start.model.path,
            divergence=self.source.divergence_name,
            n_top=len(top),
            top_examples=example_lines(top),
            n_low=len(low),
            low_examples=example_lines(low),
            findings=finding_lines(self.kb.findings),
            k=c.hypotheses_per_cycle,
            min_prompts=e.min_prompts,
            max_prompts=e.max_prompts,
        )
        return self.analyst.ask(
            chat, lambda text: parse_hypotheses(text, c.hypotheses_per_cycle, e), "propose"
        )

    def _experiment(self, proposals: list[Proposal], cycle: int) -> list[FindingRow]:
        """Score the new prompts of every proposal in one batch; add evidence; re-evaluate the findings."""
        plan: list[tuple[FindingRow, str, str]] = []
        for p in proposals:
            f = self.kb.add(p.hypothesis, p.topic, p.rationale, cycle)
            f.planted_topic = self.scorer.planted_topic(f"{f.hypothesis} {f.topic}")
            for arm, prompts in (("test", p.test_prompts), ("control", p.control_prompts)):
                known = {
                    normalise(ev.prompt) for ev in self.kb.evidence if ev.finding_id == f.id and ev.arm == arm
                }
                plan += [(f, arm, q) for q in prompts if normalise(q) not in known]
        unique = list(dict.fromkeys(q for _, _, q in plan))
        scored = dict(zip(unique, self.scorer(unique))) if unique else {}
        for f, arm, q in plan:
            div, s = scored[q]
            if s is None:
                log.warning("no sample came back for %r; left out of the evidence", q)
                continue
            self.kb.evidence.append(
                EvidenceRow(
                    **evidence_of(s),
                    id=stable_id(self.kb.run_id, f.id, arm, q),
                    run_id=self.kb.run_id,
                    iteration=cycle,
                    repeat=0,
                    prompt_id=stable_id(self.kb.run_id, q),
                    finding_id=f.id,
                    arm=arm,
                    divergence=div,
                    planted_topic=self.scorer.planted_topic(q),
                )
            )
        touched = list({id(f): f for f, _, _ in plan}.values()) or [
            self.kb.find(p.hypothesis) for p in proposals
        ]
        for f in touched:
            self.kb.retest(f, cycle, self.experiment)
            log.info("cycle %d: [%s] %s (%s)", cycle, f.status, f.hypothesis, f.note)
        return touched

    def _topics(self, outcome: Outcome) -> None:
        t = self.topics
        if not t.topics:
            return
        examples, _ = self.source.examples(t.n_examples, 0, 0)
        notes: dict[str, str] = {}
        if t.method == "embedding":
            relevance = rate_by_embedding(examples, t.topics, self.embedder)
        elif outcome.stop_reason != "completed":
            outcome.notes.append(f"topic ratings skipped: the analysis stopped early ({outcome.stop_reason})")
            return
        else:
            try:
                relevance, notes = rate_by_analyst(self.analyst, examples, t.topics)
            except (AnalystStop, MalformedAnswer) as e:
                outcome.notes.append(f"topic ratings skipped: {e}")
                return
        outcome.topics = summarise(examples, t.topics, relevance, t, notes)
        outcome.topic_relevance, outcome.topic_examples = relevance, examples

    def _conclude(self, outcome: Outcome) -> None:
        if not self.cfg.summarize or not any(is_tested(f) for f in self.kb.findings):
            return
        if outcome.stop_reason != "completed":
            outcome.notes.append(
                f"closing summary skipped: the analysis stopped early ({outcome.stop_reason})"
            )
            return
        chat = self.analyst.prompts.chat(
            "conclude", divergence=self.source.divergence_name, findings=finding_lines(self.kb.findings)
        )
        try:
            outcome.analyst_summary = self.analyst.ask(chat, parse_summary, "conclude")
        except (AnalystStop, MalformedAnswer) as e:
            outcome.notes.append(f"closing summary skipped: {e}")
