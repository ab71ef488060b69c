"""Scoring image collections on a Ray cluster: `diffv2iqa-trt score-dataset` and the function behind it.

Ray (the optional extra `ray`) is imported only when a job runs; listing inputs and reading or writing the output
parts need only pyarrow (which comes with it).
"""

from .job import DatasetOptions, DatasetSummary, RunProgress, ScaleJobError, score_dataset
from .output import ScoringKey

__all__ = ["DatasetOptions", "DatasetSummary", "RunProgress", "ScaleJobError", "ScoringKey", "score_dataset"]
