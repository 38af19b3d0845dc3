"""Goodtriever datastores: (key, value) pairs of a model over a corpus, built with Ray Data, searched with faiss.

Key = the model's hidden state at the input of the last block's MLP (see :mod:`.hooks`), value = the next
token id. A datastore directory holds::

    keys.f16     N x dim float16, memory-mapped      vals.i32    N int32, memory-mapped
    index.faiss  the faiss index (Flat or IVFPQ)      meta.json   sizes, model fingerprint, windows, index

Text corpora are tokenised, concatenated per batch of ``batch_docs`` documents (EOS between documents) and
cut into windows of ``block_size`` with ``stride``: only the positions not covered by the previous window
are stored, so every target token is stored once, with up to ``block_size - stride`` tokens of extra
context. Chat corpora (``prompt_field`` set) render each (prompt, response) with the chat template and
store only the response tokens (and its end token), which is what the model predicts when it answers.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from forewarn.config import config_hash
from forewarn.errors import ConfigError
from forewarn.retrieval.config import DatastoreSpec

KEYS, VALS, INDEX, META, KEYS_DONE = "keys.f16", "vals.i32", "index.faiss", "meta.json", "keys.json"


def windows(n: int, block_size: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows ``(start, end, first_target)`` over n tokens; targets ``first_target..end-1`` are new.

    Every target position j >= 1 appears in exactly one window, as late as its context allows.
    """
    out, prev_end, start = [], 0, 0
    while n > 1:
        end = min(start + block_size, n)
        first = max(prev_end, start + 1)
        if first < end:
            out.append((start, end, first))
        if end == n:
            break
        prev_end, start = end, start + stride
    return out


def model_fingerprint(model: Any) -> dict[str, Any]:
    c = model.config
    return {"model_type": c.model_type, "hidden_size": int(c.hidden_size), "vocab_size": int(c.vocab_size),
            "num_hidden_layers": int(c.num_hidden_layers)}


class KeyUDF:
    """Ray Data actor: loads the model once and turns a batch of documents into (key, value) rows."""

    def __init__(self, spec: DatastoreSpec, num_cpus: float):
        from forewarn.pipeline.stages import set_torch_threads

        set_torch_threads(num_cpus)
        from forewarn.models.hf import load_hf
        from forewarn.retrieval.hooks import HiddenCapture

        self.spec = spec
        self.model, self.tok = load_hf(spec.model)
        self.capture = HiddenCapture(self.model, spec.key_type, last_only=False)
        self.max_len = min(spec.block_size, getattr(self.model.config, "max_position_embeddings", 10**9))

    def units(self, batch: pd.DataFrame) -> list[tuple[list[int], list[bool]]]:
        """Token sequences with a per-token 'store this target' mask."""
        from forewarn.models.hf import render_prompt

        eos = self.tok.eos_token_id
        texts = [str(t) for t in batch[self.spec.text_field]]
        if self.spec.prompt_field is None:
            ids: list[int] = []
            for t in texts:
                ids += self.tok(t, add_special_tokens=False)["input_ids"] + [eos]
            return [(ids, [True] * len(ids))]
        out = []
        for p, t in zip(batch[self.spec.prompt_field], texts):
            prompt = render_prompt(self.tok, str(p), use_chat_template=True)
            p_ids = self.tok(prompt, add_special_tokens=False)["input_ids"]
            r_ids = self.tok(t, add_special_tokens=False)["input_ids"] + [eos]
            out.append((p_ids + r_ids, [False] * len(p_ids) + [True] * len(r_ids)))
        return out

    def __call__(self, batch: pd.DataFrame) -> dict[str, np.ndarray]:
        import torch

        jobs = []  # (token window, [(offset of the key position, value)])
        for ids, mask in self.units(batch):
            for start, end, first in windows(len(ids), self.max_len, min(self.spec.stride, self.max_len)):
                pairs = [(j - 1 - start, ids[j]) for j in range(first, end) if mask[j]]
                if pairs:
                    jobs.append((ids[start:end], pairs))
        dim = int(self.model.config.hidden_size)
        keys, vals = [np.zeros((0, dim), np.float16)], [np.zeros(0, np.int32)]
        device = next(self.model.parameters()).device
        bs = self.spec.resources.batch_size
        with torch.inference_mode():
            for i in range(0, len(jobs), bs):
                chunk = jobs[i:i + bs]
                width = max(len(w) for w, _ in chunk)
                input_ids = torch.full((len(chunk), width), self.tok.pad_token_id, dtype=torch.long)
                attn = torch.zeros((len(chunk), width), dtype=torch.long)
                for r, (w, _) in enumerate(chunk):  # right padding: positions stay 0..len-1
                    input_ids[r, :len(w)] = torch.tensor(w)
                    attn[r, :len(w)] = 1
                self.model(input_ids=input_ids.to(device), attention_mask=attn.to(device), use_cache=False)
                hidden = self.capture.value.float().cpu()
                for r, (_, pairs) in enumerate(chunk):
                    pos = torch.tensor([p for p, _ in pairs])
                    keys.append(hidden[r, pos].numpy().astype(np.float16))
                    vals.append(np.array([v for _, v in pairs], dtype=np.int32))
        docs = np.zeros(sum(len(v) for v in vals), dtype=np.int32)
        if len(docs):
            docs[0] = len(batch)  # documents of this batch, counted once
        return {"key": np.concatenate(keys), "value": np.concatenate(vals), "docs": docs}


