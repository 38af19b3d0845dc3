"""Typed config sections of the training runner; ReverseGen and DPL embed them in their own job configs.

``TrainConfig`` holds everything the one runner needs (workers, optimiser, schedule, DeepSpeed, LoRA,
checkpoints); ``DPOConfig`` adds the preference-loss fields. Reference values: reversegen.md §7 (DPO: RMSprop,
lr 5e-5, β 0.1, 150 warm-up steps, clip 10) and dpl.md §3 (reward models: AdamW, cosine with 0.1 floor).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from forewarn.config import Section, TrainWorkers


class DeepSpeedConfig(Section):
    """How ``deepspeed.initialize`` shards and casts the model."""

    zero_stage: int = Field(
        0, ge=0, le=3, description="ZeRO stage 0 (plain data parallel) to 3 (params sharded)"
    )
    offload_optimizer: bool = Field(False, description="ZeRO-Offload: optimizer states to CPU (stage >= 1)")
    offload_params: bool = Field(False, description="parameters to CPU (stage 3 only)")
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"

    @model_validator(mode="after")
    def _check(self) -> "DeepSpeedConfig":
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("offload_optimizer needs zero_stage >= 1 (set deepspeed.zero_stage=2)")
        if self.offload_params and self.zero_stage != 3:
            raise ValueError("offload_params needs zero_stage 3 (set deepspeed.zero_stage=3)")
        return self


class LoraConfig(Section):
    """Optional LoRA adapters through peft; checkpoints are saved merged, so every backend loads them."""

    enabled: bool = False
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"])


class TrainConfig(TrainWorkers):
    """The runner: Ray Train workers (``TrainWorkers``), optimiser, schedule, batch, DeepSpeed, LoRA,
    checkpoints."""

    optimizer: Literal["adamw", "rmsprop"] = "adamw"
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="after warm-up: constant, linear to min_lr_ratio, or cosine to min_lr_ratio"
    )
    warmup_steps: int = Field(0, ge=0, description="linear warm-up factor min(1, (step+1)/(warmup_steps+1))")
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    micro_batch_size: int = Field(8, ge=1, description="examples per worker per forward pass")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    max_grad_norm: float = Field(1.0, ge=0, description="0 disables clipping")
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps")
    max_length: int = Field(512, ge=8, description="prompt + response tokens; longer rows are truncated")
    max_prompt_length: int = Field(256, ge=1, description="prompts are left-truncated to this")
    use_chat_template: bool = Field(True, description="render prompts through the tokenizer's chat template")
    checkpoint_every: int = Field(
        0, ge=0, description="optimizer steps between checkpoints; 0: only at the end"
    )
    keep_checkpoints: int = Field(2, ge=1, description="how many Ray Train checkpoints to keep")
    max_failures: int = Field(
        2,
        ge=-1,
        description="worker-group restarts after a worker dies (a process killed, "
        "a node lost); each resumes from the latest checkpoint. "
        "-1: unlimited",
    )
    eval_every: int = Field(
        0, ge=0, description="steps between evaluations on eval data; 0: start and end only"
    )
    seed: int = 0
    storage_path: str | None = Field(
        None, description="Ray Train storage (shared FS or s3://); default OUTPUT_DIR/ray"
    )
    deepspeed: DeepSpeedConfig = Field(default_factory=DeepSpeedConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if self.max_prompt_length >= self.max_length:
            raise ValueError(
                f"max_prompt_length ({self.max_prompt_length}) must be < max_length "
                f"({self.max_length}) so responses keep some tokens"
            )
        if self.deepspeed.dtype == "fp16" and not self.use_gpu:
            raise ValueError("deepspeed.dtype=fp16 needs use_gpu=true (CPU training supports fp32 and bf16)")
        return self


class DPOConfig(TrainConfig):
    """DPO on (prompt, chosen, rejected) pairs against a frozen reference (reversegen.md §7)."""

    beta: float = Field(0.1, gt=0)
    loss_type: Literal["sigmoid", "ipo", "conservative"] = "sigmoid"
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="ε of conservative DPO")
    ref_batch_size: int = Field(16, ge=1, description="rows per batch of the reference log-prob pass")

    @model_validator(mode="after")
    def _check_loss(self) -> "DPOConfig":
        if self.loss_type == "conservative" and self.label_smoothing == 0:
            raise ValueError("loss_type 'conservative' needs label_smoothing in (0, 0.5), e.g. 0.1")
        if self.loss_type == "ipo" and self.label_smoothing:
            raise ValueError("loss_type 'ipo' takes no label_smoothing (set label_smoothing=0)")
        return self
