"""Distributional preference learning: the 1-D toy experiment or the evaluation of reward models.

python jobs/dpl.py [--set mode=toy|eval|testbed ...] [--output-dir DIR]
"""

from forewarn.runner import job_main

if __name__ == "__main__":
    job_main("dpl")
