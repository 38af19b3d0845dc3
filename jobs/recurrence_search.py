"""GA and random search for loop triggers on a target: python jobs/recurrence_search.py --help"""

from forewarn.runner import job_main

if __name__ == "__main__":
    job_main("recurrence_search")
