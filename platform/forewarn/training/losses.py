"""Losses of every trainer in forewarn: SFT (target tokens only), DPO (sigmoid / IPO / conservative) and the
three DPL reward-model losses (Bradley–Terry, mean-and-variance, categorical).

All functions are plain torch over tensors, so the Ray Train loop, the toy experiment and the tests share
them. Formulas follow ../shared/reference/reversegen.md §7 (DPO) and ../shared/reference/dpl.md §1.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

DPOLossType = Literal["sigmoid", "ipo", "conservative"]
SQRT_2PI = math.sqrt(2.0 * math.pi)  # logistic stand-in for Φ(z): σ(√(2π)·z), per the DPL code


# ------------------------------------------------------------------ token log-probs and SFT


def token_logps(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Log-prob of each next token: ``out[b, t] = log p(input_ids[b, t+1] | input_ids[b, :t+1])``.

    Shape ``(B, T-1)``; half-precision logits are upcast to float32 first.
    """
    logits = logits[:, :-1, :]
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    targets = input_ids[:, 1:]
    return torch.gather(logits.log_softmax(-1), 2, targets.unsqueeze(-1)).squeeze(-1)


def sequence_logps(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Sum of log-probs over the tokens where ``loss_mask`` is 1 (the response tokens), shape ``(B,)``.

    ``loss_mask[b, t]`` marks token ``t`` as a target; the first token can never be one (nothing predicts it).
    """
    per_token = token_logps(logits, input_ids)
    return (per_token * loss_mask[:, 1:].to(per_token.dtype)).sum(-1)


def sft_loss(
    logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean negative log-likelihood over target tokens only (prompt and padding masked out).

    Returns ``(loss, num_target_tokens)``; the count lets callers average correctly across workers.
    """
    per_token = token_logps(logits, input_ids)
    mask = loss_mask[:, 1:].to(per_token.dtype)
    n = mask.sum()
    if n.item() == 0:
        raise ValueError(
            "sft_loss: the batch has no target tokens (every response was truncated away; "
            "raise max_length or lower max_prompt_length)"
        )
    return -(per_token * mask).sum() / n, n


# ------------------------------------------------------------------ DPO


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    loss_type: DPOLossType = "sigmoid",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Per-example DPO losses, shape ``(B,)``.

    With ``h = (log πθ(c) − log πθ(r)) − (log πref(c) − log πref(r))``:

    - ``sigmoid`` (DPO): ``−log σ(β h)``; with ``label_smoothing = ε > 0`` it is conservative DPO.
    - ``conservative`` (cDPO): ``−(1 − ε) log σ(β h) − ε log σ(−β h)``; needs ``0 < ε < 0.5``.
    - ``ipo``: ``(h − 1/(2β))²`` (no length normalisation, as in the IPO paper and OpenRLHF; TRL's IPO
      divides h by the response lengths instead).
    """
    if beta <= 0:
        raise ValueError(f"dpo_loss: beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"dpo_loss: label_smoothing must be in [0, 0.5), got {label_smoothing}")
    h = (policy_chosen_logps - policy_rejected_logps) - (ref_chosen_logps - ref_rejected_logps)
    if loss_type == "ipo":
        if label_smoothing:
            raise ValueError("dpo_loss: loss_type 'ipo' takes no label_smoothing (set it to 0.0)")
        return (h - 1.0 / (2.0 * beta)) ** 2
    if loss_type == "conservative" and label_smoothing == 0.0:
        raise ValueError("dpo_loss: loss_type 'conservative' needs label_smoothing in (0, 0.5), e.g. 0.1")
    if loss_type not in ("sigmoid", "conservative"):
        raise ValueError(f"dpo_loss: loss_type must be 'sigmoid', 'ipo' or 'conservative', got {loss_type!r}")
    return -(1.0 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)


def dpo_metrics(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> dict[str, torch.Tensor]:
    """Implicit rewards ``r± = β (log πθ − log πref)``, their margin and the preference accuracy (batch means)."""
    with torch.no_grad():
        chosen = beta * (policy_chosen_logps - ref_chosen_logps)
        rejected = beta * (policy_rejected_logps - ref_rejected_logps)
        return {
            "rewards/chosen": chosen.mean(),
            "rewards/rejected": rejected.mean(),
            "rewards/margin": (chosen - rejected).mean(),
            "rewards/accuracy": (chosen > rejected).float().mean(),
            "logps/chosen": policy_chosen_logps.mean(),
            "logps/rejected": policy_rejected_logps.mean(),
            "logps/margin": (policy_chosen_logps - policy_rejected_logps).mean(),
        }


# ------------------------------------------------------------------ DPL reward models


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Base reward model: ``softplus(−(r_c − r_r)) = −log σ(r_c − r_r)`` per pair."""
    return F.softplus(-(r_chosen - r_rejected))


def mean_variance_prob_logit(
    mu_c: torch.Tensor, sigma_c: torch.Tensor, mu_r: torch.Tensor, sigma_r: torch.Tensor
) -> torch.Tensor:
    """The logit of ``P(c ≻ r) = σ(√(2π)·z)`` with ``z = (μ_c − μ_r)/sqrt(σ_c² + σ_r²)``."""
    return SQRT_2PI * (mu_c - mu_r) / torch.sqrt(sigma_c**2 + sigma_r**2)


def mean_variance_loss(
    mu_c: torch.Tensor,
    sigma_c: torch.Tensor,
    mu_r: torch.Tensor,
    sigma_r: torch.Tensor,
    variance_penalty: float = 0.0,
) -> torch.Tensor:
    """Mean-and-variance DPL per pair: ``softplus(−√(2π) z)`` plus ``variance_penalty·(σ_c² + σ_r²)``."""
    loss = F.softplus(-mean_variance_prob_logit(mu_c, sigma_c, mu_r, sigma_r))
    if variance_penalty:
        loss = loss + variance_penalty * (sigma_c**2 + sigma_r**2)
    return loss


def categorical_pref_prob(p_chosen: torch.Tensor, p_rejected: torch.Tensor) -> torch.Tensor:
    """``P(U_c > U_r) + ½ P(U_c = U_r)`` for independent categorical utilities on the same atoms, ``(B,)``."""
    n = p_chosen.shape[-1]
    idx = torch.arange(n, device=p_chosen.device)
    # C[i, j] = 1 if atom j > atom i, 1/2 if equal, else 0 (i indexes the rejected, j the chosen utility).
    comp = (idx[None, :] > idx[:, None]).to(p_chosen.dtype) + 0.5 * torch.eye(
        n, dtype=p_chosen.dtype, device=p_chosen.device
    )
    return torch.einsum("bi,ij,bj->b", p_rejected, comp, p_chosen)


def categorical_loss(logits_c: torch.Tensor, logits_r: torch.Tensor) -> torch.Tensor:
    """Categorical DPL per pair: ``−log P(c ≻ r)`` (ties count ½); the entropy bonus is separate."""
    prob = categorical_pref_prob(logits_c.float().softmax(-1), logits_r.float().softmax(-1))
    return -torch.log(prob.clamp_min(1e-12))


def batch_marginal_neg_entropy(logits_c: torch.Tensor, logits_r: torch.Tensor) -> torch.Tensor:
    """``Σ_k m_k log m_k`` of the batch-marginal ``m`` over chosen ∪ rejected (scalar; add ``coeff ×`` it).

    Minimising it spreads mass across atoms; it is on the batch marginal, not per example (dpl.md §1).
    """
    m = torch.cat([logits_c, logits_r]).float().softmax(-1).mean(0)
    return (m * torch.log(m.clamp_min(1e-12))).sum()
