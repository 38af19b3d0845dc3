"""Stop detectors of the guarded generator: the ``cycle`` detector and the kind -> builder table.

A detector implements :class:`forewarn.models.stopping.StopDetector` (``check(token_ids) -> StopReason |
None`` every ``check_every`` tokens). A config entry (``generator.stop_detectors``) is a spec of the
:data:`forewarn.serve.config.StopSpec` union; :data:`STOP_BUILDERS` maps its kind to the function that
builds the detector, the same plug-in pattern as backends, judges and decoding mitigations.

Kinds: ``cycle`` -- the tail of the output repeats a block of ``period``
tokens back to back at least ``min_repeats`` times, found by the recurrence package's
:func:`forewarn.recurrence.cycles.find_cycle` (one cycle test for the search, the tables and the guard);
``loop_detector`` -- the learned RecurrentDetector (:mod:`forewarn.recurrence.stopping`), which reads the
target's own activations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from forewarn.config import Section
from forewarn.models.stopping import StopDetector, StopReason
from forewarn.recurrence.cycles import find_cycle

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


# ---------------------------------------------------------------- kind -> builder


def _cycle(spec: CycleSpec, generator: Any) -> StopDetector:
    return CycleDetector(spec.min_period, spec.max_period, spec.min_repeats, spec.min_span, spec.check_every)


def _loop_detector(spec: Any, generator: Any) -> StopDetector:
    """The learned detector reads the target's internals: ``generator.model`` of the hf backend."""
    # lazy: loading the detector and hooking the model is needed only when the kind is configured
    from forewarn.recurrence.stopping import LoopDetector, LoopDetectorStop

    model = getattr(generator, "model", None)
    if not isinstance(model, torch.nn.Module):
        raise ValueError(
            f"stop detector loop_detector needs a generator with a torch model (the hf backend); "
            f"got {type(generator).__name__}; use {{kind: cycle}} for other backends"
        )
    det = LoopDetector.load(spec.path)
    return LoopDetectorStop(
        det, model, spec.check_every, spec.min_tokens or det.features.detection_length + 1
    )


# A new detector is a spec in guard.config.StopSpec and one line here.
STOP_BUILDERS: dict[str, Callable[[Any, Any], StopDetector]] = {
    "cycle": _cycle,
    "loop_detector": _loop_detector,
}


def build_stop_detector(spec: Any, generator: Any) -> StopDetector:
    """The detector a ``generator.stop_detectors`` entry describes, for ``generator``."""
    return STOP_BUILDERS[spec.kind](spec, generator)
