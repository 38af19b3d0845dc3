"""Checkpoints of the training runner.

A checkpoint is one Ray Train checkpoint folder with two parts:

- ``hf/``: a plain HF ``save_pretrained`` folder (model + tokenizer; LoRA adapters merged into the weights),
  which every Generator backend loads as it is;
- ``deepspeed/``: DeepSpeed's engine state (optimizer, LR scheduler, ZeRO shards of every rank, and the step
  in its client state), which a rerun loads to resume exactly where it stopped.

Every worker writes its own shard into its own temporary folder and reports it; Ray Train merges the
folders in storage. Resume uses ``ray.train.get_checkpoint()``, which Train V2 fills from the latest
checkpoint of a run with the same name and storage path.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from forewarn.training.config import LoraConfig

DS_TAG = "state"


def gathered_state_dict(
    module: torch.nn.Module, zero_stage: int, rank: int
) -> dict[str, torch.Tensor] | None:
    """The full (unsharded) state dict on rank 0, None elsewhere. Under ZeRO-3 every rank must call this,
    because gathering the partitioned parameters is a collective."""
    import deepspeed

    ctx = (
        deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None)
        if zero_stage == 3
        else nullcontext()
    )
    with ctx:
        if rank != 0:
            return None
        return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def export_hf(
    state: dict[str, torch.Tensor],
    fresh_model: Callable[[], torch.nn.Module],
    lora: LoraConfig,
    peft_task_type: str,
    tokenizer: Any,
    out_dir: str | Path,
) -> Path:
    """Write ``state`` as a HF folder: load it into a freshly built model (strict), merge LoRA, save.

    Loading into a fresh copy instead of saving the training module keeps ZeRO-3 placeholders and peft
    wrappers out of the saved folder, and checks that the state is complete.
    """
    model = fresh_model()
    if lora.enabled:
        model = apply_lora(model, lora, peft_task_type)
    model.load_state_dict(state, strict=True)
    if lora.enabled:
        model = model.merge_and_unload()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def apply_lora(model: torch.nn.Module, lora: LoraConfig, task_type: str) -> torch.nn.Module:
    """Wrap ``model`` with peft LoRA adapters (only adapters and, for SEQ_CLS, the head stay trainable)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    cfg = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type=task_type,
    )
    return get_peft_model(model, cfg)


def save_checkpoint(
    engine: Any,
    step: int,
    metrics: dict[str, float],
    export: Callable[[Path], None],
    zero_stage: int,
    rank: int,
) -> None:
    """Save engine state + HF export from every worker and report them to Ray Train as one checkpoint."""
    import ray.train
    import torch.distributed as dist

    tmp = Path(tempfile.mkdtemp(prefix=f"forewarn-ckpt-{step}-"))
    try:
        engine.save_checkpoint(str(tmp / "deepspeed"), tag=DS_TAG, client_state={"step": step})
        state = gathered_state_dict(engine.module, zero_stage, rank)
        if rank == 0:
            export(tmp / "hf", state)
        dist.barrier()
        ray.train.report(
            {**metrics, "step": step},
            checkpoint=ray.train.Checkpoint.from_directory(str(tmp)),
            checkpoint_dir_name=f"checkpoint_{step:07d}",
        )  # one name on every worker
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def restore_checkpoint(engine: Any) -> int:
    """Load the latest Ray Train checkpoint into ``engine`` if there is one; returns the step to resume at."""
    import ray.train

    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return 0
    with ckpt.as_directory() as d:
        load_path, client_state = engine.load_checkpoint(str(Path(d) / "deepspeed"), tag=DS_TAG)
        if load_path is None:
            raise RuntimeError(
                f"checkpoint {ckpt.path} has no DeepSpeed state under deepspeed/{DS_TAG}; "
                "delete the run's storage folder to start afresh"
            )
        return int(client_state["step"])
