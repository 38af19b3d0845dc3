"""Model divergence: contrastive decoding between two models and an assistant-guided divergence finder.

Plain Python over objects (Ray only in ``scoring.PoolScorer`` and the job):

    from forewarn.contrastive import ContrastiveDecoder, DecoderConfig, DivergenceFinder, FinderConfig
    dec = ContrastiveDecoder.from_specs(start_spec, comparison_spec, DecoderConfig())
    samples = dec.decode(prompts)                 # token-level divergence, mean/max, perplexities
    result = DivergenceFinder(assistant, LocalScorer(dec), FinderConfig()).run(seeds)
"""

from forewarn.contrastive.config import DecoderConfig, FinderConfig
from forewarn.contrastive.decoder import ContrastiveDecoder, DecodedSample, prompt_means, top_k
from forewarn.contrastive.finder import DivergenceFinder, FinderResult
from forewarn.contrastive.scoring import LocalScorer, PoolScorer

__all__ = [
    "ContrastiveDecoder",
    "DecodedSample",
    "DecoderConfig",
    "DivergenceFinder",
    "FinderConfig",
    "FinderResult",
    "LocalScorer",
    "PoolScorer",
    "prompt_means",
    "top_k",
]
