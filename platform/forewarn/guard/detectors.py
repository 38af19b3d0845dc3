"""Stop detectors: checks on a row's generated token ids that end generation early.

A detector implements :class:`StopDetector`: ``check(token_ids) -> StopReason | None``, called every
``check_every`` generated tokens. :class:`DetectorStoppingCriteria` runs the configured detectors inside
``model.generate`` as a ``transformers.StoppingCriteria`` and remembers which row stopped and why, so the
pipeline can report ``finish_reason: "recurrence"``.

Registered kinds (:data:`STOP_KINDS`): ``cycle`` -- the tail of the output repeats a block of ``period``
tokens back to back at least ``min_repeats`` times, found by the recurrence package's
:func:`forewarn.recurrence.detect.find_cycle` (one cycle test for the search, the tables and the guard);
``loop_detector`` -- the learned RecurrentDetector (:mod:`forewarn.recurrence.stopping`), which reads the
target's own activations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from pydantic import Field, model_validator
from transformers import StoppingCriteria

from forewarn.config import Section


@dataclass
class StopReason:
    """Why a detector stopped a row: ``finish_reason`` goes to the client, ``detail`` to ``forewarn``."""

    detector: str
    finish_reason: str = "recurrence"
    detail: dict[str, Any] = field(default_factory=dict)
    at_token: int = 0  # generated tokens when the detector fired

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@runtime_checkable
class StopDetector(Protocol):
    """A check on one row's generated ids (prompt excluded, no padding); ``None`` means keep going."""

    name: str
    check_every: int

    def check(self, token_ids: Sequence[int]) -> StopReason | None: ...


# ---------------------------------------------------------------- the cycle detector


class CycleDetector:
    """Stops a row whose tail is an exact loop covering at least ``min_span`` tokens."""

    name = "cycle"

    def __init__(
        self,
        min_period: int = 1,
        max_period: int = 64,
        min_repeats: float = 3.0,
        min_span: int = 16,
        check_every: int = 8,
    ):
        self.min_period, self.max_period = min_period, max_period
        self.min_repeats, self.min_span, self.check_every = min_repeats, min_span, check_every

    def check(self, token_ids: Sequence[int]) -> StopReason | None:
        from forewarn.recurrence.detect import find_cycle

        cyc = find_cycle(token_ids, self.max_period, self.min_repeats, at_end=True)
        if cyc is None or cyc.covered < self.min_span or cyc.period < self.min_period:
            return None
        period, span = cyc.period, cyc.covered
        return StopReason(
            self.name,
            "recurrence",
            {"period": period, "span": span, "repeats": round(span / period, 2)},
            len(token_ids),
        )


class CycleSpec(Section):
    """``{kind: cycle}``: the exact-loop detector."""

    kind: Literal["cycle"] = "cycle"
    min_period: int = Field(1, ge=1, description="loops with a shorter block are ignored")
    max_period: int = Field(64, ge=1, description="longest repeated block, in tokens")
    min_repeats: float = Field(3.0, ge=2.0, description="the tail must hold this many copies of the block")
    min_span: int = Field(16, ge=2, description="and cover at least this many tokens")
    check_every: int = Field(8, ge=1, description="check after every this many generated tokens")

    @model_validator(mode="after")
    def _periods(self) -> CycleSpec:
        if self.min_period > self.max_period:
            raise ValueError(f"min_period ({self.min_period}) must be <= max_period ({self.max_period})")
        return self

    def build(self, generator: Any = None) -> CycleDetector:
        return CycleDetector(
            self.min_period, self.max_period, self.min_repeats, self.min_span, self.check_every
        )


# kind -> "module:SpecClass"; a new detector (e.g. the learned recurrence detector) is one line here.
STOP_KINDS: dict[str, str] = {
    "cycle": "forewarn.guard.detectors:CycleSpec",
    "loop_detector": "forewarn.recurrence.stopping:LoopDetectorSpec",
}


# ---------------------------------------------------------------- inside model.generate


class DetectorStoppingCriteria(StoppingCriteria):
    """Runs stop detectors on every row of one ``generate`` call; one instance per call (it keeps state).

    ``stopped[row]`` holds the :class:`StopReason` of each row a detector ended; rows are in
    ``generate``'s output order (prompt i, sample j at ``i * num_return_sequences + j``). A row's ids are
    cut at its first end/pad token, so rows that already finished are never checked on their padding.
    """

    def __init__(self, detectors: Sequence[StopDetector], end_ids: Sequence[int]):
        self.detectors = list(detectors)
        self.end_ids = {int(t) for t in end_ids if t is not None}
        self.prompt_len: int | None = None
        self.batch_rows = 0  # rows of the generate call (prompts x num_return_sequences)
        self.stopped: dict[int, StopReason] = {}

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        if self.prompt_len is None:  # called first after the first new token is appended
            self.prompt_len = input_ids.shape[1] - 1
            self.batch_rows = input_ids.shape[0]
        gen_len = input_ids.shape[1] - self.prompt_len
        flags = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        due = [d for d in self.detectors if gen_len % d.check_every == 0]
        if not due:
            return flags
        gen = input_ids[:, self.prompt_len :].tolist()
        for row, ids in enumerate(gen):
            if row in self.stopped:
                continue
            cut = next((k for k, t in enumerate(ids) if t in self.end_ids), None)
            if cut is not None:
                continue  # the row already ended on its own
            for det in due:
                reason = det.check(ids)
                if reason is not None:
                    self.stopped[row] = reason
                    flags[row] = True
                    break
        return flags
