"""Training data: load pairs from Parquet / Arrow / pandas / Ray Data, tokenize, shard and pad.

Every trainer tokenizes a (prompt, response) the same way — prompt rendered through the chat template and
left-truncated to ``max_prompt_length``, response + EOS right-truncated to fit ``max_length`` — so the
reference pass and the policy see identical token ids. Sharding is a seeded permutation per epoch cut into
equal slices per worker, so every worker runs the same number of steps (DeepSpeed collectives need that)
and a resumed run skips exactly the batches it already did.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from transformers import PreTrainedTokenizerBase

from forewarn.errors import ConfigError
from forewarn.models.hf import render_prompt

TableLike = Any  # str | Path (Parquet / JSONL) | pa.Table | pandas.DataFrame | ray.data.Dataset | rows


def load_table(source: TableLike, what: str = "data") -> pa.Table:
    """Materialise ``source`` as one Arrow table (Parquet/JSONL path, Arrow table, DataFrame, Dataset, rows)."""
    if isinstance(source, pa.Table):
        return source
    if isinstance(source, (str, Path)):
        p = Path(source)
        if not p.exists():
            raise ConfigError(f"{what}: {str(p)!r} does not exist (pass a Parquet file or folder, or JSONL)")
        if p.suffix in (".jsonl", ".json"):
            import pyarrow.json as pj

            return pj.read_json(p)
        return pq.read_table(p)
    if isinstance(source, list):
        return pa.Table.from_pylist(source)
    if type(source).__name__ == "DataFrame":
        return pa.Table.from_pandas(source, preserve_index=False)
    if hasattr(source, "to_arrow_refs"):  # ray.data.Dataset
        import ray

        tables = [t for t in ray.get(source.to_arrow_refs()) if t.num_rows]
        return pa.concat_tables(tables, promote_options="default") if tables else pa.table({})
    raise TypeError(
        f"{what}: cannot read a {type(source).__name__}; pass a Parquet path, a pyarrow Table, "
        "a pandas DataFrame, a ray.data.Dataset or a list of dicts"
    )


def require_columns(table: pa.Table, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise ConfigError(
            f"{what} lacks column(s) {missing}; it has {table.column_names}. "
            f"Rename the columns or pass a table with {list(columns)}"
        )


def encode_prompt_response(
    tok: PreTrainedTokenizerBase,
    prompt: str,
    response: str,
    max_length: int,
    max_prompt_length: int,
    use_chat_template: bool = True,
) -> tuple[list[int], list[int]]:
    """Token ids of prompt + response + EOS and a mask that is 1 on the response tokens (EOS included)."""
    text = render_prompt(tok, prompt, use_chat_template)
    p_ids = tok(text, add_special_tokens=False)["input_ids"][-max_prompt_length:]
    r_ids = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    r_ids = r_ids[: max_length - len(p_ids)]
    return p_ids + r_ids, [0] * len(p_ids) + [1] * len(r_ids)


def pad_right(seqs: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest row: ``(ids, attention_mask)``. Training uses right padding (the last real
    token of every row is then at ``attention_mask.sum(-1) - 1``)."""
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad, dtype=torch.long)
    att = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        att[i, : len(s)] = 1
    return ids, att


def steps_per_epoch(num_rows: int, world: int, micro_batch: int, grad_accum: int) -> int:
    """Optimizer steps per epoch when every worker gets an equal slice (the remainder is dropped)."""
    return num_rows // (world * micro_batch * grad_accum)


def micro_batch_indices(
    num_rows: int,
    seed: int,
    epoch: int,
    step_in_epoch: int,
    accum_index: int,
    rank: int,
    world: int,
    micro_batch: int,
    grad_accum: int,
) -> np.ndarray:
    """Row indices of one worker's micro-batch: a seeded permutation per epoch, cut into equal slices."""
    perm = np.random.default_rng([seed, epoch]).permutation(num_rows)
    k = step_in_epoch * grad_accum + accum_index
    start = (k * world + rank) * micro_batch
    return perm[start : start + micro_batch]
