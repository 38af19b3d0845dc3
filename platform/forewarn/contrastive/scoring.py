"""Scoring prompts with the contrastive decoder: in process, or in parallel through Ray Data.

:class:`DecoderUDF` is the actor body: it loads both models once (in its constructor, with torch's threads
set to the actor's CPU share) and decodes a batch of prompts. :class:`RayDataScorer` is a finder scorer
(``prompts -> DecodedSample list``) that maps the candidates of a cycle over an actor pool of them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pandas as pd

from forewarn.config import ModelSpec, Resources
from forewarn.contrastive.config import DecoderConfig
from forewarn.contrastive.decoder import ContrastiveDecoder, DecodedSample
from forewarn.pools import data_stage, set_torch_threads

SAMPLE_FIELDS = [f.name for f in dataclasses.fields(DecodedSample) if f.name != "extra"]


def sample_to_dict(s: DecodedSample) -> dict[str, Any]:
    return {k: getattr(s, k) for k in SAMPLE_FIELDS}


def sample_from_dict(row: dict[str, Any]) -> DecodedSample:
    data = {k: row[k] for k in SAMPLE_FIELDS}
    for k in ("tokens", "token_ids", "token_divergences"):
        data[k] = list(data[k])
    for k in ("prompt_index", "sample", "n_prompt_tokens"):
        data[k] = int(data[k])
    return DecodedSample(**data)


class DecoderUDF:
    """Ray Data actor: one :class:`ContrastiveDecoder` per actor; one output row per (prompt, sample)."""

    def __init__(self, start: ModelSpec, comparison: ModelSpec, cfg: DecoderConfig, num_cpus: float):
        set_torch_threads(num_cpus)
        self.decoder = ContrastiveDecoder.from_specs(start, comparison, cfg)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        samples = self.decoder.decode([str(p) for p in batch["prompt"]])
        index = [int(i) for i in batch["prompt_index"]]
        rows = []
        for s in samples:
            row = sample_to_dict(s)
            row["prompt_index"] = index[s.prompt_index]  # batch-local -> the caller's index
            rows.append(row)
        return pd.DataFrame(rows, columns=SAMPLE_FIELDS)


def decode_stage(
    ds: Any, start: ModelSpec, comparison: ModelSpec, cfg: DecoderConfig, resources: Resources
) -> Any:
    """Map a dataset with ``prompt_index`` and ``prompt`` columns to decoded-sample rows on an actor pool."""
    return data_stage(
        ds,
        DecoderUDF,
        dict(start=start, comparison=comparison, cfg=cfg, num_cpus=resources.num_cpus),
        resources,
    )


class RayDataScorer:
    """A finder scorer that decodes each cycle's candidates in parallel through Ray Data.

    The actor pool is built per call (Ray Data datasets are one-shot), so each cycle reloads the models;
    on small models that is negligible next to decoding.
    """

    def __init__(self, start: ModelSpec, comparison: ModelSpec, cfg: DecoderConfig, resources: Resources):
        self.start, self.comparison, self.cfg, self.resources = start, comparison, cfg, resources

    def __call__(self, prompts: list[str]) -> list[DecodedSample]:
        import ray

        if not prompts:
            return []
        items = [{"prompt_index": i, "prompt": p} for i, p in enumerate(prompts)]
        ds = ray.data.from_items(items, override_num_blocks=min(len(items), 4 * self.resources.replicas))
        df = decode_stage(ds, self.start, self.comparison, self.cfg, self.resources).to_pandas()
        samples = [sample_from_dict(r) for r in df.to_dict("records")]
        return sorted(samples, key=lambda s: (s.prompt_index, s.sample))


class LocalScorer:
    """A finder scorer that decodes in this process (tests, notebooks, one-GPU runs)."""

    def __init__(self, decoder: ContrastiveDecoder):
        self.decoder = decoder

    def __call__(self, prompts: list[str]) -> list[DecodedSample]:
        return self.decoder.decode(prompts)
