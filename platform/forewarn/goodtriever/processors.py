"""``build_processor(spec, model, tokenizer)``: a decoding mitigation config becomes a logits processor.

This is the seam the guarded generator (and the evaluation job) uses::

    from forewarn.goodtriever import build_processor, parse_mitigation
    procs = [build_processor(parse_mitigation(m), gen.model, gen.tokenizer) for m in cfg.mitigations]
    gen.generate(prompts, params, logits_processors=procs)

Paths in the spec must already be local (``resolve_mitigation_names`` maps ``testbed:`` names). Heavy
objects are loaded here, once: datastores (faiss index + values) for ``knn_lm``, the expert and anti-expert
models for ``dexperts`` (on the base model's device). Close a processor to remove its model hook.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from transformers import LogitsProcessor

from forewarn.goodtriever.config import DExpertsSpec, KnnLMSpec, parse_mitigation


def _knn_lm(spec: KnnLMSpec, model: Any, tokenizer: Any) -> LogitsProcessor:
    from forewarn.goodtriever.knn_lm import KnnLMProcessor  # lazy: faiss

    # lazy: goodtriever.store imports this module
    from forewarn.goodtriever.store import Datastore

    device = next(model.parameters()).device

    def open_store(path: str | None) -> Datastore | None:
        return None if path is None else Datastore(path, device=device, gpu=spec.gpu, nprobe=spec.nprobe)

    return KnnLMProcessor(spec, model, toxic=open_store(spec.toxic), nontoxic=open_store(spec.nontoxic))


def _dexperts(spec: DExpertsSpec, model: Any, tokenizer: Any) -> LogitsProcessor:
    # lazy: goodtriever.dexperts imports this module
    from forewarn.goodtriever.dexperts import DExpertsProcessor
    from forewarn.models.hf import load_hf  # lazy: two more models

    device = next(model.parameters()).device

    def load(ms: Any) -> Any:
        m, _ = load_hf(ms.model_copy(update={"device": str(device), "device_map": None}))
        return m

    return DExpertsProcessor(
        spec,
        load(spec.expert),
        load(spec.anti_expert),
        tokenizer.pad_token_id,
        base_vocab_size=int(model.config.vocab_size),
    )


PROCESSORS: dict[str, Callable[[Any, Any, Any], LogitsProcessor]] = {"knn_lm": _knn_lm, "dexperts": _dexperts}


def build_processor(spec: Any, model: Any, tokenizer: Any) -> LogitsProcessor:
    """Build the processor a ``KnnLMSpec`` / ``DExpertsSpec`` (or its dict) describes, for ``model``."""
    spec = parse_mitigation(spec)
    return PROCESSORS[spec.kind](spec, model, tokenizer)


def close_processors(processors: list[Any]) -> None:
    """Remove hooks / caches of processors built here (others are left alone)."""
    for p in processors:
        close = getattr(p, "close", None)
        if callable(close):
            close()
