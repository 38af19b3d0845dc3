"""Automated divergence analysis: an analyst model turns a contrastive run's divergences into tested
hypotheses, a knowledge base of findings and a self-contained HTML report.

Plain Python over objects (Ray only inside the experiment scorer):

    source = load_source("runs/contrastive", Path("out/source"))
    cfg, manifest = forewarn.contrastive.job.resolve_names(source.config)   # names -> local paths
    analyst = Analyst(load_generator(spec), AnalystConfig(), Budget(BudgetConfig()), PromptSet.load())
    kb = KnowledgeBase(run_id="demo")
    outcome = DivergenceAnalysis(analyst, ExperimentScorer(cfg, manifest), source, kb, AnalystConfig(),
                                 ExperimentConfig()).run()
"""

from forewarn.analyze.analyst import Analyst, Budget, PromptSet
from forewarn.analyze.config import AnalystConfig, BudgetConfig, ExperimentConfig, TopicConfig
from forewarn.analyze.kb import KnowledgeBase, evaluate
from forewarn.analyze.loop import DivergenceAnalysis, Outcome
from forewarn.analyze.source import ExperimentScorer, SourceRun, load_source

__all__ = [
    "Analyst",
    "AnalystConfig",
    "Budget",
    "BudgetConfig",
    "DivergenceAnalysis",
    "ExperimentConfig",
    "ExperimentScorer",
    "KnowledgeBase",
    "Outcome",
    "PromptSet",
    "SourceRun",
    "TopicConfig",
    "evaluate",
    "load_source",
]
