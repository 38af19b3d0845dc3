"""Decoding-time mitigations: config entries that become ``transformers.LogitsProcessor`` objects.

Each mitigation is a spec (a :class:`forewarn.config.Section` with a ``kind`` literal) in the
:data:`forewarn.serve.config.DecodingSpec` union, and :data:`DECODING_BUILDERS` maps its kind to the
function that builds its processor: the plug-in pattern of backends, judges and stop detectors. The
processor is built once per generator replica (Goodtriever's faiss index, DExperts' expert models are
loaded then) and called on every decoding step of every batch, so it must not carry per-call state
from one ``generate`` call to the next.

Kinds: transformers' own processors ``no_repeat_ngram`` (a classic anti-loop decoding constraint) and
``banned_words`` (word-list filtering, the simplest toxicity baseline), and the goodtriever package's
``knn_lm`` (Goodtriever: kNN-LM over toxic / non-toxic datastores) and ``dexperts``.

:class:`OpenAIPenaltyProcessor` is not a mitigation: it honours the request's ``presence_penalty`` and
``frequency_penalty`` exactly as OpenAI defines them (counts over generated tokens only).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from pydantic import Field
from transformers import LogitsProcessor, NoBadWordsLogitsProcessor, NoRepeatNGramLogitsProcessor

from forewarn.config import Section
from forewarn.goodtriever.processors import build_processor


class NoRepeatNGramSpec(Section):
    """``{kind: no_repeat_ngram, size: 4}``: never generate an n-gram that already occurs in the sequence."""

    kind: Literal["no_repeat_ngram"] = "no_repeat_ngram"
    size: int = Field(4, ge=1, description="n of the n-grams that may not repeat")


class BannedWordsSpec(Section):
    """``{kind: banned_words, words: [...]}``: never generate the token sequences of these words
    (each word with and without a leading space, as a byte-level BPE writes it mid-sentence)."""

    kind: Literal["banned_words"] = "banned_words"
    words: list[str] = Field(min_length=1, description="words or phrases that may not be generated")


def _no_repeat_ngram(spec: NoRepeatNGramSpec, generator: Any) -> LogitsProcessor:
    return NoRepeatNGramLogitsProcessor(spec.size)


def _banned_words(spec: BannedWordsSpec, generator: Any) -> LogitsProcessor:
    tok = generator.tokenizer
    seqs: list[list[int]] = []
    for w in spec.words:
        for variant in (w, " " + w):
            ids = tok(variant, add_special_tokens=False)["input_ids"]
            if ids and ids not in seqs:
                seqs.append(ids)
    return NoBadWordsLogitsProcessor(seqs, eos_token_id=tok.eos_token_id)


def _retrieval(spec: Any, generator: Any) -> LogitsProcessor:
    """kNN-LM / DExperts: ``testbed:`` names in the spec resolved, stores or expert models loaded once."""
    # lazy: faiss and the datastores (kNN-LM) or two more models (DExperts) load only when configured
    from forewarn.goodtriever.config import resolve_mitigation_names

    return build_processor(resolve_mitigation_names(spec), generator.model, generator.tokenizer)


# A new mitigation is a spec in guard.config.DecodingSpec and one line here.
DECODING_BUILDERS: dict[str, Callable[[Any, Any], LogitsProcessor]] = {
    "no_repeat_ngram": _no_repeat_ngram,
    "banned_words": _banned_words,
    "knn_lm": _retrieval,
    "dexperts": _retrieval,
}


def build_decoding(spec: Any, generator: Any) -> LogitsProcessor:
    """The logits processor a ``generator.decoding`` entry describes, for ``generator`` (hf backend)."""
    return DECODING_BUILDERS[spec.kind](spec, generator)


class OpenAIPenaltyProcessor(LogitsProcessor):
    """OpenAI's penalties: ``logit[j] -= count_j * frequency + (count_j > 0) * presence``, where count_j is
    how often token j was generated so far in this row (the prompt does not count). One per call."""

    def __init__(self, presence: float, frequency: float):
        self.presence, self.frequency = presence, frequency
        self.prompt_len: int | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.prompt_len is None:  # the first call sees the prompt only
            self.prompt_len = input_ids.shape[1]
        gen = input_ids[:, self.prompt_len :]
        if gen.shape[1] == 0:
            return scores
        counts = torch.zeros_like(scores)
        counts.scatter_add_(1, gen, torch.ones_like(gen, dtype=scores.dtype))
        return scores - counts * self.frequency - (counts > 0).to(scores.dtype) * self.presence
