"""Config sections of the model-divergence capability: the contrastive decoder and the divergence finder.

Both are plain pydantic sections (``extra="forbid"``), used by the library classes directly and nested
in :class:`ContrastiveConfig`, the ``contrastive`` job's config (here, not in the job file, so the analysis
agent can read a contrastive run's config without importing the job). Options that would be silently
ignored in a mode (the original's defect: weights, gating and a top-p limit accepted but not applied when
sampling from one model) are rejected with the field name and the fix.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from forewarn.config import GenerationParams, JobConfig, ModelSpec, Resources, RoleConfig, Section


class DecoderConfig(Section):
    """How the two models decode and how their divergence is measured."""

    mode: Literal["score", "combine"] = Field(
        "score",
        description="score: sample from one model (sample_from) and score under both; "
        "combine: sample from w_s*p_start + w_c*p_comparison (true contrastive decoding)",
    )
    sample_from: Literal["start", "comparison"] = Field(
        "start", description="the sampling model in score mode"
    )
    start_weight: float = Field(1.0, description="w_s; (+1, -1) measures KL(P_start || P_comparison)")
    comparison_weight: float = Field(-1.0, description="w_c; (-1, +1) measures KL(P_comparison || P_start)")
    metric: Literal["kl", "logit_l1"] = "kl"
    distribution: Literal["auto", "start", "comparison", "combined"] = Field(
        "auto", description="expectation distribution of the kl metric; auto = the positively weighted model"
    )
    include_prompt: bool = Field(
        False, description="also score prompt tokens (default: generated tokens only)"
    )
    start_top_p: float | None = Field(
        None, gt=0.0, le=1.0, description="combine mode: keep only the starting model's top-p nucleus"
    )
    similarity_gating: float | None = Field(
        None, gt=0.0, description="combine mode: gating intensity g (off when null)"
    )
    max_new_tokens: int = Field(20, ge=1, description="generation length")
    min_new_tokens: int = Field(0, ge=0, description="the end token is blocked before this many tokens")
    generations_per_prompt: int = Field(
        1, ge=1, description="samples per prompt; a prompt's divergence is the mean over its samples"
    )
    temperature: float = Field(0.6, ge=0.0, description="0 means greedy")
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, description="0 disables top-k")
    batch_size: int = Field(
        8, ge=1, description="prompts per forward batch (times generations_per_prompt rows)"
    )
    max_prompt_tokens: int = Field(256, ge=1, description="prompts are left-truncated to this many tokens")
    seed: int | None = 0

    @model_validator(mode="after")
    def _check(self) -> "DecoderConfig":
        if self.start_weight == 0 and self.comparison_weight == 0:
            raise ValueError(
                "start_weight and comparison_weight are both 0: at least one must be non-zero "
                "(+1/-1 gives KL(P_start || P_comparison))"
            )
        if self.mode == "score":
            for name in ("start_top_p", "similarity_gating"):
                if getattr(self, name) is not None:
                    raise ValueError(
                        f"{name}={getattr(self, name)!r} only applies in mode 'combine'; "
                        "set mode: combine or remove it (score mode samples from one model)"
                    )
        if self.mode == "combine" and self.sample_from != "start":
            raise ValueError(
                "sample_from='comparison' only applies in mode 'score'; combine mode samples "
                "from the weighted combination of both models"
            )
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(
                f"min_new_tokens={self.min_new_tokens} exceeds max_new_tokens={self.max_new_tokens}"
            )
        return self


def _assistant_params() -> GenerationParams:
    return GenerationParams(max_new_tokens=500, temperature=1.0, top_p=0.95)


class FinderConfig(Section):
    """The assistant-guided search for prompts on which two models diverge."""

    n_cycles: int = Field(5, ge=1, description="cycles that produced at least one new prompt, per repeat")
    max_failed_cycles: int = Field(20, ge=0, description="cycles without a new prompt tolerated per repeat")
    repeats: int = Field(
        1,
        ge=1,
        description="independent restarts from the seeds; prompts seen in an earlier repeat are dropped",
    )
    subsample_size: int = Field(10, ge=1, description="bank entries shown to the assistant per request")
    subsample_temperature: float = Field(
        0.5, gt=0.0, description="softmax temperature of the biased subsample"
    )
    prefer: Literal["high", "low"] = Field(
        "high", description="bias the subsample to high (or low) divergence"
    )
    divergence_weight: float = Field(1.0, ge=0.0)
    diversity_weight: float = Field(
        0.0,
        ge=0.0,
        description="> 0 embeds prompts (MiniLM) and favours entries far from the rest of the bank",
    )
    criterion: str | None = Field(
        None,
        description="optional yes/no question asked of the assistant per "
        "(prompt, response), e.g. 'Does this touch on social bias?'",
    )
    criterion_weight: float = Field(1.0, ge=0.0, description="weight of the criterion in the subsample score")
    criterion_in_subsample: bool = Field(
        False, description="use the criterion score in the subsample weights"
    )
    require_criterion: bool = Field(False, description="drop new prompts whose criterion answer is not yes")
    show_divergences: Literal["scaled", "hidden", "random"] = Field(
        "scaled", description="scores shown in context: rescaled to [0, 10], hidden, or random (ablation)"
    )
    assistant_format: Literal["chat", "list"] = Field(
        "chat",
        description="chat: system+user messages from prompt_file, answer as JSON or a numbered list; "
        "list: a raw numbered list of bank prompts for a completion model to continue",
    )
    prompt_file: str | None = Field(
        None,
        description="JSON prompt file (system_start, system_loop, user_end, ...); null: the packaged default",
    )
    list_header: str = Field("Ask questions:", description="list format: the line above the numbered prompts")
    list_shots: int = Field(3, ge=1, description="list format: bank prompts shown per request")
    requests_per_cycle: int = Field(
        1, ge=1, description="assistant requests per cycle (each with its own subsample)"
    )
    assistant_params: GenerationParams = Field(default_factory=_assistant_params)
    embedder: str = Field("minilm", description="sentence-transformers folder or 'minilm'")
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> "FinderConfig":
        if self.require_criterion and not self.criterion:
            raise ValueError("require_criterion=true needs a criterion question (finder.criterion)")
        if self.criterion_in_subsample and not self.criterion:
            raise ValueError("criterion_in_subsample=true needs a criterion question (finder.criterion)")
        return self


def _role(path: str, **model: Any) -> RoleConfig:
    return RoleConfig(model=ModelSpec(path=path, **model), resources=Resources(num_cpus=1, batch_size=16))


class ContrastiveConfig(JobConfig):
    mode: Literal["decode", "find"] = Field("find", description="decode: score a prompt file; find: search")
    start: RoleConfig = Field(default_factory=lambda: _role("testbed:target"))
    comparison: RoleConfig = Field(default_factory=lambda: _role("testbed:patched_target"))
    scoring: Resources = Field(
        default_factory=lambda: Resources(num_cpus=1, replicas=1, batch_size=32),
        description="the role pool whose actors hold both models (loaded once per run) and decode",
    )
    decoder: DecoderConfig = Field(default_factory=DecoderConfig)
    prompts: str = Field(
        "testbed:reversegen_seeds",
        description="decode: the prompts; find: the seed prompts (JSONL/JSON/Parquet/.txt or testbed:<file>)",
    )
    limit: int | None = Field(None, ge=1, description="use only the first N prompts")
    assistant: RoleConfig | None = Field(
        default_factory=lambda: _role("testbed:proposer", use_chat_template=False),
        description="the model that proposes prompts (find mode); any backend: hf, vllm, openai",
    )
    finder: FinderConfig = Field(default_factory=FinderConfig)
    top_k: int = Field(20, ge=1, description="prompts listed in the summary")
    report_top: int = Field(50, ge=1, description="continuations shown in report.html")

    @model_validator(mode="after")
    def _check(self) -> "ContrastiveConfig":
        if self.mode == "find" and self.assistant is None:
            raise ValueError(
                "mode 'find' needs an assistant role (assistant.model.path), or use mode: decode"
            )
        return self
