"""Goodtriever datastores: (key, value) pairs of a model over a corpus, built by a role pool streaming over
the corpus (:func:`forewarn.pools.stream_stages`), searched with faiss.

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

import hashlib
import json
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from forewarn.config import config_hash
from forewarn.errors import ConfigError
from forewarn.goodtriever.config import DatastoreSpec
from forewarn.pipeline.stages import set_torch_threads
from forewarn.pools import Rows, data_stage, stream_stages

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


class KeyUDF:
    """Ray Data actor: loads the model once and turns documents into (key, value) rows.

    One actor serves every datastore of a build group (same model and batching): rows carry a ``_store``
    code, and each store's documents are windowed with that store's settings.
    """

    def __init__(self, specs: list[DatastoreSpec], num_cpus: float):
        set_torch_threads(num_cpus)
        # lazy: loads sklearn only when called
        # lazy: goodtriever.hooks imports this module
        from forewarn.goodtriever.hooks import HiddenCapture
        from forewarn.models.hf import load_hf

        self.specs = specs
        self.model, self.tok = load_hf(specs[0].model)
        self.captures = {
            kt: HiddenCapture(self.model, kt, last_only=False) for kt in {s.key_type for s in specs}
        }
        self.max_pos = getattr(self.model.config, "max_position_embeddings", 10**9)

    def units(self, spec: DatastoreSpec, batch: pd.DataFrame) -> list[tuple[list[int], list[bool]]]:
        """Token sequences with a per-token 'store this target' mask."""
        # lazy: loads sklearn only when called
        from forewarn.models.hf import render_prompt

        eos = self.tok.eos_token_id
        texts = [str(t) for t in batch["_text"]]
        if spec.prompt_field is None:
            ids: list[int] = []
            for t in texts:
                ids += self.tok(t, add_special_tokens=False)["input_ids"] + [eos]
            return [(ids, [True] * len(ids))]
        out = []
        for p, t in zip(batch["_prompt"], texts):
            prompt = render_prompt(self.tok, str(p), use_chat_template=True)
            p_ids = self.tok(prompt, add_special_tokens=False)["input_ids"]
            r_ids = self.tok(t, add_special_tokens=False)["input_ids"] + [eos]
            out.append((p_ids + r_ids, [False] * len(p_ids) + [True] * len(r_ids)))
        return out

    def __call__(self, batch: pd.DataFrame) -> dict[str, np.ndarray]:
        dim = int(self.model.config.hidden_size)
        keys, vals, stores = (
            [np.zeros((0, dim), np.float16)],
            [np.zeros(0, np.int32)],
            [np.zeros(0, np.int32)],
        )
        docs = []
        for code, group in batch.groupby("_store", sort=True):
            spec = self.specs[int(code)]
            k, v = self.encode(spec, group)
            keys.append(k)
            vals.append(v)
            stores.append(np.full(len(v), code, np.int32))
            docs.append((int(code), len(group), len(v)))
        n_docs = np.zeros(sum(len(v) for v in vals), dtype=np.int32)
        offset = 0
        for _, n_group, n_rows in docs:  # documents of each group, counted once on its first row
            if n_rows:
                n_docs[offset] = n_group
            offset += n_rows
        return {
            "key": np.concatenate(keys),
            "value": np.concatenate(vals),
            "store": np.concatenate(stores),
            "docs": n_docs,
        }

    def encode(self, spec: DatastoreSpec, batch: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        import torch

        max_len = min(spec.block_size, self.max_pos)
        jobs = []  # (token window, [(offset of the key position, value)])
        for ids, mask in self.units(spec, batch):
            for start, end, first in windows(len(ids), max_len, min(spec.stride, max_len)):
                pairs = [(j - 1 - start, ids[j]) for j in range(first, end) if mask[j]]
                if pairs:
                    jobs.append((ids[start:end], pairs))
        dim = int(self.model.config.hidden_size)
        keys, vals = [np.zeros((0, dim), np.float16)], [np.zeros(0, np.int32)]
        device = next(self.model.parameters()).device
        bs = spec.resources.batch_size
        capture = self.captures[spec.key_type]
        with torch.inference_mode():
            for i in range(0, len(jobs), bs):
                chunk = jobs[i : i + bs]
                width = max(len(w) for w, _ in chunk)
                input_ids = torch.full((len(chunk), width), self.tok.pad_token_id, dtype=torch.long)
                attn = torch.zeros((len(chunk), width), dtype=torch.long)
                for r, (w, _) in enumerate(chunk):  # right padding: positions stay 0..len-1
                    input_ids[r, : len(w)] = torch.tensor(w)
                    attn[r, : len(w)] = 1
                self.model(input_ids=input_ids.to(device), attention_mask=attn.to(device), use_cache=False)
                hidden = capture.value.float().cpu()
                for r, (_, pairs) in enumerate(chunk):
                    pos = torch.tensor([p for p, _ in pairs])
                    keys.append(hidden[r, pos].numpy().astype(np.float16))
                    vals.append(np.array([v for _, v in pairs], dtype=np.int32))
        return np.concatenate(keys), np.concatenate(vals)


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


def corpus_rows(spec: DatastoreSpec, code: int = 0) -> Rows:
    """The corpus (JSONL or Parquet), checked for the configured columns, as the rows the key actors read:
    ``_store`` (``code``), ``_text``, ``_prompt``."""
    path = Path(spec.corpus)
    if not path.exists():
        raise ConfigError(f"corpus = {spec.corpus!r}: file does not exist")
    if path.suffix not in (".parquet", ".jsonl", ".json"):
        raise ConfigError(f"corpus = {spec.corpus!r}: must be .jsonl, .json or .parquet")
    cols = corpus_columns(path)
    for field, name in (("text_field", spec.text_field), ("prompt_field", spec.prompt_field)):
        if name is not None and name not in cols:
            raise ConfigError(f"{field} = {name!r}: the corpus has no such column (columns: {sorted(cols)})")
    return Rows(path=str(path), limit=spec.limit or None, transform=partial(_normalise, code=code, spec=spec))


def build_datastore(spec: DatastoreSpec, out_dir: str | Path, show_progress: bool = True) -> dict[str, Any]:
    """Build one datastore into ``out_dir`` (see :func:`build_datastores`); returns its metadata."""
    return build_datastores({"store": spec}, {"store": Path(out_dir)}, show_progress)["store"]


def build_datastores(
    specs: dict[str, DatastoreSpec], dirs: dict[str, Path], show_progress: bool = True
) -> dict[str, dict[str, Any]]:
    """Build keys/values with one role pool per model, then each faiss index; returns metadata per store.

    Stores that share a model and batching are extracted in one pipeline (one actor pool, the model loaded
    once). A directory already holding a datastore of the same spec is reused; keys already extracted are
    kept when only the index is missing (a rerun resumes).
    """
    metas: dict[str, dict[str, Any]] = {}
    todo: dict[str, DatastoreSpec] = {}
    for name, spec in specs.items():
        if spec.model is None:
            raise ConfigError(
                f"datastores.{name}.model is not set: name the model whose hidden states become "
                "the keys (the goodtriever job fills in its target)"
            )
        out = Path(dirs[name])
        out.mkdir(parents=True, exist_ok=True)
        meta = _read_json(out / META)
        if meta.get("build_hash") == build_hash(spec) and (out / INDEX).is_file():
            metas[name] = meta
        elif _read_json(out / KEYS_DONE).get("build_hash") != build_hash(spec):
            todo[name] = spec
    groups: dict[str, list[str]] = {}
    for name, spec in todo.items():
        key = json.dumps(
            [spec.model.model_dump(mode="json"), spec.batch_docs, spec.resources.model_dump(mode="json")],
            sort_keys=True,
        )
        groups.setdefault(key, []).append(name)
    for names in groups.values():
        t0 = time.perf_counter()
        counts = _extract_keys({n: todo[n] for n in names}, {n: Path(dirs[n]) for n in names}, show_progress)
        for n, (n_keys, n_docs, dim) in counts.items():
            _write_json(
                Path(dirs[n]) / KEYS_DONE,
                {
                    "build_hash": build_hash(todo[n]),
                    "n": n_keys,
                    "n_docs": n_docs,
                    "dim": dim,
                    "seconds": round(time.perf_counter() - t0, 3),
                },
            )
    for name, spec in specs.items():
        if name not in metas:
            metas[name] = _index_store(spec, Path(dirs[name]), show_progress)
    return metas


def _index_store(spec: DatastoreSpec, out: Path, show_progress: bool) -> dict[str, Any]:
    from rich.progress import Progress

    # lazy: goodtriever.index imports this module
    from forewarn.goodtriever.index import build_index, check_index_spec

    info = _read_json(out / KEYS_DONE)
    n, dim = info["n"], info["dim"]
    if n == 0:
        raise ConfigError(
            f"corpus = {spec.corpus!r}: produced no (key, value) pairs; check text_field / "
            "prompt_field and that the texts are not empty"
        )
    check_index_spec(spec.index, n, dim)
    keys = np.memmap(out / KEYS, dtype=np.float16, mode="r", shape=(n, dim))
    with Progress(disable=not show_progress, transient=True) as bar:
        task = bar.add_task(f"faiss {spec.index.kind} index", total=n)
        index_info = build_index(keys, spec.index, out / INDEX, progress=lambda k: bar.advance(task, k))
    meta = {
        "build_hash": build_hash(spec),
        "n": n,
        "dim": dim,
        "n_docs": info["n_docs"],
        "key_type": spec.key_type,
        "model": spec.model.path,
        "fingerprint": _model_config(spec),
        "corpus": spec.corpus,
        "text_field": spec.text_field,
        "prompt_field": spec.prompt_field,
        "block_size": spec.block_size,
        "stride": spec.stride,
        "index": index_info,
        "key_seconds": info["seconds"],
        "spec": spec.model_dump(mode="json"),
    }
    _write_json(out / META, meta)
    return meta


def build_hash(spec: DatastoreSpec) -> str:
    """Hash of the spec and of the model folder's files (name, size, mtime), so a retrained model at the
    same path (e.g. a rebuilt testbed) invalidates its datastores."""
    stamp = []
    folder = Path(spec.model.path)
    if folder.is_dir():
        stamp = sorted(
            (f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in folder.iterdir() if f.is_file()
        )
    corpus = Path(spec.corpus)
    if corpus.is_file():
        stamp.append((str(corpus), corpus.stat().st_size, corpus.stat().st_mtime_ns))
    return hashlib.sha256(json.dumps([config_hash(spec), stamp]).encode()).hexdigest()[:16]


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _model_config(spec: DatastoreSpec) -> dict[str, Any]:
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(spec.model.path, trust_remote_code=spec.model.trust_remote_code)
    c = c.get_text_config() if hasattr(c, "get_text_config") else c
    return {
        "model_type": c.model_type,
        "hidden_size": int(c.hidden_size),
        "vocab_size": int(c.vocab_size),
        "num_hidden_layers": int(c.num_hidden_layers),
    }


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    tmp.replace(path)


def _normalise(b: pd.DataFrame, code: int, spec: DatastoreSpec) -> pd.DataFrame:
    """Project a batch of the corpus onto the columns the key actor reads: _store, _text, _prompt."""
    return pd.DataFrame(
        {
            "_store": np.full(len(b), code, np.int32),
            "_text": b[spec.text_field].astype(str),
            "_prompt": b[spec.prompt_field].astype(str) if spec.prompt_field else "",
        }
    )


def _extract_keys(
    specs: dict[str, DatastoreSpec], dirs: dict[str, Path], show_progress: bool
) -> dict[str, tuple[int, int, int]]:
    """Stream (key, value) batches from one actor pool into each store's fp16 / int32 files."""

    names = list(specs)
    ordered = [specs[n] for n in names]
    res, first = ordered[0].resources, ordered[0]
    key_stage = partial(data_stage, udf=KeyUDF, ctor_kwargs=dict(specs=ordered, num_cpus=res.num_cpus),
                        resources=res, batch_size=first.batch_docs)  # fmt: skip
    inputs = [corpus_rows(s, i) for i, s in enumerate(ordered)]
    # stream_stages keeps the corpus order: a deterministic row order, so ids are reproducible
    keyed = stream_stages(inputs, [key_stage], batch_format="numpy", progress=show_progress)
    counts = {n: [0, 0, 0] for n in names}
    files = {}
    try:
        for n in names:
            files[n] = (open(dirs[n] / f".{KEYS}.tmp", "wb"), open(dirs[n] / f".{VALS}.tmp", "wb"))
        for batch in keyed:
            keys = np.asarray(batch["key"])
            if keys.ndim != 2 or keys.shape[0] == 0:
                continue
            for code, n in enumerate(names):
                sel = batch["store"] == code
                if not sel.any():
                    continue
                fk, fv = files[n]
                fk.write(np.ascontiguousarray(keys[sel], dtype=np.float16).tobytes())
                fv.write(np.ascontiguousarray(batch["value"][sel], dtype=np.int32).tobytes())
                c = counts[n]
                c[0] += int(sel.sum())
                c[1] += int(batch["docs"][sel].sum())
                c[2] = keys.shape[1]
    finally:
        for fk, fv in files.values():
            fk.close()
            fv.close()
    for n in names:
        (dirs[n] / f".{KEYS}.tmp").replace(dirs[n] / KEYS)
        (dirs[n] / f".{VALS}.tmp").replace(dirs[n] / VALS)
    return {n: (c[0], c[1], c[2]) for n, c in counts.items()}
