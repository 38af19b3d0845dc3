"""ReverseGen: a proposer learns, by DPO, to write instructions that make the target fail.

python jobs/reversegen.py [--config FILE] [--set key=value ...] [--output-dir DIR]
"""

from forewarn.runner import job_main

if __name__ == "__main__":
    job_main("reversegen")
