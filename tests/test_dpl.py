"""DPL: the 1-D toy experiment (paper Figure 1) and the reward-model outputs (quantiles, r², scorer)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from forewarn.dpl.evaluate import r_squared
from forewarn.dpl.reward import utility_stats
from forewarn.runner import resolve, run_job


@pytest.mark.slow
def test_toy_experiment_shows_hidden_context(tmp_path, ray_local) -> None:
    """Reduced settings (batch 512, hidden 64, 500 iterations) keep every seed-independent check of dpl.md §2."""
    cfg = resolve(
        "dpl",
        overrides=[
            "mode=toy",
            "tracking.enabled=false",
            "toy.batch_size=512",
            "toy.hidden=64",
            "toy.num_iterations=500",
            "toy.lr=3e-3",
            "toy.heldout_pairs=5000",
        ],
        output_dir=str(tmp_path),
    )
    run_job("dpl", cfg, quiet=True)
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["base_drop_at_0.8"] > 0.05  # Borda effect: û falls at 0.8 although E[u] keeps rising
    assert s["base_rank_corr_borda"] > 0.85
    assert s["mv_sigma_below_0.8_median"] < 0.1 and s["mv_sigma_above_0.8_median"] > 1.0
    assert s["categorical_std_below_0.8_median"] < 0.15 and s["categorical_std_above_0.8_median"] > 0.4
    # bimodal above 0.8: mass on both the lowest and the highest atom
    assert s["categorical_mass_lowest_atom_at_0.9"] > 0.3 and s["categorical_mass_highest_atom_at_0.9"] > 0.25
    nll = s["heldout_nll"]
    assert nll["base"] > nll["categorical"] and nll["base"] > nll["mean_and_variance"]
    assert (tmp_path / "toy.png").stat().st_size > 10_000
    assert (tmp_path / "toy_table.parquet").is_file() and "| 0.80 |" in (
        tmp_path / "toy_table.md"
    ).read_text()


def test_utility_stats_per_variant() -> None:
    out = torch.tensor([[1.0, 0.0], [2.0, 3.0]])
    mv = utility_stats(out, "mean_and_variance", alpha=0.01)
    sigma = torch.nn.functional.softplus(out[:, 1])
    assert torch.allclose(mv["quantile"], out[:, 0] - 2.326348 * sigma, atol=1e-5)
    base = utility_stats(out[:, :1], "base")
    assert torch.equal(base["quantile"], out[:, 0]) and torch.equal(base["std"], torch.zeros(2))
    # categorical: all mass on atom 3 of 10 -> mean 3/9; quantile inside bin 3 of [0, 1] in tenths
    logits = torch.full((1, 10), -30.0)
    logits[0, 3] = 30.0
    cat = utility_stats(logits, "categorical", alpha=0.01)
    assert cat["mean"].item() == pytest.approx(3 / 9, abs=1e-6)
    assert cat["quantile"].item() == pytest.approx(0.301, abs=1e-4)
    with pytest.raises(ValueError, match="variant"):
        utility_stats(out, "gaussian")


def test_r_squared_is_share_of_explained_variance() -> None:
    mean = np.array([0.0, 1.0, 2.0, 3.0])
    assert r_squared(mean, np.zeros(4)) == 1.0
    # Var(mean) = 1.25, mean σ² = 1.25 -> half the variance is hidden
    assert r_squared(mean, np.full(4, np.sqrt(1.25))) == pytest.approx(0.5)
