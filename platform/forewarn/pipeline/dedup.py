"""Near-duplicate removal: MinHash + LSH over word n-grams (datasketch), then SemDeDup over embeddings.

Both return the indices of the items to keep, in input order, so callers keep their own row metadata
(prompt ids, iteration) attached. SemDeDup (Abbas et al.) clusters L2-normalised embeddings with
spherical k-means (faiss) and, inside each cluster, drops an item whose cosine similarity to an
already kept item exceeds 1 - eps; items far from their centroid ("hard" ones) are kept first.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from datasketch import MinHash, MinHashLSH
from pydantic import Field, model_validator

from forewarn.config import Section


class DedupConfig(Section):
    minhash: bool = True
    minhash_threshold: float = Field(0.78, gt=0.0, le=1.0, description="drop at estimated Jaccard >= this")
    ngram: int = Field(1, ge=1, description="word n-gram size of the shingles")
    num_perm: int = Field(128, ge=16)
    semdedup: bool = True
    eps: float = Field(0.04, gt=0.0, lt=1.0, description="drop at cosine similarity > 1 - eps")
    n_clusters: int = Field(5, ge=1)
    kmeans_iters: int = Field(100, ge=1)
    kmeans_restarts: int = Field(5, ge=1)
    embedder: str = Field("minilm", description="'minilm' or a local sentence-transformers folder")
    seed: int = 42

    @model_validator(mode="after")
    def _lsh_feasible(self) -> "DedupConfig":
        if self.minhash:
            try:
                MinHashLSH(threshold=self.minhash_threshold, num_perm=self.num_perm)
            except ValueError as e:
                raise ValueError(
                    f"minhash_threshold={self.minhash_threshold} with num_perm={self.num_perm}: "
                    f"{e}; lower the threshold or raise num_perm"
                ) from None
        return self


def _shingles(text: str, n: int) -> set[str]:
    words = text.lower().split()
    if len(words) < n:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def minhash_keep(
    texts: Sequence[str], threshold: float = 0.78, ngram: int = 1, num_perm: int = 128, seed: int = 1
) -> list[int]:
    """Indices to keep: an item is dropped when an earlier kept item's MinHash Jaccard estimate >= threshold.

    LSH proposes candidates; each candidate is confirmed with the signature's Jaccard estimate, so the
    threshold means the same as in the original all-pairs script, at near-linear cost.
    """
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    keep: list[int] = []
    sigs: dict[str, MinHash] = {}
    for i, text in enumerate(texts):
        m = MinHash(num_perm=num_perm, seed=seed)
        for sh in _shingles(text, ngram):
            m.update(sh.encode("utf-8"))
        if any(sigs[k].jaccard(m) >= threshold for k in lsh.query(m)):
            continue
        key = str(i)
        lsh.insert(key, m)
        sigs[key] = m
        keep.append(i)
    return keep


def semdedup_keep(
    embeddings: np.ndarray,
    eps: float = 0.04,
    n_clusters: int = 5,
    iters: int = 100,
    restarts: int = 5,
    seed: int = 42,
) -> list[int]:
    """Indices to keep after SemDeDup on L2-normalised ``embeddings`` (n x d)."""
    import faiss

    n = embeddings.shape[0]
    if n <= 1:
        return list(range(n))
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    k = min(n_clusters, n)
    km = faiss.Kmeans(
        x.shape[1],
        k,
        niter=iters,
        nredo=restarts,
        seed=seed,
        spherical=True,
        verbose=False,
        min_points_per_centroid=1,
    )
    km.train(x)
    _, assign = km.index.search(x, 1)
    assign = assign[:, 0]
    keep: list[int] = []
    for c in range(k):
        members = np.flatnonzero(assign == c)
        if members.size == 0:
            continue
        to_centroid = x[members] @ km.centroids[c]
        kept: list[int] = []
        for i in members[np.argsort(to_centroid, kind="stable")]:  # hardest (farthest) first
            if kept and float(np.max(x[kept] @ x[i])) > 1.0 - eps:
                continue
            kept.append(int(i))
        keep.extend(kept)
    return sorted(keep)


def dedup_keep(texts: Sequence[str], cfg: DedupConfig, embed: "callable | None" = None) -> list[int]:
    """MinHash then SemDeDup per ``cfg``; ``embed(texts) -> np.ndarray`` supplies normalised embeddings."""
    keep = list(range(len(texts)))
    if cfg.minhash:
        keep = minhash_keep(texts, cfg.minhash_threshold, cfg.ngram, cfg.num_perm)
    if cfg.semdedup and len(keep) > 1:
        if embed is None:
            raise ValueError("semdedup is on but no embedder was given")
        sub = semdedup_keep(
            embed([texts[i] for i in keep]),
            cfg.eps,
            cfg.n_clusters,
            cfg.kmeans_iters,
            cfg.kmeans_restarts,
            cfg.seed,
        )
        keep = [keep[j] for j in sub]
    return keep
