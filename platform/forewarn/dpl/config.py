"""Config sections of distributional preference learning (reference: ../shared/reference/dpl.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from forewarn.config import Section
from forewarn.training.config import TrainConfig

Variant = Literal["base", "mean_and_variance", "categorical"]
VARIANTS: tuple[str, ...] = ("base", "mean_and_variance", "categorical")


class RewardConfig(TrainConfig):
    """A reward model on a sequence-classification head (dpl.md §3): base (Bradley–Terry), mean-and-variance
    or categorical DPL. Defaults follow the reference: AdamW, weight decay 0.001, cosine with a 0.1 floor."""

    variant: Variant = "base"
    n_atoms: int = Field(10, ge=2, description="categorical atoms linspace(0, 1, n_atoms)")
    entropy_coeff: float = Field(
        0.1, ge=0, description="categorical: weight of the batch-marginal entropy bonus"
    )
    variance_penalty: float = Field(0.0, ge=0, description="mean_and_variance: training-only σ² penalty")
    head_init_scale: float = Field(
        0.01, gt=0, description="score-head weights are multiplied by this at init"
    )
    weight_decay: float = 0.001
    schedule: Literal["constant", "linear", "cosine"] = "cosine"
    min_lr_ratio: float = 0.1

    @property
    def num_outputs(self) -> int:
        return {"base": 1, "mean_and_variance": 2, "categorical": self.n_atoms}[self.variant]


class EvalConfig(Section):
    """``forewarn dpl eval``: score test pairs and jailbreak pairs with trained reward models."""

    models: dict[str, str] = Field(
        default_factory=dict, description="name -> reward-model folder (its variant is in its config.json)"
    )
    pairs: str = Field(
        "testbed:preferences_test@small", description="(prompt, chosen, rejected[, disputed]) rows"
    )
    jailbreak: str | None = Field("testbed:jailbreak@small", description="(prompt, safe, jailbroken) rows")
    alpha: float = Field(0.01, gt=0, lt=1, description="lower quantile of the risk-sensitive reward")
    batch_size: int = Field(32, ge=1)
    max_length: int = Field(512, ge=8)
    max_prompt_length: int = Field(256, ge=1)
    use_chat_template: bool = True
    num_cpus: float = Field(1.0, gt=0)


class ToyConfig(Section):
    """The 1-D hidden-context experiment of the paper's Figure 1 (dpl.md §2); defaults are the reference run
    except the MLP width (64, not 512: same figure and NLL ordering, 1/19 of the CPU per step)."""

    batch_size: int = Field(2048, ge=2)
    lr: float = Field(1e-3, gt=0)
    num_iterations: int = Field(1000, ge=1)
    hidden: int = Field(64, ge=4, description="MLP width (the reference used 512)")
    n_atoms: int = Field(20, ge=2, description="categorical atoms (synthetic version: 20)")
    max_std: float | None = Field(None, gt=0, description="clamp of σ̂ for mean-and-variance; null = no clamp")
    grid_points: int = Field(101, ge=11)
    heldout_pairs: int = Field(20000, ge=100)
    num_cpus: float = Field(
        1.0,
        gt=0,
        description="torch threads while the three variants train (in process, one after the other)",
    )
