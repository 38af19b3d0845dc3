"""The ``analyze`` job: turn a contrastive run's divergences into tested hypotheses and an HTML report.

    forewarn analyze --run runs/contrastive                  # the source run's output dir ...
    forewarn analyze --run 3f2a...e9 --set analyst.model.path=gpt-4o   # ... or its MLflow run id
    python jobs/analyze.py --set source=runs/contrastive

Outputs in OUTPUT_DIR: ``findings.parquet`` / ``evidence.parquet`` / ``findings.json`` (the knowledge
base), ``topics.parquet`` (when topics are given), ``report.html``, ``summary.json``; the same go to
MLflow with the plots. A rerun in the same OUTPUT_DIR continues the knowledge base found there;
``continue_from`` starts from an earlier analysis's dir instead.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from forewarn.analyze.analyst import Analyst, Budget, PromptSet
from forewarn.analyze.config import AnalystConfig, BudgetConfig, ExperimentConfig, TopicConfig
from forewarn.analyze.kb import KnowledgeBase, is_tested
from forewarn.analyze.loop import DivergenceAnalysis
from forewarn.analyze.plots import arms_figure, auc_figure, topics_figure
from forewarn.analyze.report import render_report
from forewarn.analyze.source import ExperimentScorer, load_source
from forewarn.config import JobConfig, ModelSpec, Resources, RoleConfig
from forewarn.models import load_generator
from forewarn.models.embed import Embedder
from forewarn.names import resolve_model
from forewarn.pipeline.rundir import RunDir, write_text
from forewarn.records import TopicRelevanceRow, rows_to_table, stable_id
from forewarn.tracking import resolve_tracking_uri


def _analyst_role() -> RoleConfig:
    return RoleConfig(
        model=ModelSpec(
            backend="openai",
            path="gpt-4o-mini",
            base_url="https://api.openai.com/v1",
            api_key_env="OPENAI_API_KEY",
            max_concurrency=1,
            request_timeout_s=120.0,
        )
    )


class AnalyzeConfig(JobConfig):
    source: str = Field(
        "runs/contrastive", description="the contrastive run: its output dir or MLflow run id"
    )
    continue_from: str | None = Field(
        None, description="an earlier analysis output dir whose findings to extend"
    )
    analyst: RoleConfig = Field(default_factory=_analyst_role, description="the analyst model; any backend")
    scoring: Resources | None = Field(
        None, description="the decoder actor pool for experiments; null: the source run's scoring resources"
    )
    analysis: AnalystConfig = Field(default_factory=AnalystConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    experiment: ExperimentConfig = Field(default_factory=ExperimentConfig)
    topics: TopicConfig = Field(default_factory=TopicConfig)
    report_evidence: int = Field(3, ge=1, description="continuations per arm shown per hypothesis")
    report_examples: int = Field(8, ge=0, description="strongest source-run examples shown")


CONFIG = AnalyzeConfig


def run(cfg: AnalyzeConfig, rundir: RunDir, tracker: Any) -> dict:
    if rundir.is_done("analyze") and rundir.path("summary.json").is_file():
        return rundir.read_summary()  # finished in this dir: resume = nothing left to do
    run_id = tracker.run_id or rundir.root.name
    source = load_source(
        cfg.source, rundir.path("source"), tracker.tracking_uri or resolve_tracking_uri(cfg.tracking)
    )
    tracker.set_tags({"forewarn.source_run": source.mlflow_run_id or str(Path(cfg.source).resolve())})
    if rundir.path("findings.json").is_file():  # an interrupted run in this dir: go on to its cycle target
        kb = KnowledgeBase.load(rundir.root, run_id)
    else:
        kb = (
            KnowledgeBase.load(Path(cfg.continue_from), run_id)
            if cfg.continue_from
            else KnowledgeBase(run_id)
        )
        kb.cycles_target = kb.cycles_done + cfg.analysis.max_cycles
    cycles_before = kb.cycles_done
    spec = cfg.analyst.model
    if spec.backend != "openai":
        spec = spec.model_copy(update={"path": resolve_model(spec.path)})
    analyst = Analyst(
        load_generator(spec), cfg.analysis, Budget(cfg.budget), PromptSet.load(cfg.analysis.prompts_dir)
    )
    embedder = None
    if cfg.topics.topics and cfg.topics.method == "embedding":
        embedder = Embedder(cfg.topics.embedder)
    from forewarn.contrastive.job import resolve_names  # the source run's names -> local paths, here

    scorer = ExperimentScorer(*resolve_names(source.config), cfg.scoring)
    started = time.perf_counter()
    analysis = DivergenceAnalysis(
        analyst,
        scorer,
        source,
        kb,
        cfg.analysis,
        cfg.experiment,
        cfg.topics,
        embedder=embedder,
        tracker=tracker,
        checkpoint=lambda: kb.save(rundir.root),
    )
    try:
        outcome = analysis.run()
    finally:
        scorer.close()  # the scoring pool's actors (both models) live for the analysis only
    summary = _summary(
        cfg, kb, outcome, source, analyst, run_id, cycles_before, time.perf_counter() - started
    )
    summary["timing"] = {"roles": {"scoring": scorer.stats()}}
    _write(cfg, rundir, tracker, kb, outcome, source, analyst, summary)
    print(f"# forewarn analyze: {summary['stop_reason']}: {summary['message']}", flush=True)
    return summary


def _summary(
    cfg: AnalyzeConfig,
    kb: Any,
    outcome: Any,
    source: Any,
    analyst: Any,
    run_id: str,
    cycles_before: int,
    seconds: float,
) -> dict[str, Any]:
    counts = kb.counts()
    summary: dict[str, Any] = {
        "run_id": run_id,
        "source": source.ref,
        "divergence": source.divergence_name,
        "stop_reason": outcome.stop_reason,
        "message": outcome.message,
        "cycles_done": kb.cycles_done,
        "cycles_this_run": kb.cycles_done - cycles_before,
        "n_findings": len(kb.findings),
        "n_supported": counts["supported"],
        "n_refuted": counts["refuted"],
        "n_proposed": counts["proposed"],
        "n_evidence": len(kb.evidence),
        "analyst_calls": analyst.budget.calls,
        "analyst_tokens": analyst.budget.tokens,
        "n_malformed": len(analyst.malformed),
        "seconds": round(seconds, 3),
        "findings": [
            {
                "id": f.id,
                "hypothesis": f.hypothesis,
                "status": f.status,
                "auc": _num(f.auc),
                "p_value": _num(f.p_value),
                "planted_topic": f.planted_topic,
            }
            for f in kb.findings
        ],
    }
    if (
        any(f.planted_topic is not None for f in kb.findings)
        or source.summary.get("top10_planted") is not None
    ):
        summary["supported_planted"] = sum(
            f.status == "supported" and f.planted_topic is not None for f in kb.findings
        )
        summary["refuted_unplanted"] = sum(
            f.status == "refuted" and f.planted_topic is None for f in kb.findings
        )
    if outcome.topics:
        summary["topics"] = [
            {k: (_num(v) if isinstance(v, float) else v) for k, v in t.items()} for t in outcome.topics
        ]
    if outcome.analyst_summary:
        summary["analyst_summary"] = outcome.analyst_summary
    if outcome.notes:
        summary["notes"] = outcome.notes
    return summary


def _num(v: float) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


def _write(
    cfg: AnalyzeConfig,
    rundir: RunDir,
    tracker: Any,
    kb: Any,
    outcome: Any,
    source: Any,
    analyst: Any,
    summary: dict,
) -> None:
    import matplotlib.pyplot as plt

    kb.save(
        rundir.root,
        extra={
            "stop_reason": outcome.stop_reason,
            "message": outcome.message,
            "malformed": analyst.malformed,
            "analyst_summary": outcome.analyst_summary,
            "notes": outcome.notes,
        },
    )
    if outcome.topics:
        rows = [
            TopicRelevanceRow(
                id=stable_id(kb.run_id, t, e.prompt),
                run_id=kb.run_id,
                iteration=kb.cycles_done,
                topic=t,
                prompt=e.prompt,
                divergence=e.divergence,
                relevance=float(outcome.topic_relevance[i, j]),
                method=cfg.topics.method,
            )
            for i, e in enumerate(outcome.topic_examples)
            for j, t in enumerate(cfg.topics.topics)
        ]
        rundir.write_table("topics", rows_to_table(TopicRelevanceRow, rows))
        tracker.log_artifact(rundir.path("topics.parquet"), "tables")
    figures: dict[str, tuple[str, Any]] = {}  # caption -> (MLflow name, figure)
    if any(is_tested(f) for f in kb.findings):
        figures["hypotheses by effect size (AUC)"] = (
            "plots/hypotheses_auc.png",
            auc_figure(kb, cfg.experiment.min_auc),
        )
        figures["experiment divergences: test vs control"] = (
            "plots/arms.png",
            arms_figure(kb, source.divergence_name),
        )
    if outcome.topics:
        figures["divergence by topic"] = (
            "plots/topics.png",
            topics_figure(outcome.topics, source.divergence_name),
        )
    html = render_report(
        kb,
        outcome,
        source,
        summary,
        {k: f for k, (_, f) in figures.items()},
        analyst.malformed,
        cfg.report_evidence,
        cfg.report_examples,
    )
    write_text(rundir.path("report.html"), html)
    for name, fig in figures.values():
        tracker.log_figure(fig, name)
        plt.close(fig)
    tracker.log_metrics(
        {
            k: v
            for k, v in summary.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        }
    )
    for name in ("findings", "evidence"):
        tracker.log_artifact(rundir.path(f"{name}.parquet"), "tables")
    tracker.log_artifact(rundir.path("findings.json"))
    tracker.log_artifact(rundir.path("report.html"), "report")
    rundir.mark_done("analyze", cycles_done=kb.cycles_done)
