"""Training on Ray Train + DeepSpeed: SFT, DPO or a DPL reward model (``task=sft|dpo|reward``).

python jobs/train.py [--config FILE] [--set task=sft ...] [--output-dir DIR]
"""

from forewarn.runner import job_main

if __name__ == "__main__":
    job_main("train")
