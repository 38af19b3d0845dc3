"""A built datastore opened for search, and the kNN next-token distribution (Goodtriever eq., section 3).

``p_kNN(v) = sum_{i: value(id_i) = v} softmax_i(-d_i / T)`` over the k nearest keys (squared L2), and
``log p_kNN`` with ``-inf`` (tokens no neighbour votes for) replaced by ``-10000``. Distances are the index's
(PQ-approximate for IVFPQ) unless ``recompute_dists`` asks for exact distances from the stored fp16 keys.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from forewarn.errors import ConfigError
from forewarn.retrieval.datastore import INDEX, KEYS, META, VALS

NO_VOTE = -10000.0


def knn_log_probs(dists: torch.Tensor, ids: torch.Tensor, vals: torch.Tensor, vocab_size: int,
                  temperature: float) -> torch.Tensor:
    """(B, k) squared distances and neighbour ids -> (B, vocab) kNN log-probs.

    Ids < 0 (faiss found fewer than k neighbours) get no weight. A row without any neighbour gets the
    uniform distribution (no evidence either way), so it never dominates an ensemble.
    """
    valid = ids >= 0
    logits = torch.where(valid, -dists.float() / temperature, torch.full_like(dists, float("-inf"),
                                                                                  dtype=torch.float32))
    empty = ~valid.any(dim=1)
    logits[empty] = 0.0
    weights = torch.softmax(logits, dim=-1)
    tokens = vals[ids.clamp(min=0)].long()
    probs = torch.zeros(dists.shape[0], vocab_size, dtype=torch.float32, device=dists.device)
    probs.scatter_add_(1, tokens, weights)
    if empty.any():
        probs[empty] = 1.0 / vocab_size
    logp = torch.log(probs)
    return logp.masked_fill(torch.isneginf(logp), NO_VOTE)


class Datastore:
    """An opened datastore: faiss index for search, values on the query device, keys memory-mapped."""

    def __init__(self, root: str | Path, device: str | torch.device = "cpu", gpu: bool | None = None,
                 nprobe: int | None = None):
        from forewarn.retrieval.index import load_index

        self.root = Path(root)
        meta_path = self.root / META
        if not meta_path.is_file():
            raise ConfigError(f"datastore {str(self.root)!r} has no {META}: build it first "
                              "(forewarn goodtriever build) or point at a built datastore directory")
        self.meta: dict[str, Any] = json.loads(meta_path.read_text())
        self.n, self.dim = int(self.meta["n"]), int(self.meta["dim"])
        self.key_type = self.meta["key_type"]
        spec_index = self.meta["index"]
        self.index = load_index(self.root / INDEX, nprobe if nprobe is not None else spec_index.get("nprobe"),
                                gpu, fp16_lookup=self.meta["spec"]["index"].get("fp16_lookup", True))
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
            raise ConfigError(f"datastore {str(self.root)!r} was built for {self.meta['model']!r} "
                              f"({fp}); the decoding model differs in {bad}. Rebuild the datastore with "
                              "this model")
        if key_type is not None and key_type != self.key_type:
            raise ConfigError(f"datastore {str(self.root)!r} has key_type {self.key_type!r}, expected "
                              f"{key_type!r}; both datastores of one processor must share the key type")

    def search(self, queries: torch.Tensor, k: int, recompute: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """k nearest stored keys of each query: (squared L2 distances, ids), both (B, k) on the query device."""
        k = min(k, self.n)
        q = np.ascontiguousarray(queries.detach().float().cpu().numpy())
        d, i = self.index.search(q, k)
        dists = torch.from_numpy(d).to(queries.device)
        ids = torch.from_numpy(i).to(queries.device)
        if recompute:
            dists = self.exact_dists(queries, ids)
        return dists, ids

    def exact_dists(self, queries: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Exact squared L2 between each query and its neighbours' stored keys (ids < 0 -> +inf)."""
        flat = ids.clamp(min=0).reshape(-1).cpu().numpy()
        order = np.argsort(flat)
        gathered = np.empty((flat.size, self.dim), dtype=np.float32)
        gathered[order] = self.keys[flat[order]]
        keys = torch.from_numpy(gathered).to(queries.device).view(*ids.shape, self.dim)
        d = ((keys - queries.float()[:, None, :]) ** 2).sum(-1)
        return d.masked_fill(ids < 0, float("inf"))

    def log_probs(self, queries: torch.Tensor, k: int, temperature: float, vocab_size: int,
                  recompute: bool = False) -> torch.Tensor:
        dists, ids = self.search(queries, k, recompute)
        return knn_log_probs(dists, ids, self.vals, vocab_size, temperature)
