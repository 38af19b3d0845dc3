"""Config sections of the divergence analysis: the analyst loop and its budget, experiments, topics, report.

Plain pydantic sections (``extra="forbid"``) used by the library classes directly and nested in
:class:`forewarn.analyze.job.AnalyzeConfig`. Every bound is explicit: the loop stops at ``max_cycles``,
``budget.max_calls`` or ``budget.max_tokens``, whichever comes first, and says which.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from forewarn.config import GenerationParams, Section


def _analyst_params() -> GenerationParams:
    return GenerationParams(max_new_tokens=1500, temperature=0.7, top_p=1.0, seed=0)


class BudgetConfig(Section):
    """Hard limits on what the analyst may cost. Tokens are counted per call: request + reply (see
    :func:`forewarn.analyze.analyst.count_tokens`); a call that could overrun the rest is not made."""

    max_calls: int = Field(20, ge=1, description="analyst requests in all (parse retries included)")
    max_tokens: int = Field(200_000, ge=1, description="request + reply tokens in all")


class AnalystConfig(Section):
    """How the analyst is asked and how its answers are read."""

    max_cycles: int = Field(3, ge=1, description="propose -> experiment -> evaluate rounds")
    hypotheses_per_cycle: int = Field(3, ge=1, description="hypotheses kept from one answer (the first ones)")
    n_top_examples: int = Field(12, ge=1, description="most divergent prompts of the source run shown")
    n_low_examples: int = Field(6, ge=0, description="least divergent prompts shown for contrast")
    n_top_tokens: int = Field(3, ge=0, description="most divergent tokens listed per example")
    max_parse_retries: int = Field(2, ge=0, description="re-asks after a malformed answer, per request")
    max_failed_cycles: int = Field(
        2, ge=1, description="consecutive cycles without a usable answer before the analysis stops"
    )
    summarize: bool = Field(True, description="ask the analyst for a closing summary of the findings")
    prompts_dir: str | None = Field(
        None,
        description="folder with system.txt, propose.txt, repair.txt, "
        "topics.txt, conclude.txt; null: the packaged prompts",
    )
    params: GenerationParams = Field(default_factory=_analyst_params)


class ExperimentConfig(Section):
    """How a hypothesis is tested: its test prompts against its control prompts, by divergence.

    Effect size is the AUC = P(divergence of a test prompt > that of a control prompt) (ties count half),
    scale free in [0, 1] with 0.5 meaning no effect. ``supported``: one-sided Mann-Whitney p < alpha and
    AUC >= min_auc. ``refuted``: the one-sided (1 - alpha) bootstrap upper bound of the AUC is below
    min_auc, i.e. the data exclude an effect that large. Otherwise the hypothesis stays ``proposed``.
    """

    min_prompts: int = Field(4, ge=2, description="test and control prompts needed per arm")
    max_prompts: int = Field(16, ge=2, description="prompts per arm kept from an answer")
    min_auc: float = Field(0.75, gt=0.5, le=1.0)
    alpha: float = Field(0.05, gt=0.0, lt=0.5)
    n_bootstrap: int = Field(2000, ge=100)
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> ExperimentConfig:
        if self.max_prompts < self.min_prompts:
            raise ValueError(f"max_prompts={self.max_prompts} is below min_prompts={self.min_prompts}")
        return self


class TopicConfig(Section):
    """Optional user topics rated per example and summarised per topic."""

    topics: list[str] = Field(default_factory=list, description="e.g. ['social bias', 'safety refusals']")
    method: Literal["embedding", "analyst"] = Field(
        "embedding",
        description="embedding: MiniLM cosine similarity of topic and example; analyst: the "
        "analyst rates each example 0-10 per topic",
    )
    embedder: str = Field("minilm", description="sentence-transformers folder or 'minilm'")
    relevant_at: float = Field(
        0.3, ge=0.0, le=1.0, description="relevance at or above which an example counts as on the topic"
    )
    n_examples: int = Field(30, ge=1, description="source-run examples rated (highest divergence first)")
