"""Divergence analysis of a contrastive run (hypotheses, experiments on Ray, HTML report).

python jobs/analyze.py --help
"""

from forewarn.runner import job_main

if __name__ == "__main__":
    job_main("analyze")
