"""kNN-LM decoding (Goodtriever) as a ``transformers.LogitsProcessor`` for the HF backend.

At each step the processor takes the query the forward hook captured (last position, same hook as the
datastore keys), retrieves k neighbours from each datastore, and replaces the scores with::

    lm   = top_p_filter(log_softmax(scores), filter_p)           # -inf outside the base nucleus
    score = log_softmax(lm + alpha * (added - subtracted))         # method "ensemble"

where (toxic, nontoxic) play the roles ``ensemble_order`` gives them (default: subtract toxic, add
non-toxic) and a missing store is replaced by ``lm``. kNN log-probs are patched first: entries <= -50 become
the row's smallest entry > -50. Differences from the original, on purpose: the order option is honoured;
the patch is per row (the original took one minimum over the whole batch, so rows influenced each other);
the LM stand-in is patched on a copy, so the nucleus filter of ``lm`` survives. The other methods (one
store): ``interpolate`` = log((1 - lmbda) p_lm + lmbda p_knn), ``interpolate_discourage`` =
log(relu((1 + lmbda) p_lm - lmbda p_knn)).

Cost per decoding step: one batched faiss search per store for all rows, and the kNN distributions stay
sparse (:class:`~forewarn.goodtriever.store.Votes`, k entries per row): beyond the search a step is a top-k
nucleus (no vocabulary sort), one scatter per store and one log_softmax over the vocabulary.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import LogitsProcessor

from forewarn.goodtriever.config import KnnLMSpec
from forewarn.goodtriever.hooks import HiddenCapture
from forewarn.goodtriever.store import Datastore, Votes

PATCH_FLOOR = -50.0


def top_p_filter(logp: torch.Tensor, top_p: float, first_k: int = 64) -> torch.Tensor:
    """Set log-probs outside the smallest set with mass >= top_p to -inf (0 or 1 disables; top-1 kept).

    Exact without sorting the vocabulary: the nucleus is decided inside the top-k as soon as the top-k
    hold >= top_p of every row's mass (every later token then has >= top_p before it); k starts at
    ``first_k`` and grows 4x until that holds.
    """
    if top_p <= 0.0 or top_p >= 1.0:
        return logp
    vocab = logp.shape[-1]
    k = min(first_k, vocab)
    while True:
        vals, idx = torch.topk(logp, k, dim=-1)
        probs = vals.exp()
        cum = probs.cumsum(dim=-1)
        if k == vocab or bool((cum[..., -1] >= top_p).all()):
            break
        k = min(vocab, 4 * k)
    keep = cum - probs < top_p  # mass before this token has not reached top_p yet
    keep[..., 0] = True
    neg_inf = torch.tensor(float("-inf"), dtype=logp.dtype, device=logp.device)
    return torch.full_like(logp, float("-inf")).scatter_(-1, idx, torch.where(keep, vals, neg_inf))


def patch_log_probs(logp: torch.Tensor, floor: float = PATCH_FLOOR) -> torch.Tensor:
    """Per row, raise entries <= floor (and -inf) to the smallest entry > floor (a copy is returned)."""
    above = logp > floor
    row_min = torch.where(above, logp, torch.full_like(logp, float("inf"))).min(dim=-1, keepdim=True).values
    row_min = torch.where(torch.isinf(row_min), torch.full_like(row_min, floor), row_min)
    return torch.where(above, logp, row_min.expand_as(logp))


def patch_votes(votes: Votes, floor: float = PATCH_FLOOR) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`patch_log_probs` of a sparse distribution, up to a per-row constant: (tokens, delta) with
    patched = c + delta, c = the row's smallest log-prob > floor. Every token without a vote (or <= floor)
    gets c, so delta is 0 there; a per-row constant cancels in the ensemble's log_softmax."""
    above = votes.logp > floor
    row_min = torch.where(above, votes.logp, torch.full_like(votes.logp, float("inf"))).min(
        dim=1, keepdim=True
    )
    delta = torch.where(above, votes.logp - row_min.values, torch.zeros_like(votes.logp))
    return votes.tokens, delta


Dist = torch.Tensor | Votes  # a dense (B, vocab) log-prob tensor, or a sparse kNN distribution


