"""The target as a small Ray actor pool, and the evaluator that turns id sequences into analysed responses.

The GA sends one population (tens of short prompts) per iteration; a Ray Data pipeline per iteration would
cost more in start-up than the generation itself, so the search keeps a long-lived role pool
(``forewarn.pools.RolePool``): a few actors, each loading the target once (any Generator backend) and asking
Ray for the role's ``num_cpus`` / ``num_gpus`` (inside its placement group, if any), with torch threads
matched to its CPU share.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from forewarn.config import GenerationParams, ModelSpec, RoleConfig
from forewarn.models import load_generator
from forewarn.pools import RolePool, set_torch_threads
from forewarn.recurrence.config import DetectSection
from forewarn.recurrence.cycles import analyse
from forewarn.recurrence.search import Evaluation, Ids


class TargetWorker:
    """Actor body: one Generator; ``generate`` returns (text, token ids, finish reason, seconds per row)."""

    def __init__(self, spec: ModelSpec, params: GenerationParams, num_cpus: float):
        set_torch_threads(num_cpus)
        self.gen = load_generator(spec)
        self.params = params

    def generate(self, prompts: list[str]) -> list[tuple[str, list[int], str, float]]:
        start = time.perf_counter()
        outs = self.gen.generate(prompts, self.params)
        per_row = (time.perf_counter() - start) / max(1, len(prompts))  # batched: the batch time, shared
        return [(row[0].text, list(row[0].token_ids), row[0].finish_reason, per_row) for row in outs]


class TargetPool:
    """The target as a long-lived ``forewarn.pools.RolePool`` of ``role.resources.replicas`` TargetWorker actors;
    ``generate`` spreads batches of ``batch_size`` over them and keeps the order."""

    def __init__(self, role: RoleConfig, params: GenerationParams):
        self.pool = RolePool(
            "target", partial(TargetWorker, role.model, params, role.resources.num_cpus), role.resources
        )

    def generate(self, prompts: Sequence[str]) -> list[tuple[str, list[int], str, float]]:
        return self.pool.map("generate", {"prompts": list(prompts)})

    def close(self) -> None:
        self.pool.close()


def search_vocab(tokenizer: Any, exclude_special: bool = True) -> list[int]:
    """Token ids the search may draw: the whole vocabulary, special tokens (EOS, chat markers) left out."""
    special = set(tokenizer.all_special_ids) if exclude_special else set()
    return [i for i in range(len(tokenizer)) if i not in special]


def make_evaluator(
    generate: Callable[[Sequence[str]], list[tuple[str, list[int], str, float]]],
    tokenizer: Any,
    params: GenerationParams,
    detect: DetectSection,
    contexts: Sequence[str] = (),
) -> Callable[[list[Ids]], list[Evaluation]]:
    """Wrap a batch ``generate`` into the GA's ``evaluate``: decode ids to a prompt, generate, analyse.

    The prompt is ``decode(ids)`` put into each of ``contexts`` (or alone), sent as one user turn through the
    backend (the chat template adds the
    generation prompt the original omitted). Backends that return no token ids (openai) are re-tokenised.
    """

    slots = list(contexts) or ["{trigger}"]

    def evaluate(batch: list[Ids]) -> list[Evaluation]:
        prompts = [c.replace("{trigger}", tokenizer.decode(list(ids))) for ids in batch for c in slots]
        outs = generate(prompts)
        evals = []
        for i, ids in enumerate(batch):
            recs, rows = [], outs[i * len(slots) : (i + 1) * len(slots)]
            for text, tids, _, _ in rows:
                if not tids and text:
                    tids = tokenizer(text, add_special_tokens=False)["input_ids"]
                recs.append(
                    analyse(
                        tids,
                        params.max_new_tokens,
                        cap_margin=detect.cap_margin,
                        max_period=detect.max_period,
                        min_repeats=detect.min_repeats,
                        ngram=detect.ngram,
                        min_loop_share=detect.min_loop_share,
                        min_loop_tokens=detect.min_loop_tokens,
                    )
                )
            text, tids, finish, _ = rows[0]
            evals.append(
                Evaluation(
                    ids=tuple(ids),
                    prompt=prompts[i * len(slots)],
                    response=text,
                    response_ids=list(tids),
                    finish_reason=finish,
                    seconds=sum(r[3] for r in rows),
                    recurrence=recs[0],
                    recurrences=recs if contexts else [],
                )
            )
        return evals

    return evaluate
