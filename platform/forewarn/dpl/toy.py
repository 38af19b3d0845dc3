"""The 1-D hidden-context experiment of the DPL paper's Figure 1 (dpl.md §2).

Alternatives a ~ U[0, 1]; u(a) = a below 0.8, and above 0.8 u(a) = 2a or 0 with a fresh fair coin per
comparison (the hidden context), so E[u] = a everywhere. A Bradley–Terry model learns the Borda count
(it drops at 0.8); mean-and-variance DPL keeps μ̂ rising with σ̂ large above 0.8; categorical DPL becomes
bimodal above 0.8. The three variants train one after the other in this process (small MLPs on online
batches), then are evaluated on a grid and on fresh held-out pairs.

Where the time went before: the variants ran as three Ray tasks on a two-core machine with the
reference's 512-wide MLP at batch 2048 (2 x 2048 inputs per step): ~13 GFLOP per step, 3000 steps, about
330 s of plain matmul work on two cores; on top, each step freed and re-allocated its 8 MB activation
buffers, which glibc hands back to the kernel and the kernel zero-fills again (~8,000 page faults per
step, the system-CPU share). A 1-D input needs no such width: 64 hidden units keep every check of the
figure and the NLL ordering at 1/19 of the CPU per training step, measured (``toy.hidden=512``
restores the reference).

    forewarn dpl toy --set toy.num_iterations=300
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from forewarn.dpl.config import VARIANTS, ToyConfig
from forewarn.training.losses import bradley_terry_loss, categorical_loss, mean_variance_loss


def sample_utility(a: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One draw of the hidden-context utility of each alternative."""
    coin = torch.rand(a.shape, generator=gen) < 0.5
    return torch.where(a < 0.8, a, torch.where(coin, 2 * a, torch.zeros_like(a)))