def _add_patched(out: torch.Tensor, dist: Dist, weight: float) -> None:
    """out += weight * patch(dist), in place; for :class:`Votes` only the voted tokens are touched."""
    if isinstance(dist, Votes):
        tokens, delta = patch_votes(dist)
        out.scatter_add_(1, tokens, delta.mul_(weight))
    else:
        out.add_(patch_log_probs(dist), alpha=weight)


def ensemble(
    lm: torch.Tensor,
    toxic: Dist | None,
    nontoxic: Dist | None,
    alpha: float,
    order: tuple[str, str] = ("subtract", "add"),
) -> torch.Tensor:
    """``log_softmax(lm + alpha * (added - subtracted))``; ``order`` = roles of (toxic, nontoxic).

    Stores given as :class:`Votes` cost a scatter of k entries per row instead of vocabulary-wide passes;
    the result equals the dense formula (patched rows differ from it by per-row constants only).
    """
    tox = toxic if toxic is not None else lm
    non = nontoxic if nontoxic is not None else lm
    roles = dict(zip(order, (tox, non)))
    if set(roles) != {"add", "subtract"}:
        raise ValueError(f"ensemble order must be ('subtract', 'add') or ('add', 'subtract'), got {order}")
    out = lm.clone()
    _add_patched(out, roles["add"], alpha)
    _add_patched(out, roles["subtract"], -alpha)
    return torch.log_softmax(out, dim=-1)


def interpolate(lm: torch.Tensor, knn: torch.Tensor, lmbda: float) -> torch.Tensor:
    return torch.logaddexp(lm + math.log(1 - lmbda), knn + math.log(lmbda))


def interpolate_discourage(lm: torch.Tensor, knn: torch.Tensor, lmbda: float) -> torch.Tensor:
    return torch.log(torch.relu((1 + lmbda) * lm.exp() - lmbda * knn.exp()))


class KnnLMProcessor(LogitsProcessor):
    """Goodtriever kNN-LM over the toxic and/or non-toxic datastore, for ``model.generate``.

    The processor hooks ``model`` at construction (the hook only copies the last position's state);
    call :meth:`close` (or use it as a context manager) to remove the hook. It is stateless between
    calls, so one instance serves many ``generate`` calls, also from several threads.
    """

    def __init__(
        self, spec: KnnLMSpec, model: Any, toxic: Datastore | None = None, nontoxic: Datastore | None = None
    ):
        if toxic is None and nontoxic is None:
            raise ValueError("KnnLMProcessor needs at least one datastore")
        self.spec, self.toxic, self.nontoxic = spec, toxic, nontoxic
        stores = [s for s in (toxic, nontoxic) if s is not None]
        key_type = stores[0].key_type
        for s in stores:
            s.check_model(model, key_type)
        self.capture = HiddenCapture(model, key_type, last_only=True)
        self.vocab_size = int(model.config.vocab_size)
        self.calls = 0

    def knn(self, store: Datastore | None, queries: torch.Tensor, vocab: int) -> Votes | None:
        """One batched faiss search for all rows of this step; the distribution stays sparse."""
        if store is None:
            return None
        return store.votes(queries, self.spec.k, self.spec.temperature, vocab, self.spec.recompute_dists)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        queries = self.capture.value
        if queries.shape[0] != scores.shape[0]:
            raise RuntimeError(
                f"captured {queries.shape[0]} queries for {scores.shape[0]} rows of scores: the "
                "processor is attached to another model than the one generating"
            )
        vocab = scores.shape[-1]
        lm = top_p_filter(torch.log_softmax(scores.float(), dim=-1), self.spec.filter_p)
        tox, non = self.knn(self.toxic, queries, vocab), self.knn(self.nontoxic, queries, vocab)
        self.calls += 1
        if self.spec.method == "ensemble":
            out = ensemble(lm, tox, non, self.spec.alpha, self.spec.ensemble_order)
        else:
            knn = (tox if tox is not None else non).dense()
            fn = interpolate if self.spec.method == "interpolate" else interpolate_discourage
            out = fn(lm, knn, self.spec.lmbda)
        return out.to(scores.dtype)

    def close(self) -> None:
        self.capture.close()

    def __enter__(self) -> "KnnLMProcessor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
