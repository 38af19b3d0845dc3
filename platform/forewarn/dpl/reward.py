"""DPL reward models on a sequence-classification head over any HF backbone (dpl.md §1, §3–5).

``RewardTask`` plugs into the one training runner; ``utility_stats`` turns raw head outputs into the mean,
std and lower α-quantile of the utility for each variant:

- base: one output, the reward; std 0 and the quantile is the reward itself;
- mean_and_variance: μ = out[0], σ = softplus(out[1]); q = μ + Φ⁻¹(α)·σ;
- categorical: p = softmax(out) on atoms linspace(0, 1, n); q from the piecewise-linear inverse CDF over n
  equal bins of [0, 1] (exactly as the reference evaluation computes it).

The variant is written into the saved model's ``config.json`` (``forewarn_reward_variant``), so evaluation
needs only the folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForSequenceClassification

from forewarn.dpl.config import RewardConfig
from forewarn.training.data import TableLike, encode_prompt_response, load_table, pad_right, require_columns
from forewarn.training.losses import (
    batch_marginal_neg_entropy,
    bradley_terry_loss,
    categorical_loss,
    mean_variance_loss,
)
from forewarn.training.tasks import encode_pair
from forewarn.training.trainer import fit

VARIANT_KEY = "forewarn_reward_variant"


def utility_stats(out: torch.Tensor, variant: str, alpha: float = 0.01) -> dict[str, torch.Tensor]:
    """``mean``, ``std`` and ``quantile`` (lower α) of the utility, each of shape ``(B,)``."""
    out = out.float()
    if variant == "base":
        r = out[:, 0]
        return {"mean": r, "std": torch.zeros_like(r), "quantile": r}
    if variant == "mean_and_variance":
        mu, sigma = out[:, 0], F.softplus(out[:, 1])
        return {"mean": mu, "std": sigma, "quantile": mu + NormalDist().inv_cdf(alpha) * sigma}
    if variant == "categorical":
        p = out.softmax(-1)
        n = p.shape[-1]
        atoms = torch.linspace(0, 1, n, device=p.device)
        mean = (p * atoms).sum(-1)
        std = ((p * (atoms - mean[:, None]) ** 2).sum(-1)).sqrt()
        cdf = torch.cat([torch.zeros_like(p[:, :1]), p.cumsum(-1)], dim=-1)
        i = ((cdf >= alpha).float().argmax(-1) - 1).clamp(0, n - 1)
        lo, hi = cdf.gather(1, i[:, None])[:, 0], cdf.gather(1, i[:, None] + 1)[:, 0]
        q = (i.float() + (alpha - lo) / (hi - lo).clamp_min(1e-12)) / n
        return {"mean": mean, "std": std, "quantile": q}
    raise ValueError(f"variant must be one of base, mean_and_variance, categorical; got {variant!r}")


def reward_pair_loss(
    out_c: torch.Tensor,
    out_r: torch.Tensor,
    cfg_variant: str,
    entropy_coeff: float = 0.0,
    variance_penalty: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair training loss of a variant and whether the chosen one scores higher (mean utility, ≥)."""
    if cfg_variant == "base":
        loss = bradley_terry_loss(out_c[:, 0], out_r[:, 0])
    elif cfg_variant == "mean_and_variance":
        loss = mean_variance_loss(
            out_c[:, 0], F.softplus(out_c[:, 1]), out_r[:, 0], F.softplus(out_r[:, 1]), variance_penalty
        )
    else:
        loss = categorical_loss(out_c, out_r)
        if entropy_coeff:
            loss = loss + entropy_coeff * batch_marginal_neg_entropy(out_c, out_r)
    correct = utility_stats(out_c, cfg_variant)["mean"] >= utility_stats(out_r, cfg_variant)["mean"]
    return loss, correct.float()


