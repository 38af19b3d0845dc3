"""Distributional preference learning: reward models that expose hidden context (reference: dpl.md).

from forewarn.dpl.reward import train_reward, RewardScorer   # base / mean_and_variance / categorical
from forewarn.dpl.toy import run_toy                          # the 1-D experiment of Figure 1
"""
