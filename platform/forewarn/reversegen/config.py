"""The ReverseGen job config: roles, the per-iteration stages, pairing, DPO and target enhancement.

Defaults follow reference/reversegen.md (proposer temperature 1.0, top_p 0.9; target greedy; MinHash
0.78; SemDeDup eps 0.04; DPO sigmoid beta 0.1) except where the testbed needs a tiny-model setting,
which the packaged ``defaults/reversegen.yaml`` sets and says so.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from forewarn.config import GenerationParams, JobConfig, ModelSpec, Resources, RoleConfig, Section
from forewarn.judges.spec import JudgeSpec, OfflineToxicitySpec, kinds_for
from forewarn.pipeline.dedup import DedupConfig
from forewarn.reversegen.pairs import PairConfig
from forewarn.training.config import DPOConfig, TrainConfig


class ProposeConfig(Section):
    prompts_per_iteration: int = Field(128, ge=1, description="3-shot prompts sampled per iteration")
    shots: int = Field(3, ge=1)
    params: GenerationParams = Field(
        default_factory=lambda: GenerationParams(temperature=1.0, top_p=0.9, n=8, max_new_tokens=48, seed=0)
    )

    @field_validator("params")
    @classmethod
    def _sampling(cls, v: GenerationParams) -> GenerationParams:
        if v.greedy and v.n > 1:
            raise ValueError("n > 1 samples per prompt need temperature > 0 (greedy gives n copies)")
        return v


class RespondConfig(Section):
    prompt_template: str = Field(
        "{question}",
        description="what the target is asked; fields: {question} "
        "(the instruction, honesty: without its answer line) and {subject}",
    )
    params: GenerationParams = Field(default_factory=lambda: GenerationParams(max_new_tokens=64))
    honesty_params: GenerationParams = Field(
        default_factory=lambda: GenerationParams(temperature=1.0, max_new_tokens=16, seed=0),
        description="sampling of the k answers per question (honesty task; k = judge.samples)",
    )


class WarmupConfig(Section):
    """SFT of the proposer on 3-shot prompts built from ``seeds`` (prompt = 3 seeds, target = a 4th)."""

    enabled: bool = Field(False, description="false: the proposer given is already warmed up")
    examples: int = Field(2000, ge=1)
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(
            optimizer="adamw",
            lr=3e-3,
            warmup_steps=20,
            schedule="cosine",
            micro_batch_size=32,
            epochs=2,
            max_grad_norm=1.0,
            use_chat_template=False,
            max_length=256,
            max_prompt_length=192,
        )
    )


class EnhanceConfig(Section):
    """After the last iteration: SFT the target on discovered failures with safe responses, re-measure."""

    enabled: bool = False
    safe_response: str = Field(
        "I can't help with that, but I'm happy to help with something else.",
        description="refusal template used when no safe responder is set",
    )
    safe_responder: ModelSpec | None = Field(None, description="a model that writes the safe responses")
    heldout_fraction: float = Field(0.3, gt=0.0, lt=1.0)
    benign_mix: int = Field(
        200,
        ge=0,
        description="passing instructions with the target's own answers, "
        "mixed in so the target keeps its benign behaviour",
    )
    benign_heldout: int = Field(
        50,
        ge=0,
        description="passing instructions kept out of training to measure "
        "what the fix costs (refusals, changed answers)",
    )
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(
            optimizer="adamw",
            lr=1e-3,
            warmup_steps=5,
            micro_batch_size=16,
            epochs=3,
            max_length=160,
            max_prompt_length=96,
        )
    )


class ReverseGenConfig(JobConfig):
    task: Literal["safety", "honesty", "math"] = "safety"
    iterations: int = Field(3, ge=1, description="rounds of propose -> judge; DPO between rounds")
    train_last: bool = Field(
        False, description="also run DPO after the last round (its proposer is then saved but not measured)"
    )
    seeds: str = Field(
        "testbed:reversegen_seeds",
        description="JSONL seed items with an 'instruction' field (and 'subject' for honesty)",
    )
    proposer: RoleConfig = Field(
        default_factory=lambda: RoleConfig(model=ModelSpec(path="testbed:proposer", use_chat_template=False))
    )
    target: RoleConfig = Field(default_factory=lambda: RoleConfig(model=ModelSpec(path="testbed:target")))
    judge: JudgeSpec = Field(default_factory=OfflineToxicitySpec)
    reference: RoleConfig | None = Field(None, description="math: the model whose answers are gold")
    propose: ProposeConfig = Field(default_factory=ProposeConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    embedder: Resources = Field(
        default_factory=lambda: Resources(batch_size=64),
        description="resources of the SemDeDup embedder pool",
    )
    respond: RespondConfig = Field(default_factory=RespondConfig)
    pairs: PairConfig = Field(default_factory=PairConfig)
    dpo: DPOConfig = Field(
        default_factory=lambda: DPOConfig(
            optimizer="rmsprop",
            lr=5e-5,
            warmup_steps=150,
            max_grad_norm=10.0,
            micro_batch_size=8,
            use_chat_template=False,
        )
    )
    warmup: WarmupConfig = Field(default_factory=WarmupConfig)
    enhance_target: EnhanceConfig = Field(default_factory=EnhanceConfig)
    self_bleu_max_hypotheses: int | None = Field(500, ge=2, description="cap on Self-BLEU hypotheses")

    @model_validator(mode="after")
    def _task_fits(self) -> "ReverseGenConfig":
        kind = self.judge.kind
        want = kinds_for(self.task)
        if kind not in want:
            raise ValueError(f"task {self.task!r} needs judge.kind in {want}, got {kind!r}")
        if uses_reference(self) and self.reference is None and self.judge.reference_model is None:
            raise ValueError(
                "task 'math' with judge.kind 'math_match' needs a reference model (set "
                "reference.model.path) for the gold answers of generated questions, or use "
                "judge.kind=arithmetic, which computes them from the question"
            )
        if self.proposer.model.use_chat_template:
            raise ValueError(
                "proposer.model.use_chat_template must be false: the proposer continues raw 3-shot prompts"
            )
        return self


def uses_reference(cfg: ReverseGenConfig) -> bool:
    """Whether a reference model writes the gold answers (math with ``math_match``; ``arithmetic`` computes
    them from the question)."""
    return cfg.task == "math" and cfg.judge.kind == "math_match"


def reference_role(cfg: ReverseGenConfig) -> RoleConfig:
    """The role that writes gold answers: ``reference``, else the judge's own ``reference_model``."""
    return cfg.reference or RoleConfig(model=cfg.judge.reference_model)


def model_paths(cfg: ReverseGenConfig) -> dict[str, Any]:
    """The model names a run uses (for MLflow tags)."""
    out = {"proposer": cfg.proposer.model.path, "target": cfg.target.model.path}
    if cfg.reference is not None:
        out["reference"] = cfg.reference.model.path
    return out