def sample_pairs(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(s0, s1, pref)`` with pref = 1[u(s1) > u(s0)] (ties go to s0)."""
    s0, s1 = torch.rand(n, 1, generator=gen), torch.rand(n, 1, generator=gen)
    pref = (sample_utility(s1, gen) > sample_utility(s0, gen)).float()[:, 0]
    return s0, s1, pref


def borda_count(a: np.ndarray) -> np.ndarray:
    """Analytic Borda count (ties ½): 0.1 + a below 0.8, 0.275 + 0.25a above."""
    return np.where(a < 0.8, 0.1 + a, 0.275 + 0.25 * a)


def make_mlp(out: int, hidden: int, batch_norm: bool) -> nn.Module:
    """4 Linear layers with ReLU; BatchNorm for the categorical variant (as the reference code)."""
    layers: list[nn.Module] = []
    width = 1
    for _ in range(3):
        layers += [nn.Linear(width, hidden)] + ([nn.BatchNorm1d(hidden)] if batch_norm else []) + [nn.ReLU()]
        width = hidden
    return nn.Sequential(*layers, nn.Linear(hidden, out))


def mv_sigma(s: torch.Tensor, max_std: float | None) -> torch.Tensor:
    """Synthetic mean-and-variance: log σ = s − 2, clamped above at log(max_std)."""
    log_std = s - 2
    if max_std is not None:
        log_std = log_std.clamp(max=math.log(max_std))
    return log_std.exp()


def pref_nll(
    variant: str, out0: torch.Tensor, out1: torch.Tensor, pref: torch.Tensor, max_std: float | None
) -> torch.Tensor:
    """Per-pair −log P(observed preference); pref = 1 means s1 was preferred."""
    if variant == "base":
        return torch.where(
            pref > 0, bradley_terry_loss(out1[:, 0], out0[:, 0]), bradley_terry_loss(out0[:, 0], out1[:, 0])
        )
    if variant == "mean_and_variance":
        s0, s1 = mv_sigma(out0[:, 1], max_std), mv_sigma(out1[:, 1], max_std)
        return torch.where(
            pref > 0,
            mean_variance_loss(out1[:, 0], s1, out0[:, 0], s0),
            mean_variance_loss(out0[:, 0], s0, out1[:, 0], s1),
        )
    return torch.where(pref > 0, categorical_loss(out1, out0), categorical_loss(out0, out1))


def train_variant(variant: str, cfg: ToyConfig, seed: int = 0) -> dict[str, Any]:
    """Train one variant on online batches and evaluate it on the grid and on held-out pairs."""
    torch.set_num_threads(max(1, int(cfg.num_cpus)))
    torch.manual_seed(seed)
    out_dim = {"base": 1, "mean_and_variance": 2, "categorical": cfg.n_atoms}[variant]
    model = make_mlp(out_dim, cfg.hidden, batch_norm=variant == "categorical")
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=(1e-5 / cfg.lr) ** (1 / cfg.num_iterations))
    gen = torch.Generator().manual_seed(seed + 1)
    for _ in range(cfg.num_iterations):
        s0, s1, pref = sample_pairs(cfg.batch_size, gen)
        out = model(torch.cat([s0, s1]))
        loss = pref_nll(variant, out[: cfg.batch_size], out[cfg.batch_size :], pref, cfg.max_std).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    grid = torch.linspace(0, 1, cfg.grid_points)[:, None]
    s0, s1, pref = sample_pairs(cfg.heldout_pairs, torch.Generator().manual_seed(10_000 + seed))
    with torch.no_grad():
        g = model(grid)
        h = model(torch.cat([s0, s1]))
        nll = pref_nll(variant, h[: cfg.heldout_pairs], h[cfg.heldout_pairs :], pref, cfg.max_std).mean()
    result: dict[str, Any] = {"variant": variant, "grid": grid[:, 0].tolist(), "heldout_nll": float(nll)}
    if variant == "base":
        result["utility"] = g[:, 0].tolist()
    elif variant == "mean_and_variance":
        result["mean"], result["std"] = g[:, 0].tolist(), mv_sigma(g[:, 1], cfg.max_std).tolist()
    else:
        p = g.softmax(-1)
        atoms = torch.linspace(0, 1, cfg.n_atoms)
        mean = (p * atoms).sum(-1)
        result["mean"], result["probs"] = mean.tolist(), p.tolist()
        result["std"] = ((p * (atoms - mean[:, None]) ** 2).sum(-1)).sqrt().tolist()
    return result


def _at(res: dict, key: str, a: float) -> float:
    grid = np.array(res["grid"])
    return float(np.array(res[key])[int(np.argmin(np.abs(grid - a)))])


def summarize(results: dict[str, dict]) -> dict[str, Any]:
    """The headline checks of Figure 1, seed-independent (dpl.md §2)."""
    base, mv, cat = results["base"], results["mean_and_variance"], results["categorical"]
    grid = np.array(base["grid"])
    below, above = grid < 0.8, grid >= 0.8
    probs = np.array(cat["probs"])
    i09 = int(np.argmin(np.abs(grid - 0.9)))
    from scipy.stats import spearmanr

    return {
        "base_utility_at_0.79": _at(base, "utility", 0.79),
        "base_utility_at_0.80": _at(base, "utility", 0.80),
        "base_drop_at_0.8": _at(base, "utility", 0.79) - _at(base, "utility", 0.81),
        "base_rank_corr_borda": float(spearmanr(base["utility"], borda_count(grid)).statistic),
        "mv_mean_at_0.79": _at(mv, "mean", 0.79),
        "mv_mean_at_1.0": _at(mv, "mean", 1.0),
        "mv_sigma_below_0.8_median": float(np.median(np.array(mv["std"])[below])),
        "mv_sigma_above_0.8_median": float(np.median(np.array(mv["std"])[above])),
        "categorical_std_below_0.8_median": float(np.median(np.array(cat["std"])[below])),
        "categorical_std_above_0.8_median": float(np.median(np.array(cat["std"])[above])),
        "categorical_mass_lowest_atom_at_0.9": float(probs[i09, 0]),
        "categorical_mass_highest_atom_at_0.9": float(probs[i09, -1]),
        "heldout_nll": {k: results[k]["heldout_nll"] for k in VARIANTS},
    }


def plot(results: dict[str, dict]) -> Any:
    """Three panels: base û(a); μ̂ ± σ̂ of mean-and-variance; p̂(u | a) of categorical, each with E[u] = a."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    grid = np.array(results["base"]["grid"])
    axes[0].plot(grid, results["base"]["utility"], label="base û(a)")
    axes[0].set_title("Bradley–Terry (Borda count)")
    mv = results["mean_and_variance"]
    mu, sd = np.array(mv["mean"]), np.clip(np.array(mv["std"]), 0, 10)
    axes[1].plot(grid, mu, label="μ̂(a)")
    axes[1].fill_between(grid, mu - sd, mu + sd, alpha=0.3, label="± σ̂ (clipped at 10)")
    axes[1].set_title("mean-and-variance DPL")
    probs = np.array(results["categorical"]["probs"])
    axes[2].imshow(probs.T, origin="lower", aspect="auto", extent=(0, 1, 0, 1), cmap="Blues")
    axes[2].set_title("categorical DPL p̂(u | a)")
    for ax in axes:
        ax.axvline(0.8, color="grey", ls=":")
        ax.set_xlabel("alternative a")
    axes[0].legend(), axes[1].legend()
    fig.tight_layout()
    return fig


def table_rows(
    results: dict[str, dict], points: tuple[float, ...] = (0, 0.2, 0.4, 0.6, 0.79, 0.8, 0.9, 1.0)
) -> list[dict[str, float]]:
    """The reference table of dpl.md §2 at its grid points."""
    base, mv, cat = results["base"], results["mean_and_variance"], results["categorical"]
    return [
        {
            "a": a,
            "base_utility": _at(base, "utility", a),
            "mv_mean": _at(mv, "mean", a),
            "mv_std": _at(mv, "std", a),
            "categorical_mean": _at(cat, "mean", a),
            "categorical_std": _at(cat, "std", a),
        }
        for a in points
    ]


def run_toy(cfg: ToyConfig, seed: int = 0) -> dict[str, dict]:
    """Train the three variants one after the other in this process; returns variant -> result.

    Seconds of work each at the defaults: no Ray task or worker process is worth starting for them.
    Torch uses ``cfg.num_cpus`` threads meanwhile (restored afterwards).
    """
    threads = torch.get_num_threads()
    try:
        return {v: train_variant(v, cfg, seed) for v in VARIANTS}
    finally:
        torch.set_num_threads(threads)
