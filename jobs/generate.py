"""Run prompts through a model role on a Ray Data actor pool: python jobs/generate.py --help"""

from forewarn.runner import job_main

if __name__ == "__main__":
    job_main("generate")
