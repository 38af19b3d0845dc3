"""Row schemas of the result tables that land in Parquet with a fixed schema, declared once.

Each record is a dataclass; ``schema(Record)`` derives the pyarrow schema from its type hints, and
``rows_to_table`` / ``table_to_rows`` convert. Every row carries ``run_id``, ``iteration`` and a stable
``id`` so a resumed run can tell done work from missing work (``stable_id`` hashes the row's inputs).
Capabilities append their own records below, under a heading per capability.

The generation and judge columns that stages add to a caller's rows (``{prefix}text``, ``finish_reason``,
... and ``{prefix}score``, ``label``, ``unsafe``, ...) are declared once too, where they are made:
``forewarn.models.base.Completion.columns`` and ``forewarn.judges.base.Verdict.columns``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import typing
from dataclasses import dataclass
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


# ------------------------------------------------------------------ recurrence (trigger search)


@dataclass
class ExperienceRow:
    """One evaluated individual of a trigger search (the original's ``experiences.csv`` row, typed)."""

    id: str
    run_id: str
    iteration: int
    method: str  # ga | random
    seed: int
    evaluation: int  # target generations spent up to and including this one
    token_ids: list[int]
    prompt: str
    response: str
    response_token_ids: list[int]
    tokens_generated: int
    finish_reason: str
    fitness: float
    hit: bool
    hit_cap: bool  # the original length rule
    cycled: bool
    period: int
    cycle_start: int
    repeats: float
    repeated_tokens: int
    loop_share: float
    time_taken: float
    time_per_token: float


@dataclass
class BestRecordRow:
    """One search iteration: the best individuals and pool statistics (``best_records.csv``)."""

    run_id: str
    iteration: int
    method: str
    seed: int
    best_prompts: list[str]
    best_fitness: list[float]
    average_fitness: float
    max_fitness: float
    max_tokens_generated: int
    evaluations: int
    hits: int


@dataclass
class AlgLogRow:
    """When a search first hit its goal (``alg_log.csv``); one row per (method, seed), nulls if never."""

    run_id: str
    method: str
    seed: int
    first_iteration_to_hit_goal: int | None
    evaluations_to_hit_goal: int | None
    time_to_hit_goal: float | None
    total_evaluations: int
    seconds: float


# ------------------------------------------------------------------ contrastive (model divergence)


@dataclass
class DivergenceEvidence:
    """One decoded continuation (sample ``sample`` of ``prompt``) with its token-level divergence evidence.

    ``tokens`` / ``token_ids`` / ``token_divergences`` cover the scored tokens in order: the generated tokens
    (end token included), preceded by the prompt tokens when the prompt is scored too; the first
    ``n_prompt_tokens`` of them are prompt tokens. Perplexities are over the same tokens. The contrastive
    decoder returns these (``DecodedSample``); the rows below add ids and where the sample came from.
    """

    sample: int
    prompt: str
    text: str
    tokens: list[str]
    token_ids: list[int]
    token_divergences: list[float]
    n_prompt_tokens: int
    divergence_mean: float
    divergence_max: float
    ppl_start: float
    ppl_comparison: float


def evidence_of(sample: Any) -> dict[str, Any]:
    """The :class:`DivergenceEvidence` fields of ``sample`` (a decoded sample or a row), as keyword arguments."""
    return {f.name: getattr(sample, f.name) for f in dataclasses.fields(DivergenceEvidence)}


@dataclass
class ContrastiveSampleRow(DivergenceEvidence):
    """A decoded continuation of a contrastive run (``iteration`` = finder cycle) with its evidence."""

    id: str
    run_id: str
    iteration: int
    repeat: int
    prompt_id: str


@dataclass
class DivergencePromptRow:
    """A prompt with its divergence (mean over its samples), from the seeds or the finder's assistant."""

    id: str
    run_id: str
    iteration: int
    repeat: int
    prompt: str
    source: str  # seed | assistant | prompts
    divergence: float
    divergence_max: float
    response: str
    rank: int
    criterion: float | None = None
    diversity: float | None = None
    planted_topic: str | None = None  # testbed runs: the planted topic the prompt is about


@dataclass
class FinderCycleRow:
    """Per-cycle statistics of the divergence finder (bank, new prompts, shown subsample)."""

    id: str
    run_id: str
    iteration: int
    repeat: int
    attempts: int
    n_new: int
    n_candidates: int
    n_malformed: int
    n_duplicates: int
    n_dropped_criterion: int
    bank_size: int
    top10_divergence_mean: float
    bank_divergence_mean: float
    bank_divergence_max: float
    new_divergence_mean: float
    new_divergence_max: float
    shown_divergence_mean: float


# ------------------------------------------------------------------ analysis (divergence hypotheses)


@dataclass
class FindingRow:
    """A hypothesis about how two models differ, with its test result (``iteration`` = cycle last tested).

    ``status`` is proposed | supported | refuted; ``auc`` = P(test prompt diverges more than a control),
    ``auc_upper`` its one-sided bootstrap upper bound, ``p_value`` the one-sided Mann-Whitney p.
    """

    id: str
    run_id: str
    iteration: int
    hypothesis: str
    topic: str
    rationale: str
    status: str
    cycle_proposed: int
    n_test: int
    n_control: int
    mean_test: float
    mean_control: float
    auc: float
    auc_upper: float
    p_value: float
    note: str
    planted_topic: str | None = None  # testbed sources: the planted topic the hypothesis names


@dataclass
class EvidenceRow(ContrastiveSampleRow):
    """One scored experiment prompt of a finding: a decoded sample (token-level evidence) plus the finding,
    the arm (test | control) and the prompt's divergence (its mean over its samples)."""

    finding_id: str
    arm: str
    divergence: float
    planted_topic: str | None = None  # testbed sources: the planted topic the prompt is about


@dataclass
class TopicRelevanceRow:
    """How relevant one source-run example is to one user topic (0..1), by embedding or by the analyst."""

    id: str
    run_id: str
    iteration: int
    topic: str
    prompt: str
    divergence: float
    relevance: float
    method: str
