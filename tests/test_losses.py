"""Losses against independent, element-by-element implementations of the published formulas (float64)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from forewarn.training.losses import (
    batch_marginal_neg_entropy,
    bradley_terry_loss,
    categorical_loss,
    dpo_loss,
    mean_variance_loss,
    sequence_logps,
    sft_loss,
)


def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def _reference_dpo(pc, pr, rc, rr, beta, loss_type, eps):
    """Straight from the papers: DPO (Rafailov et al.), cDPO (Mitchell), IPO (Azar et al.)."""
    out = []
    for a, b, c, d in zip(pc, pr, rc, rr):
        h = (a - b) - (c - d)
        if loss_type == "ipo":
            out.append((h - 1 / (2 * beta)) ** 2)
        else:
            out.append(-(1 - eps) * _log_sigmoid(beta * h) - eps * _log_sigmoid(-beta * h))
    return np.array(out)


@pytest.mark.parametrize(
    "loss_type,eps", [("sigmoid", 0.0), ("conservative", 0.1), ("ipo", 0.0), ("sigmoid", 0.25)]
)
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_loss_matches_formula(loss_type: str, eps: float, beta: float) -> None:
    g = torch.Generator().manual_seed(0)
    logps = [-torch.rand(64, generator=g, dtype=torch.float64) * 40 for _ in range(4)]
    got = dpo_loss(*logps, beta=beta, loss_type=loss_type, label_smoothing=eps)
    want = _reference_dpo(*[t.tolist() for t in logps], beta, loss_type, eps)
    assert got.shape == (64,)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-6, rtol=0)


def test_dpo_loss_rejects_bad_settings() -> None:
    x = torch.zeros(2)
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(x, x, x, x, 0.1, "conservative", 0.0)
    with pytest.raises(ValueError, match="ipo"):
        dpo_loss(x, x, x, x, 0.1, "ipo", 0.1)
    with pytest.raises(ValueError, match="loss_type"):
        dpo_loss(x, x, x, x, 0.1, "hinge")  # type: ignore[arg-type]
    # equal policy and reference: the sigmoid loss is log 2 for every pair
    assert torch.allclose(dpo_loss(x, x, x, x, 0.1), torch.full((2,), math.log(2)))


def test_sequence_logps_and_sft_loss_mask_prompt() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 7, generator=g, dtype=torch.float64)
    ids = torch.randint(0, 7, (2, 5), generator=g)
    mask = torch.tensor([[0, 0, 1, 1, 0], [0, 1, 1, 1, 1]])
    want = []
    for b in range(2):
        s = 0.0
        for t in range(1, 5):
            if mask[b, t]:
                row = logits[b, t - 1]
                s += float(row[ids[b, t]] - torch.logsumexp(row, 0))
        want.append(s)
    np.testing.assert_allclose(sequence_logps(logits, ids, mask).numpy(), want, atol=1e-9)
    loss, n = sft_loss(logits, ids, mask)
    assert n.item() == 6 and loss.item() == pytest.approx(-sum(want) / 6, abs=1e-9)
    with pytest.raises(ValueError, match="no target tokens"):
        sft_loss(logits, ids, torch.zeros_like(mask))


def test_dpl_losses_match_formulas() -> None:
    g = torch.Generator().manual_seed(2)
    rc, rr = (
        torch.randn(16, generator=g, dtype=torch.float64),
        torch.randn(16, generator=g, dtype=torch.float64),
    )
    np.testing.assert_allclose(
        bradley_terry_loss(rc, rr).numpy(),
        [-_log_sigmoid(a - b) for a, b in zip(rc.tolist(), rr.tolist())],
        atol=1e-9,
    )

    sc, sr = (
        torch.rand(16, generator=g, dtype=torch.float64) + 0.1,
        torch.rand(16, generator=g, dtype=torch.float64) + 0.1,
    )
    want = [
        -_log_sigmoid(math.sqrt(2 * math.pi) * (a - b) / math.sqrt(c * c + d * d)) + 0.5 * (c * c + d * d)
        for a, b, c, d in zip(rc.tolist(), rr.tolist(), sc.tolist(), sr.tolist())
    ]
    np.testing.assert_allclose(
        mean_variance_loss(rc, sc, rr, sr, variance_penalty=0.5).numpy(), want, atol=1e-9
    )

    lc, lr = (
        torch.randn(16, 10, generator=g, dtype=torch.float64),
        torch.randn(16, 10, generator=g, dtype=torch.float64),
    )
    pc, pr = lc.softmax(-1).numpy(), lr.softmax(-1).numpy()
    want = []
    for b in range(16):
        p = sum(
            pr[b, i] * pc[b, j] * (1.0 if j > i else 0.5 if i == j else 0.0)
            for i in range(10)
            for j in range(10)
        )
        want.append(-math.log(p))
    np.testing.assert_allclose(categorical_loss(lc, lr).numpy(), want, atol=1e-6)

    m = np.concatenate([pc, pr]).mean(0)
    assert batch_marginal_neg_entropy(lc, lr).item() == pytest.approx(float((m * np.log(m)).sum()), abs=1e-6)
