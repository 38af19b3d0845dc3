"""The stop-detector contract: checks on a row's generated token ids that end generation early.

A detector implements :class:`StopDetector`: ``check(token_ids) -> StopReason | None``, called every
``check_every`` generated tokens. :class:`DetectorStoppingCriteria` runs detectors inside
``model.generate`` as a ``transformers.StoppingCriteria`` and remembers which row stopped and why, so a
caller can report ``finish_reason: "recurrence"``. The guarded generator's detectors (``cycle``, the learned
``loop_detector``) implement it; it lives here, below the capabilities, so each can implement it without
importing another.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from transformers import StoppingCriteria


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
