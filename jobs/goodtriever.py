"""Goodtriever toxicity mitigation on Ray (datastores, kNN-LM, DExperts, evaluation).

python jobs/goodtriever.py --help
"""

from forewarn.runner import job_main

if __name__ == "__main__":
    job_main("goodtriever")
