"""forewarn: find, measure and mitigate failures of large language models, on Ray."""

__version__ = "0.1.0"