@dataclass
class RewardTask:
    """A DPL reward model trained on (prompt, chosen, rejected) pairs by the shared runner."""

    variant: str = "base"
    num_outputs: int = 1
    entropy_coeff: float = 0.1
    variance_penalty: float = 0.0
    head_init_scale: float = 0.01
    name: str = "reward"
    peft_task_type: str = "SEQ_CLS"
    columns: tuple[str, ...] = ("prompt", "chosen", "rejected")

    @classmethod
    def from_config(cls, cfg: RewardConfig) -> "RewardTask":
        return cls(
            variant=cfg.variant,
            num_outputs=cfg.num_outputs,
            entropy_coeff=cfg.entropy_coeff,
            variance_penalty=cfg.variance_penalty,
            head_init_scale=cfg.head_init_scale,
        )

    def load_model(self, path: str, cfg: Any) -> torch.nn.Module:
        hf_config = AutoConfig.from_pretrained(path, num_labels=self.num_outputs)
        setattr(hf_config, VARIANT_KEY, self.variant)
        model = AutoModelForSequenceClassification.from_pretrained(
            path, config=hf_config, dtype=torch.float32
        )
        with torch.no_grad():
            model.score.weight.mul_(self.head_init_scale)  # dpl.md §3: stabilises early training
        return model

    def fresh_model(self, hf_config: Any) -> torch.nn.Module:
        return AutoModelForSequenceClassification.from_config(hf_config, dtype=torch.float32)

    def encode(self, tok: Any, row: dict, cfg: Any) -> dict:
        return encode_pair(tok, row, cfg)

    def collate(self, items: list[dict], tok: Any) -> dict[str, torch.Tensor]:
        ids, att = pad_right([it["c_ids"] for it in items] + [it["r_ids"] for it in items], tok.pad_token_id)
        return {"input_ids": ids, "attention_mask": att}

    def _pair_outputs(self, model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        b = out.shape[0] // 2
        return out[:b], out[b:]

    def loss(
        self, model: Any, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out_c, out_r = self._pair_outputs(model, batch)
        loss, correct = reward_pair_loss(
            out_c, out_r, self.variant, self.entropy_coeff, self.variance_penalty
        )
        return loss.mean(), {"accuracy": correct.mean()}

    def evaluate(self, model: Any, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out_c, out_r = self._pair_outputs(model, batch)
        loss, correct = reward_pair_loss(out_c, out_r, self.variant)  # the plain NLL, no regulariser
        return {"nll": loss.sum(), "accuracy": correct.sum(), "count": torch.tensor(float(loss.shape[0]))}


def train_reward(
    cfg: RewardConfig,
    pairs: TableLike,
    output_dir: str | Path,
    tracker: Any,
    *,
    model_path: str | Path,
    eval_pairs: TableLike | None = None,
) -> Path:
    """Train a DPL reward model of ``cfg.variant`` from ``model_path``'s backbone; returns the HF folder."""
    task = RewardTask.from_config(cfg)
    train = load_table(pairs, "reward pairs")
    require_columns(train, task.columns, "reward pairs")
    evals = load_table(eval_pairs, "reward eval pairs") if eval_pairs is not None else None
    return fit(
        task, cfg, model_path, train, output_dir, tracker, eval_table=evals, name=f"reward-{cfg.variant}"
    )


class RewardScorer:
    """A trained reward model loaded once (from its folder) that scores (prompt, response) texts."""

    def __init__(
        self,
        path: str | Path,
        max_length: int = 512,
        max_prompt_length: int = 256,
        use_chat_template: bool = True,
        device: str = "cpu",
    ):
        from transformers import AutoTokenizer

        self.model = AutoModelForSequenceClassification.from_pretrained(str(path), dtype=torch.float32)
        self.model.to(device).eval()
        self.variant = getattr(self.model.config, VARIANT_KEY, None)
        if self.variant is None:
            raise ValueError(
                f"{path}: config.json has no {VARIANT_KEY}; it was not trained by forewarn train reward"
            )
        self.tok = AutoTokenizer.from_pretrained(str(path))
        self.device = device
        self.cfg = RewardConfig(
            max_length=max_length, max_prompt_length=max_prompt_length, use_chat_template=use_chat_template
        )

    @torch.inference_mode()
    def outputs(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        """Raw head outputs ``(B, k)`` of prompt + response (same tokenization as training)."""

        seqs = [
            encode_prompt_response(
                self.tok, p, r, self.cfg.max_length, self.cfg.max_prompt_length, self.cfg.use_chat_template
            )[0]
            for p, r in zip(prompts, responses)
        ]
        ids, att = pad_right(seqs, self.tok.pad_token_id)
        return (
            self.model(input_ids=ids.to(self.device), attention_mask=att.to(self.device)).logits.float().cpu()
        )
