"""Ray Tune sweep of the evolutionary trigger search: python tune/trigger_search.py --help"""

from forewarn.runner import job_main

if __name__ == "__main__":
    job_main("recurrence_sweep")
