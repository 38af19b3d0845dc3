"""Model divergence on Ray (contrastive decoding / divergence finder): python jobs/contrastive.py --help"""

from forewarn.runner import job_main

if __name__ == "__main__":
    job_main("contrastive")
