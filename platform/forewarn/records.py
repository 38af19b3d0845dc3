"""Row schemas that flow through Ray Data and land in Parquet, declared once.

Each record is a dataclass; ``schema(Record)`` derives the pyarrow schema from its type hints, and
``rows_to_table`` / ``table_to_rows`` convert. Every row carries ``run_id``, ``iteration`` and a stable
``id`` so a resumed run can tell done work from missing work (``stable_id`` hashes the row's inputs).
Capabilities append their own records below, under a heading per capability.
"""

from __future__ import annotations

import dataclasses
import hashlib
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pyarrow as pa

R = TypeVar("R")

_ARROW = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_()}


def _arrow_type(tp: Any) -> pa.DataType:
    origin = typing.get_origin(tp)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return _arrow_type(args[0])  # Optional[X] -> nullable X
    if origin is list:
        return pa.list_(_arrow_type(args[0]))
    if origin is dict:
        return pa.map_(_arrow_type(args[0]), _arrow_type(args[1]))
    if tp in _ARROW:
        return _ARROW[tp]
    raise TypeError(f"no arrow type for {tp!r}")


def schema(record: type) -> pa.Schema:
    """The pyarrow schema of a record dataclass (field order kept)."""
    hints = typing.get_type_hints(record)
    return pa.schema([pa.field(f.name, _arrow_type(hints[f.name])) for f in dataclasses.fields(record)])


def rows_to_table(record: type, rows: list[Any]) -> pa.Table:
    """Records (or dicts with the record's fields) to a table with the record's schema."""
    dicts = [dataclasses.asdict(r) if dataclasses.is_dataclass(r) else r for r in rows]
    return pa.Table.from_pylist(dicts, schema=schema(record))


def table_to_rows(record: type[R], table: pa.Table) -> list[R]:
    names = {f.name for f in dataclasses.fields(record)}
    return [record(**{k: v for k, v in row.items() if k in names}) for row in table.to_pylist()]


def stable_id(*parts: Any) -> str:
    """A short deterministic id from the row's identifying inputs."""
    h = hashlib.sha1("\x1f".join(map(str, parts)).encode()).hexdigest()
    return h[:16]


# ------------------------------------------------------------------ core rows


@dataclass
class PromptRow:
    """A prompt to send to a model."""

    id: str
    run_id: str
    iteration: int
    prompt: str


@dataclass
class GenerationRow:
    """One completion of a prompt (``sample`` indexes the n samples of the same prompt)."""

    id: str
    run_id: str
    iteration: int
    prompt_id: str
    sample: int
    prompt: str
    text: str
    finish_reason: str
    num_tokens: int
    error: str | None = None


@dataclass
class JudgementRow:
    """A judge's verdict on a (prompt, response) pair; ``score`` in [0, 1], higher = more unsafe/failing."""

    id: str
    run_id: str
    iteration: int
    prompt: str
    response: str
    score: float
    label: str
    unsafe: bool | None = None
    categories: list[str] = field(default_factory=list)
    error: str | None = None
