"""The SFT and DPO tasks of the training runner (the DPL reward-model task lives in ``forewarn.dpl``).

A task is a small picklable object: Ray ships it to every worker inside the train-loop config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from forewarn.training.config import DPOConfig, TrainConfig
from forewarn.training.data import encode_prompt_response, pad_right
from forewarn.training.losses import dpo_loss, dpo_metrics, sequence_logps, sft_loss


def load_causal_lm(path: str) -> torch.nn.Module:
    """A causal LM in float32 (DeepSpeed casts to bf16/fp16 itself when the config asks for it)."""
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def pad_masks(masks: list[list[int]]) -> torch.Tensor:
    n = max(len(m) for m in masks)
    return torch.tensor([m + [0] * (n - len(m)) for m in masks], dtype=torch.long)


def forward_logps(model: Any, ids: torch.Tensor, att: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Summed response log-probs of each row (one forward pass)."""
    return sequence_logps(model(input_ids=ids, attention_mask=att).logits, ids, mask)


@dataclass
class SFTTask:
    """Supervised fine-tuning on (prompt, target): next-token loss on the target tokens only."""

    name: str = "sft"
    peft_task_type: str = "CAUSAL_LM"
    columns: tuple[str, ...] = ("prompt", "target")

    def load_model(self, path: str, cfg: TrainConfig) -> torch.nn.Module:
        return load_causal_lm(path)

    def fresh_model(self, hf_config: Any) -> torch.nn.Module:
        return AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)

    def encode(self, tok: Any, row: dict, cfg: TrainConfig) -> dict:
        ids, mask = encode_prompt_response(
            tok, row["prompt"], row["target"], cfg.max_length, cfg.max_prompt_length, cfg.use_chat_template
        )
        return {"ids": ids, "mask": mask}

    def collate(self, items: list[dict], tok: Any) -> dict[str, torch.Tensor]:
        ids, att = pad_right([it["ids"] for it in items], tok.pad_token_id)
        return {"input_ids": ids, "attention_mask": att, "loss_mask": pad_masks([it["mask"] for it in items])}

    def loss(
        self, model: Any, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss, n = sft_loss(logits, batch["input_ids"], batch["loss_mask"])
        return loss, {"target_tokens": n}

    def evaluate(self, model: Any, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss, n = sft_loss(logits, batch["input_ids"], batch["loss_mask"])
        return {"loss": loss * n, "count": n}  # token-weighted mean over the eval set


def encode_pair(tok: Any, row: dict, cfg: TrainConfig) -> dict:
    """Chosen and rejected token ids + response masks of one preference pair."""
    c_ids, c_mask = encode_prompt_response(
        tok, row["prompt"], row["chosen"], cfg.max_length, cfg.max_prompt_length, cfg.use_chat_template
    )
    r_ids, r_mask = encode_prompt_response(
        tok, row["prompt"], row["rejected"], cfg.max_length, cfg.max_prompt_length, cfg.use_chat_template
    )
    return {"c_ids": c_ids, "c_mask": c_mask, "r_ids": r_ids, "r_mask": r_mask}


def collate_pairs(items: list[dict], tok: Any) -> dict[str, torch.Tensor]:
    """Chosen rows then rejected rows in one right-padded batch of ``2B`` (one forward pass for both)."""
    seqs = [it["c_ids"] for it in items] + [it["r_ids"] for it in items]
    ids, att = pad_right(seqs, tok.pad_token_id)
    mask = pad_masks([it["c_mask"] for it in items] + [it["r_mask"] for it in items])
    return {"input_ids": ids, "attention_mask": att, "loss_mask": mask[:, : ids.shape[1]]}


@dataclass
class DPOTask:
    """DPO against reference log-probs computed once before training (columns ``ref_*_logps``)."""

    beta: float = 0.1
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0
    name: str = "dpo"
    peft_task_type: str = "CAUSAL_LM"
    columns: tuple[str, ...] = ("prompt", "chosen", "rejected", "ref_chosen_logps", "ref_rejected_logps")

    @classmethod
    def from_config(cls, cfg: DPOConfig) -> "DPOTask":
        return cls(beta=cfg.beta, loss_type=cfg.loss_type, label_smoothing=cfg.label_smoothing)

    def load_model(self, path: str, cfg: TrainConfig) -> torch.nn.Module:
        return load_causal_lm(path)

    def fresh_model(self, hf_config: Any) -> torch.nn.Module:
        return AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)

    def encode(self, tok: Any, row: dict, cfg: TrainConfig) -> dict:
        return {
            **encode_pair(tok, row, cfg),
            "ref_c": float(row["ref_chosen_logps"]),
            "ref_r": float(row["ref_rejected_logps"]),
        }

    def collate(self, items: list[dict], tok: Any) -> dict[str, torch.Tensor]:
        batch = collate_pairs(items, tok)
        batch["ref_chosen"] = torch.tensor([it["ref_c"] for it in items], dtype=torch.float32)
        batch["ref_rejected"] = torch.tensor([it["ref_r"] for it in items], dtype=torch.float32)
        return batch

    def _logps(self, model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logps = forward_logps(model, batch["input_ids"], batch["attention_mask"], batch["loss_mask"])
        b = batch["ref_chosen"].shape[0]
        return logps[:b], logps[b:]

    def loss(
        self, model: Any, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        pc, pr = self._logps(model, batch)
        rc, rr = batch["ref_chosen"], batch["ref_rejected"]
        losses = dpo_loss(pc, pr, rc, rr, self.beta, self.loss_type, self.label_smoothing)  # type: ignore[arg-type]
        return losses.mean(), dpo_metrics(pc, pr, rc, rr, self.beta)

    def evaluate(self, model: Any, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        pc, pr = self._logps(model, batch)
        rc, rr = batch["ref_chosen"], batch["ref_rejected"]
        losses = dpo_loss(pc, pr, rc, rr, self.beta, self.loss_type, self.label_smoothing)  # type: ignore[arg-type]
        n = torch.tensor(float(pc.shape[0]))
        return {k: v * n for k, v in dpo_metrics(pc, pr, rc, rr, self.beta).items()} | {
            "loss": losses.sum(),
            "count": n,
        }