def corpus_columns(path: Path) -> set[str]:
    """Column names of a corpus file, read from its first row / Parquet schema (no Ray execution)."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return set(pq.read_schema(path).names)
    with open(path) as f:
        if path.suffix == ".json":
            rows = json.load(f)
            return set(rows[0]) if rows else set()
        for line in f:
            if line.strip():
                return set(json.loads(line))
    return set()


def read_corpus(spec: DatastoreSpec) -> Any:
    """The corpus as a Ray Dataset (JSONL or Parquet), checked for the configured columns."""
    import ray

    path = Path(spec.corpus)
    if not path.exists():
        raise ConfigError(f"corpus = {spec.corpus!r}: file does not exist")
    if path.suffix == ".parquet":
        ds = ray.data.read_parquet(str(path))
    elif path.suffix in (".jsonl", ".json"):
        ds = ray.data.read_json(str(path), lines=path.suffix == ".jsonl")
    else:
        raise ConfigError(f"corpus = {spec.corpus!r}: must be .jsonl, .json or .parquet")
    cols = corpus_columns(path)
    for field, name in (("text_field", spec.text_field), ("prompt_field", spec.prompt_field)):
        if name is not None and name not in cols:
            raise ConfigError(f"{field} = {name!r}: the corpus has no such column (columns: {sorted(cols)})")
    if spec.limit:
        ds = ds.limit(spec.limit)
    return ds


def build_datastore(spec: DatastoreSpec, out_dir: str | Path, show_progress: bool = True) -> dict[str, Any]:
    """Build keys/values with a Ray Data actor pool, then the faiss index; returns the metadata.

    A directory already holding a datastore of the same spec is reused; keys already extracted are kept
    when only the index is missing (a rerun resumes).
    """
    import ray
    from rich.progress import Progress

    from forewarn.retrieval.index import build_index, check_index_spec

    if spec.model is None:
        raise ConfigError("datastore.model is not set: name the model whose hidden states become the keys "
                          "(the goodtriever job fills in its target)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    build_hash = config_hash(spec)
    meta_path = out / META
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("build_hash") == build_hash and (out / INDEX).is_file():
            return meta
    t0 = time.perf_counter()
    done = out / KEYS_DONE
    info = json.loads(done.read_text()) if done.is_file() else {}
    if info.get("build_hash") != build_hash:
        n, n_docs, dim = _extract_keys(spec, out, show_progress, ray)
        info = {"build_hash": build_hash, "n": n, "n_docs": n_docs, "dim": dim,
                "seconds": round(time.perf_counter() - t0, 3)}
        _write_json(done, info)
    n, dim = info["n"], info["dim"]
    if n == 0:
        raise ConfigError(f"corpus = {spec.corpus!r}: produced no (key, value) pairs; check text_field / "
                          "prompt_field and that the texts are not empty")
    check_index_spec(spec.index, n, dim)
    keys = np.memmap(out / KEYS, dtype=np.float16, mode="r", shape=(n, dim))
    with Progress(disable=not show_progress, transient=True) as bar:
        task = bar.add_task(f"faiss {spec.index.kind} index", total=n)
        index_info = build_index(keys, spec.index, out / INDEX, progress=lambda k: bar.advance(task, k))
    model_cfg = _model_config(spec)
    meta = {"build_hash": build_hash, "n": n, "dim": dim, "n_docs": info["n_docs"],
            "key_type": spec.key_type, "model": spec.model.path, "fingerprint": model_cfg,
            "corpus": spec.corpus, "text_field": spec.text_field, "prompt_field": spec.prompt_field,
            "block_size": spec.block_size, "stride": spec.stride, "index": index_info,
            "key_seconds": info["seconds"], "spec": spec.model_dump(mode="json")}
    _write_json(meta_path, meta)
    return meta


def _model_config(spec: DatastoreSpec) -> dict[str, Any]:
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(spec.model.path, trust_remote_code=spec.model.trust_remote_code)
    c = c.get_text_config() if hasattr(c, "get_text_config") else c
    return {"model_type": c.model_type, "hidden_size": int(c.hidden_size), "vocab_size": int(c.vocab_size),
            "num_hidden_layers": int(c.num_hidden_layers)}


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    tmp.replace(path)


def _extract_keys(spec: DatastoreSpec, out: Path, show_progress: bool, ray: Any) -> tuple[int, int, int]:
    """Stream (key, value) batches from the actor pool into the fp16 / int32 files; memory stays bounded."""
    ds = read_corpus(spec)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # deterministic row order, so ids are reproducible
    ctx.enable_progress_bars = show_progress
    res = spec.resources
    keyed = ds.map_batches(KeyUDF, fn_constructor_kwargs=dict(spec=spec, num_cpus=res.num_cpus),
                           batch_size=spec.batch_docs, batch_format="pandas",
                           compute=ray.data.ActorPoolStrategy(size=res.replicas),
                           num_cpus=res.num_cpus, num_gpus=res.num_gpus)
    n, n_docs, dim = 0, 0, None
    tmp_k, tmp_v = out / f".{KEYS}.tmp", out / f".{VALS}.tmp"
    with open(tmp_k, "wb") as fk, open(tmp_v, "wb") as fv:
        for batch in keyed.iter_batches(batch_format="numpy", batch_size=None):
            k = np.ascontiguousarray(batch["key"], dtype=np.float16)
            if k.ndim != 2 or k.shape[0] == 0:
                continue
            dim = k.shape[1]
            fk.write(k.tobytes())
            fv.write(np.ascontiguousarray(batch["value"], dtype=np.int32).tobytes())
            n += k.shape[0]
            n_docs += int(batch["docs"].sum())
    tmp_k.replace(out / KEYS)
    tmp_v.replace(out / VALS)
    return n, n_docs, int(dim or 0)
