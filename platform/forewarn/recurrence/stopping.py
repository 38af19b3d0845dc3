"""Loop stopping at generation time: a ``check(token_ids) -> bool`` callable and a transformers
``StoppingCriteria`` that runs it every ``every`` tokens once ``min_tokens`` have been generated.

Two checks plug in the same way:
- :class:`DetectorCheck` -- the trained :class:`LoopDetector` on the target's own internals (one forward pass
  over the last ``detection_length`` generated tokens, then the MLP);
- :class:`CycleCheck` -- the token-id cycle detector, which needs no model and no training.

In the guarded generator, :class:`LoopDetectorSpec` (``{kind: loop_detector, path: DIR}``) builds a guard
``StopDetector``; register it with one line in ``forewarn.guard.detectors.STOP_KINDS``:
``"loop_detector": "forewarn.recurrence.stopping:LoopDetectorSpec"``.

With the HF backend::

    crit = LoopStoppingCriteria(DetectorCheck(LoopDetector.load(dir), gen.model), prompt_len, every=16)
    outs = gen.generate(prompts, params, stopping_criteria=[crit])
    # crit.stopped holds the rows it cut off: report finish_reason="recurrence" for them
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from transformers import StoppingCriteria

from forewarn.config import Section

from forewarn.recurrence.detect import find_cycle
from forewarn.recurrence.detector import LoopDetector
from forewarn.recurrence.features import feature

Check = Callable[[Sequence[int]], bool]


class DetectorCheck:
    """``check(generated_ids)``: the learned detector's verdict on the last ``detection_length`` tokens."""

    def __init__(self, detector: LoopDetector, model: torch.nn.Module):
        self.detector, self.model = detector, model
        self.min_tokens = detector.features.detection_length

    def probability(self, token_ids: Sequence[int]) -> float:
        window = list(token_ids)[-self.detector.features.detection_length:]
        x = feature(self.model, window, self.detector.features)[None, :]
        return float(self.detector.probabilities(x)[0])

    def __call__(self, token_ids: Sequence[int]) -> bool:
        return self.probability(token_ids) >= self.detector.classifier.threshold


class CycleCheck:
    """``check(generated_ids)``: True when the tail repeats a period ``min_repeats`` times (no model needed)."""

    def __init__(self, max_period: int = 64, min_repeats: float = 3.0, min_tokens: int = 32):
        self.max_period, self.min_repeats, self.min_tokens = max_period, min_repeats, min_tokens

    def __call__(self, token_ids: Sequence[int]) -> bool:
        return find_cycle(token_ids, self.max_period, self.min_repeats, at_end=True) is not None


class LoopStoppingCriteria(StoppingCriteria):
    """Stop rows whose generated tokens ``check`` calls a loop; checked every ``every`` tokens from
    ``min_tokens`` on (default: the check's own minimum). ``stopped`` collects the row indices it ended, so
    the caller can report ``finish_reason="recurrence"`` for them. Padding/EOS-finished rows are skipped."""

    def __init__(self, check: Check, prompt_len: int, every: int = 16, min_tokens: int | None = None,
                 pad_token_id: int | None = None, eos_token_id: int | None = None):
        self.check, self.prompt_len, self.every = check, prompt_len, max(1, every)
        self.min_tokens = min_tokens if min_tokens is not None else getattr(check, "min_tokens", 32)
        self.pad, self.eos = pad_token_id, eos_token_id
        self.stopped: set[int] = set()

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        n = input_ids.shape[1] - self.prompt_len
        done = torch.tensor([i in self.stopped for i in range(input_ids.shape[0])], device=input_ids.device)
        if n < self.min_tokens or (n - self.min_tokens) % self.every:
            return done
        gen = input_ids[:, self.prompt_len:].tolist()
        for i, ids in enumerate(gen):
            if i in self.stopped or (self.eos is not None and self.eos in ids):
                continue
            if self.check(ids):
                self.stopped.add(i)
        return torch.tensor([i in self.stopped for i in range(len(gen))], device=input_ids.device)


def check_cost_ms(check: Check, token_ids: Sequence[int], repeats: int = 20) -> float:
    """Median wall time of one ``check`` call in milliseconds (used by benchmarks/detector_latency.py)."""
    import time

    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        check(token_ids)
        times.append((time.perf_counter() - t) * 1000)
    return float(np.median(times))


# ------------------------------------------------------------------ the guard's stop-detector plug-in


class LoopDetectorStop:
    """The learned detector as a guard :class:`~forewarn.guard.detectors.StopDetector`: ``check(ids)`` returns
    a ``StopReason`` (finish_reason ``recurrence``, with the probability) or None; it stays silent until
    ``min_tokens`` have been generated."""

    name = "loop_detector"

    def __init__(self, detector: LoopDetector, model: torch.nn.Module, check_every: int, min_tokens: int):
        self.check_fn = DetectorCheck(detector, model)
        self.check_every, self.min_tokens = check_every, min_tokens

    def check(self, token_ids: Sequence[int]) -> Any:
        from forewarn.guard.detectors import StopReason

        if len(token_ids) < self.min_tokens:
            return None
        p = self.check_fn.probability(token_ids)
        if p < self.check_fn.detector.classifier.threshold:
            return None
        return StopReason(self.name, "recurrence", {"probability": round(p, 4)}, len(token_ids))


class LoopDetectorSpec(Section):
    """``{kind: loop_detector, path: runs/recurrence_detector/detector}`` in ``generator.stop_detectors``."""

    kind: Literal["loop_detector"] = "loop_detector"
    path: str = Field(description="a detector folder written by `forewarn recurrence detect` (OUTPUT_DIR/detector)")
    check_every: int = Field(16, ge=1, description="check after every this many generated tokens")
    min_tokens: int | None = Field(None, ge=2, description="first check at this length (default: the "
                                   "detector's detection_length)")

    def build(self, generator: Any) -> LoopDetectorStop:
        """Needs the target's internals: ``generator.model`` of the HF backend."""
        model = getattr(generator, "model", None)
        if not isinstance(model, torch.nn.Module):
            raise ValueError(f"stop detector loop_detector needs a generator with a torch model (the hf backend); "
                             f"got {type(generator).__name__}; use {{kind: cycle}} for other backends")
        det = LoopDetector.load(self.path)
        return LoopDetectorStop(det, model, self.check_every, self.min_tokens or det.features.detection_length)
