"""Retrieval-augmented toxicity mitigation (Goodtriever): datastores with faiss, kNN-LM and DExperts decoding,
and the toxicity evaluation (expected maximum toxicity, toxicity probability, perplexity, dist-n).

    from forewarn.goodtriever import build_datastore, build_processor, DatastoreSpec, KnnLMSpec
"""

from forewarn.goodtriever.config import (
    DatastoreSpec,
    DExpertsSpec,
    IndexSpec,
    KnnLMSpec,
    MitigationSpec,
    parse_mitigation,
    resolve_mitigation_names,
)
from forewarn.goodtriever.datastore import build_datastore
from forewarn.goodtriever.processors import build_processor, close_processors

__all__ = [
    "DExpertsSpec",
    "DatastoreSpec",
    "IndexSpec",
    "KnnLMSpec",
    "MitigationSpec",
    "build_datastore",
    "build_processor",
    "close_processors",
    "parse_mitigation",
    "resolve_mitigation_names",
]
