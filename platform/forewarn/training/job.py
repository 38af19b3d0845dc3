"""The ``train`` job: SFT, DPO or a DPL reward model through the one Ray Train + DeepSpeed runner.

    python jobs/train.py                                  # DPO of the testbed proposer on testbed pairs
    forewarn train sft --set data.train=pairs.parquet --set model=/path/to/hf-model
    forewarn train reward --set reward.variant=categorical

Writes ``OUTPUT_DIR/model`` (a HF folder), ``metrics.jsonl`` (per step, rank 0) and a summary with the
final and evaluation metrics; a rerun with the same output dir resumes from the latest checkpoint.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from forewarn.config import JobConfig, Section
from forewarn.dpl.config import RewardConfig
from forewarn.pipeline.rundir import RunDir
from forewarn.training.config import DPOConfig, TrainConfig


class TrainData(Section):
    train: str = Field(
        "testbed:preferences_train@small", description="Parquet/JSONL file or testbed:<artifact>"
    )
    eval: str | None = Field("testbed:preferences_test@small", description="held-out rows (null: none)")
    rename: dict[str, str] = Field(
        default_factory=dict, description="column renames applied on load, e.g. {chosen: target} for SFT"
    )
    limit: int | None = Field(None, ge=1, description="use only the first N training rows")


class TrainJobConfig(JobConfig):
    task: Literal["sft", "dpo", "reward"] = "dpo"
    model: str = Field("testbed:proposer@small", description="HF folder, hub id or testbed:<model> to train")
    reference: str | None = Field(None, description="DPO reference model (default: the model itself)")
    data: TrainData = Field(default_factory=TrainData)
    sft: TrainConfig = Field(default_factory=TrainConfig)
    dpo: DPOConfig = Field(default_factory=DPOConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)


CONFIG = TrainJobConfig


def _resolve_model(name: str) -> str:
    # lazy: loads pandas, sklearn, torch, transformers only when called
    from forewarn.names import resolve_model

    return resolve_model(name)


def _load(path: str, rename: dict[str, str], limit: int | None = None) -> Any:
    # lazy: loads pandas, sklearn, torch, transformers only when called
    from forewarn.names import resolve_path

    # lazy: loads pandas, sklearn, torch, transformers only when called
    from forewarn.training.data import load_table

    table = load_table(resolve_path(path), f"data {path!r}")
    if rename:
        table = table.rename_columns([rename.get(c, c) for c in table.column_names])
    return table.slice(0, limit) if limit else table


def run(cfg: TrainJobConfig, rundir: RunDir, tracker: Any) -> dict[str, Any]:
    # lazy: loads pandas, sklearn, torch, transformers only when called
    from forewarn.training.trainer import final_metrics

    model = _resolve_model(cfg.model)
    train = _load(cfg.data.train, cfg.data.rename, cfg.data.limit)
    evals = _load(cfg.data.eval, cfg.data.rename) if cfg.data.eval else None
    if cfg.task == "sft":
        # lazy: loads pandas, sklearn, torch, transformers only when called
        from forewarn.training.api import train_sft

        out = train_sft(cfg.sft, train, rundir.root, tracker, model_path=model, eval_pairs=evals)
    elif cfg.task == "dpo":
        # lazy: loads pandas, sklearn, torch, transformers only when called
        from forewarn.training.api import train_dpo

        reference = _resolve_model(cfg.reference) if cfg.reference else model
        out = train_dpo(
            cfg.dpo, train, reference, rundir.root, tracker, policy_model_path=model, eval_pairs=evals
        )
    else:
        # lazy: loads pandas, sklearn, torch, transformers only when called
        from forewarn.dpl.reward import train_reward

        out = train_reward(cfg.reward, train, rundir.root, tracker, model_path=model, eval_pairs=evals)
    summary = {
        "task": cfg.task,
        "model_dir": str(out),
        "train_rows": train.num_rows,
        **final_metrics(rundir.root),
    }
    tracker.log_metrics({k: v for k, v in summary.items() if isinstance(v, float)})
    return summary
