"""A built datastore opened for search, and the kNN next-token distribution (Goodtriever eq., section 3).

``p_kNN(v) = sum_{i: value(id_i) = v} softmax_i(-d_i / T)`` over the k nearest keys (squared L2), and
``log p_kNN`` with ``-inf`` (tokens no neighbour votes for) replaced by ``-10000``. Distances are the index's
(PQ-approximate for IVFPQ) unless ``recompute_dists`` asks for exact distances from the stored fp16 keys.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from forewarn.errors import ConfigError
from forewarn.goodtriever.datastore import INDEX, KEYS, META, VALS
from forewarn.goodtriever.index import load_index

NO_VOTE = -10000.0


@dataclass
class Votes:
    """A kNN distribution in sparse form: per row, the distinct tokens its neighbours vote for.

    ``tokens[b, j]`` and ``logp[b, j]`` for j < the row's number of distinct tokens; the other entries are
    token 0 with ``logp`` -inf (no vote). A row whose neighbours all failed (ids < 0) has no vote at all,
    which :meth:`dense` turns into the uniform distribution. At most k entries per row instead of a
    vocabulary-wide row: the ensemble adds them to the LM scores with one scatter per store.
    """

    tokens: torch.Tensor  # (B, k) long
    logp: torch.Tensor  # (B, k) float32
    vocab_size: int

    def dense(self) -> torch.Tensor:
        """(B, vocab) log-probs, ``NO_VOTE`` where no neighbour votes; uniform for rows without neighbours."""
        b = self.tokens.shape[0]
        probs = torch.zeros(b, self.vocab_size, dtype=torch.float32, device=self.tokens.device)
        probs.scatter_add_(1, self.tokens, self.logp.exp())
        empty = ~torch.isfinite(self.logp).any(dim=1)
        if empty.any():
            probs[empty] = 1.0 / self.vocab_size
        logp = torch.log(probs)
        return logp.masked_fill(torch.isneginf(logp), NO_VOTE)


def knn_votes(
    dists: torch.Tensor, ids: torch.Tensor, vals: torch.Tensor, vocab_size: int, temperature: float
) -> Votes:
    """(B, k) squared distances and neighbour ids -> the sparse kNN distribution (:class:`Votes`).

    Weights softmax(-d / T) over the valid neighbours (ids >= 0), summed per distinct token: the
    neighbours' tokens are sorted per row and each run of equal tokens is one segment.
    """
    valid = ids >= 0
    logits = torch.where(
        valid, -dists.float() / temperature, torch.tensor(float("-inf"), device=dists.device)
    )
    has_any = valid.any(dim=1, keepdim=True)
    weights = torch.softmax(torch.where(has_any, logits, torch.zeros_like(logits)), dim=-1) * valid
    tok_sorted, order = vals[ids.clamp(min=0)].long().sort(dim=1)
    w_sorted = weights.gather(1, order)
    first = torch.ones_like(tok_sorted, dtype=torch.bool)
    first[:, 1:] = tok_sorted[:, 1:] != tok_sorted[:, :-1]
    segment = first.long().cumsum(dim=1) - 1
    probs = torch.zeros_like(w_sorted).scatter_add_(1, segment, w_sorted)
    tokens = torch.zeros_like(tok_sorted).scatter_(1, segment, tok_sorted)
    return Votes(tokens, torch.log(probs), vocab_size)


def knn_log_probs(
    dists: torch.Tensor, ids: torch.Tensor, vals: torch.Tensor, vocab_size: int, temperature: float
) -> torch.Tensor:
    """(B, k) squared distances and neighbour ids -> (B, vocab) kNN log-probs (:meth:`Votes.dense`).

    Ids < 0 (faiss found fewer than k neighbours) get no weight. A row without any neighbour gets the
    uniform distribution (no evidence either way), so it never dominates an ensemble.
    """
    return knn_votes(dists, ids, vals, vocab_size, temperature).dense()


class Datastore:
    """An opened datastore: faiss index for search, values on the query device, keys memory-mapped."""

    def __init__(
        self,
        root: str | Path,
        device: str | torch.device = "cpu",
        gpu: bool | None = None,
        nprobe: int | None = None,
    ):
        self.root = Path(root)
        meta_path = self.root / META
        if not meta_path.is_file():
            raise ConfigError(
                f"datastore {str(self.root)!r} has no {META}: build it first "
                "(forewarn goodtriever build) or point at a built datastore directory"
            )
        self.meta: dict[str, Any] = json.loads(meta_path.read_text())
        self.n, self.dim = int(self.meta["n"]), int(self.meta["dim"])
        self.key_type = self.meta["key_type"]
        spec_index = self.meta["index"]
        self.index = load_index(
            self.root / INDEX,
            nprobe if nprobe is not None else spec_index.get("nprobe"),
            gpu,
            fp16_lookup=self.meta["spec"]["index"].get("fp16_lookup", True),
        )
        vals = np.memmap(self.root / VALS, dtype=np.int32, mode="r", shape=(self.n,))
        self.vals = torch.from_numpy(np.array(vals, dtype=np.int64)).to(device)
        self._keys: np.memmap | None = None

    @property
    def keys(self) -> np.memmap:
        """The stored fp16 keys (N, dim), memory-mapped on first use (exact recomputation, tests)."""
        if self._keys is None:
            self._keys = np.memmap(self.root / KEYS, dtype=np.float16, mode="r", shape=(self.n, self.dim))
        return self._keys

    def check_model(self, model: Any, key_type: str | None = None) -> None:
        """Fail with a clear message if this datastore was built for a different model shape."""
        fp, c = self.meta["fingerprint"], model.config
        got = {"hidden_size": int(c.hidden_size), "vocab_size": int(c.vocab_size)}
        bad = {k: (fp[k], v) for k, v in got.items() if fp[k] != v}
        if bad:
            raise ConfigError(
                f"datastore {str(self.root)!r} was built for {self.meta['model']!r} "
                f"({fp}); the decoding model differs in {bad}. Rebuild the datastore with "
                "this model"
            )
        if key_type is not None and key_type != self.key_type:
            raise ConfigError(
                f"datastore {str(self.root)!r} has key_type {self.key_type!r}, expected "
                f"{key_type!r}; both datastores of one processor must share the key type"
            )

    def search(
        self, queries: torch.Tensor, k: int, recompute: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """k nearest stored keys of each query: (squared L2 distances, ids), both (B, k) on the query device.

        One faiss call for the whole batch. ``recompute`` asks for exact distances: a flat index's are
        exact already (nothing to do); an IVFPQ index's are recomputed from the stored keys.
        """
        k = min(k, self.n)
        q = np.ascontiguousarray(queries.detach().float().cpu().numpy())
        d, i = self.index.search(q, k)
        dists = torch.from_numpy(d).to(queries.device)
        ids = torch.from_numpy(i).to(queries.device)
        if recompute and self.meta["index"]["kind"] != "flat":
            dists = self.exact_dists(queries, ids)
        return dists, ids

    def exact_dists(self, queries: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Exact squared L2 between each query and its neighbours' stored keys (ids < 0 -> +inf).

        The cheapest exact way: each distinct neighbour key is read once for the whole batch (rows of one
        prompt share most neighbours), then ||k||^2 - 2 k.q + ||q||^2 as one batched matrix product.
        """
        uniq, inverse = torch.unique(ids.clamp(min=0).cpu(), return_inverse=True)
        keys = torch.from_numpy(np.asarray(self.keys[uniq.numpy()], dtype=np.float32)).to(queries.device)
        q = queries.float()
        near = keys[inverse.to(queries.device)]  # (B, k, dim)
        d = torch.baddbmm((near * near).sum(-1, keepdim=True), near, q[:, :, None], alpha=-2.0)[..., 0]
        d = d + (q * q).sum(-1, keepdim=True)
        return d.clamp_(min=0.0).masked_fill(ids < 0, float("inf"))

    def votes(
        self, queries: torch.Tensor, k: int, temperature: float, vocab_size: int, recompute: bool = False
    ) -> Votes:
        """The kNN distribution of each query in sparse form (one batched search for all rows)."""
        dists, ids = self.search(queries, k, recompute)
        return knn_votes(dists, ids, self.vals, vocab_size, temperature)

    def log_probs(
        self, queries: torch.Tensor, k: int, temperature: float, vocab_size: int, recompute: bool = False
    ) -> torch.Tensor:
        """The same distribution as (B, vocab) log-probs."""
        return self.votes(queries, k, temperature, vocab_size, recompute).dense()
