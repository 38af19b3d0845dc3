"""The learned loop detector at generation time, as a stop detector of the one stopping mechanism
(:class:`forewarn.models.stopping.DetectorStoppingCriteria`, which also runs the token-cycle detector).

:class:`DetectorCheck` runs the trained :class:`LoopDetector` on the target's own activations, captured by
hooks while the generation computes them (:class:`GenerationWindows`) and folded into the similarity
profile incrementally; a check is a small matrix product, a max, a sort and the MLP.

:class:`GenerationWindows` keeps, for each ``generate`` call running in a thread, one
:class:`~forewarn.recurrence.features.SimilarityWindows` row per generated sequence: a prefill (empty KV
cache) starts a new call, every decoding step appends the vectors of the tokens it fed. When a stopping
criterion sees n generated tokens the model has run on the first n - 1 (the newest was just sampled), so
the window holds tokens up to n - 1. The guard's ``StopDetector.check(token_ids)`` gets a row's ids, not
its index, so the row is found by its fed tokens; rows with identical ids so far are told apart by taking
the first one not yet checked at this step (the order both criteria visit rows in).

In the guarded generator, :class:`LoopDetectorSpec` (``{kind: loop_detector, path: DIR}``) builds a guard
``StopDetector`` (built by ``forewarn.serve.stop_detectors.STOP_BUILDERS``).

With the HF backend::

    stop = LoopDetectorStop(LoopDetector.load(dir), gen.model, check_every=16, min_tokens=65)  # hooks gen.model
    crit = DetectorStoppingCriteria([stop], end_ids=[tok.eos_token_id])
    outs = gen.generate(prompts, params, stopping_criteria=[crit])
    # crit.stopped holds the rows it cut off and why: report finish_reason="recurrence" for them
    stop.close()
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Literal

import torch
from pydantic import Field

from forewarn.config import Section
from forewarn.recurrence.features import Kind, SimilarityWindows, TokenVectorHooks
from forewarn.recurrence.loop_detector import LoopDetector


class GenerationWindows:
    """The similarity windows of the rows of the current ``generate`` call of ``model`` (per thread)."""

    def __init__(self, model: torch.nn.Module, kind: Kind, length: int):
        self.kind, self.length = kind, length
        self._local = threading.local()
        self.hooks = TokenVectorHooks(model, kind, self._begin, self._take)

    def _begin(self, input_ids: torch.Tensor, past_len: int) -> bool:
        st = self._local
        if past_len == 0:  # a prefill: a new generate call starts; prompt positions are not response tokens
            st.windows, st.fed, st.checked = None, [[] for _ in range(input_ids.shape[0])], set()
            return False
        fed = getattr(st, "fed", None)
        if fed is None or len(fed) != input_ids.shape[0]:
            raise RuntimeError(
                f"decoding step with {input_ids.shape[0]} rows but the prefill this thread saw had "
                f"{None if fed is None else len(fed)}: the loop detector follows one generate "
                "call at a time per thread"
            )
        for row, ids in zip(fed, input_ids.tolist()):
            row.extend(ids)
        st.checked = set()
        return True

    def _take(self, vecs: torch.Tensor) -> None:
        st = self._local
        if st.windows is None:
            st.windows = SimilarityWindows(vecs.shape[0], self.length, vecs.shape[-1], self.kind, vecs.device)
        st.windows.push(vecs)

    def row_of(self, token_ids: Sequence[int]) -> int:
        """The row of the current generate call whose fed tokens start ``token_ids`` (see the module doc)."""
        fed: list[list[int]] | None = getattr(self._local, "fed", None)
        ids = list(token_ids)
        m = len(fed[0]) if fed else -1
        if not fed or not 0 <= len(ids) - m <= 1:
            raise RuntimeError(
                f"no row of a generation in progress in this thread has fed these {len(ids)} tokens"
                f" (fed so far: {m}); the learned loop detector reads the generation's own "
                "activations, so it must be called from a stopping criterion of generate on "
                "the model it hooks"
            )
        head, last = ids[:m], (ids[m - 1] if m else None)
        checked = self._local.checked
        match = [r for r, row in enumerate(fed) if (not m or row[-1] == last) and row == head]
        if not match:
            raise RuntimeError("these token ids match no row of the generation in progress in this thread")
        row = next((r for r in match if r not in checked), match[0])
        checked.add(row)
        return row

    def profile(self, token_ids: Sequence[int]) -> torch.Tensor:
        """The feature of the row that generated ``token_ids``: its last ``length`` fed tokens' profile."""
        row = self.row_of(token_ids)
        windows: SimilarityWindows | None = self._local.windows
        if windows is None:
            return torch.zeros(self.length)
        return windows.profile_tensor(row)

    def close(self) -> None:
        self.hooks.close()

    def __enter__(self) -> GenerationWindows:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DetectorCheck:
    """``check(generated_ids)``: the learned detector's verdict on the row's last ``detection_length`` tokens.

    Built on ``model`` (it hooks it at construction; :meth:`close` removes the hooks) and called from a
    stopping criterion of a ``generate`` call on that model. ``min_tokens`` = detection_length + 1: the
    first check sees a full window (the newest token has no activations yet).
    """

    def __init__(self, detector: LoopDetector, model: torch.nn.Module):
        feats = detector.features
        self.detector = detector
        self.windows = GenerationWindows(model, feats.kind, feats.detection_length)
        self.min_tokens = feats.detection_length + 1
        device = next(model.parameters()).device
        self.mean = torch.as_tensor(detector.mean, dtype=torch.float32, device=device)
        self.inv_std = 1.0 / torch.as_tensor(detector.std, dtype=torch.float32, device=device)
        self.mlp = detector.mlp.to(device)

    @torch.inference_mode()
    def probability(self, token_ids: Sequence[int]) -> float:
        z = (self.windows.profile(token_ids) - self.mean) * self.inv_std
        return float(torch.sigmoid(self.mlp(z[None]))[0])

    def __call__(self, token_ids: Sequence[int]) -> bool:
        return self.probability(token_ids) >= self.detector.classifier.threshold

    def close(self) -> None:
        self.windows.close()


