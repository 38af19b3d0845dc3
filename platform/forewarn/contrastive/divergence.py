"""Divergence math between a starting model s and a comparison model c, on logits.

Everything here is a pure function of tensors, so it is tested against direct torch computations.

Per position t, with weights (w_s, w_c) and logits z_s, z_c (``metric="kl"``)::

    p     = softmax(z_c) if w_s < 0 < w_c;  softmax(z_s) if w_c < 0 < w_s;  else softmax(w_s z_s + w_c z_c)
    div_t = sum_v p(v) * (w_s log p_s(v) + w_c log p_c(v))

so (w_s, w_c) = (+1, -1) is exactly KL(P_start || P_comparison) and (-1, +1) is KL(P_comparison || P_start):
the expectation is taken under the positively weighted model. Other weights give a weighted log-ratio
expectation, not a KL. ``metric="logit_l1"`` is the alternative mean |z_c - z_s| over the vocabulary.

Also here: the combined sampling distribution of "combine" mode (true contrastive decoding), the
scored-position mask (generated tokens only unless asked, padding never), and perplexity.
"""

from __future__ import annotations

from typing import Literal

import torch

Metric = Literal["kl", "logit_l1"]
Distribution = Literal["auto", "start", "comparison", "combined"]


def align_vocab(z_s: torch.Tensor, z_c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Truncate both logits to the shorter vocabulary (embedding matrices are often padded)."""
    v = min(z_s.shape[-1], z_c.shape[-1])
    return z_s[..., :v], z_c[..., :v]


def divergence_name(w_s: float, w_c: float, metric: Metric = "kl") -> str:
    """What the configured divergence measures, in words (for logs, reports and summaries)."""
    if metric == "logit_l1":
        return "mean |z_comparison - z_start|"
    if (w_s, w_c) == (1.0, -1.0):
        return "KL(P_start || P_comparison)"
    if (w_s, w_c) == (-1.0, 1.0):
        return "KL(P_comparison || P_start)"
    return f"E_p[{w_s:g}·log p_start + {w_c:g}·log p_comparison] (weighted log-ratio, not a KL)"


def expectation_logprobs(
    lp_s: torch.Tensor, lp_c: torch.Tensor, w_s: float, w_c: float, distribution: Distribution = "auto"
) -> torch.Tensor:
    """Log-probabilities of the distribution the divergence takes its expectation under."""
    if distribution == "auto":
        if w_s < 0 < w_c:
            distribution = "comparison"
        elif w_c < 0 < w_s:
            distribution = "start"
        else:
            distribution = "combined"
    if distribution == "start":
        return lp_s
    if distribution == "comparison":
        return lp_c
    return torch.log_softmax(w_s * lp_s + w_c * lp_c, dim=-1)


def token_divergence(
    z_s: torch.Tensor,
    z_c: torch.Tensor,
    w_s: float = 1.0,
    w_c: float = -1.0,
    metric: Metric = "kl",
    distribution: Distribution = "auto",
) -> torch.Tensor:
    """Per-position divergence of logits ``[..., V]`` -> ``[...]`` (computed in float32 or wider).

    With logits instead of log-probs, ``sum_v p (w_s z_s + w_c z_c) - (w_s lse z_s + w_c lse z_c)`` is the
    same quantity as the formula above; log-softmax first is the numerically stable form of it.
    """
    z_s, z_c = align_vocab(z_s, z_c)
    dtype = torch.promote_types(z_s.dtype, torch.float32)
    z_s, z_c = z_s.to(dtype), z_c.to(dtype)
    if metric == "logit_l1":
        return (z_c - z_s).abs().mean(dim=-1)
    if metric != "kl":
        raise ValueError(f"metric={metric!r}: expected 'kl' or 'logit_l1'")
    lp_s, lp_c = torch.log_softmax(z_s, dim=-1), torch.log_softmax(z_c, dim=-1)
    lp = expectation_logprobs(lp_s, lp_c, w_s, w_c, distribution)
    # p * (..) where p == 0 must give 0 even if a log-prob is -inf (a fully masked token).
    weighted = torch.nan_to_num(w_s * lp_s + w_c * lp_c, nan=0.0, posinf=0.0, neginf=0.0)
    return (lp.exp() * weighted).sum(dim=-1)


def combine_logits(
    z_s: torch.Tensor,
    z_c: torch.Tensor,
    w_s: float,
    w_c: float,
    start_top_p: float | None = None,
    similarity_gating: float | None = None,
) -> torch.Tensor:
    """The sampling logits of "combine" mode (true contrastive decoding) for next-token logits ``[B, V]``.

    ``q = w_s p_s + w_c p_c``; with similarity gating of intensity g, ``b = exp(g cos(p_c, p_s) - g)`` mixes
    back towards the starting model where both agree (``q = (1 - b) q + b p_s``); logits are
    ``log(max(q, 0) + 1e-7)``. With ``start_top_p``, tokens outside the starting model's top-p nucleus are
    excluded (-inf), so the combination only re-ranks tokens the starting model finds plausible.
    """
    z_s, z_c = align_vocab(z_s.float(), z_c.float())
    p_s, p_c = torch.softmax(z_s, dim=-1), torch.softmax(z_c, dim=-1)
    q = w_s * p_s + w_c * p_c
    if similarity_gating:
        sim = torch.nn.functional.cosine_similarity(p_c, p_s, dim=-1).unsqueeze(-1)
        b = torch.exp(similarity_gating * sim - similarity_gating)
        q = (1 - b) * q + b * p_s
    logits = torch.log(q.clamp(min=0) + 1e-7)
    if start_top_p is not None and start_top_p < 1.0:
        logits = logits.masked_fill(~nucleus_mask(p_s, start_top_p), float("-inf"))
    return logits


def nucleus_mask(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """True for tokens inside the top-p nucleus of ``probs`` (the most likely token always is)."""
    sorted_p, order = probs.sort(dim=-1, descending=True)
    before = sorted_p.cumsum(dim=-1) - sorted_p  # mass strictly before each token
    keep_sorted = before < top_p
    keep_sorted[..., 0] = True
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)


def scored_mask(attention_mask: torch.Tensor, prompt_len: int, include_prompt: bool = False) -> torch.Tensor:
    """Which logits positions are scored: ``mask[b, t]`` is True when logits at t predict a real token t+1.

    Sequences are ``[left-padded prompt | generated tokens, right-padded after the end token]`` with the
    prompt block ``prompt_len`` wide. Position t predicts token t + 1; it counts when both t and t + 1 are
    real tokens, and, unless ``include_prompt``, when t + 1 is a generated token (t >= prompt_len - 1).
    The result has the shape of the logits without their last position: ``[B, L - 1]``.
    """
    am = attention_mask.bool()
    mask = am[:, :-1] & am[:, 1:]
    if not include_prompt:
        mask[:, : max(prompt_len - 1, 0)] = False
    return mask


def token_nll(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of ``ids[:, 1:]`` under ``logits[:, :-1]`` -> ``[B, L - 1]``."""
    lp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return -lp.gather(-1, ids[:, 1:, None]).squeeze(-1)


def perplexity(nll: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """exp(mean NLL over the masked positions) per row; NaN for a row with no scored position."""
    m = mask.to(nll.dtype)
    n = m.sum(dim=-1)
    mean = (nll * m).sum(dim=-1) / n.clamp(min=1)
    return torch.where(n > 0, mean.exp(), torch.full_like(mean, float("nan")))
