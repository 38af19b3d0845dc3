"""Collect samples, extract features, train and evaluate the loop detector: python jobs/recurrence_detector.py --help"""

from forewarn.runner import job_main

if __name__ == "__main__":
    job_main("recurrence_detector")
