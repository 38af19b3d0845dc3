"""Training on Ray Train + DeepSpeed: one runner (``runner.fit``) for SFT, DPO and DPL reward models.

from forewarn.training.api import train_sft, train_dpo
from forewarn.training.config import TrainConfig, DPOConfig
from forewarn.training.losses import dpo_loss
"""