# ------------------------------------------------------------------ the guard's stop-detector plug-in


class LoopDetectorStop:
    """The learned detector as a guard :class:`~forewarn.serve.stop_detectors.StopDetector`: ``check(ids)`` returns
    a ``StopReason`` (finish_reason ``recurrence``, with the probability) or None; it stays silent until
    ``min_tokens`` have been generated. It hooks ``model`` for as long as it lives (:meth:`close` unhooks)."""

    name = "loop_detector"

    def __init__(self, detector: LoopDetector, model: torch.nn.Module, check_every: int, min_tokens: int):
        self.check_fn = DetectorCheck(detector, model)
        self.check_every, self.min_tokens = check_every, min_tokens

    def check(self, token_ids: Sequence[int]) -> Any:
        # lazy: loads transformers only when called
        from forewarn.models.stopping import StopReason

        if len(token_ids) < self.min_tokens:
            return None
        p = self.check_fn.probability(token_ids)
        if p < self.check_fn.detector.classifier.threshold:
            return None
        return StopReason(self.name, "recurrence", {"probability": round(p, 4)}, len(token_ids))

    def close(self) -> None:
        """Remove the hooks on the target."""
        self.check_fn.close()


class LoopDetectorSpec(Section):
    """``{kind: loop_detector, path: runs/recurrence_detector/detector}`` in ``generator.stop_detectors``."""

    kind: Literal["loop_detector"] = "loop_detector"
    path: str = Field(
        description="a detector folder written by `forewarn recurrence detect` (OUTPUT_DIR/detector)"
    )
    check_every: int = Field(16, ge=1, description="check after every this many generated tokens")
    min_tokens: int | None = Field(
        None,
        ge=2,
        description="first check at this length (default: the "
        "detector's detection_length + 1, the first full window)",
    )
