"""The guarded generator: input guard → mitigated generation → recurrence stop → output guard.

Plain Python here (``pipeline``, ``policy``, ``detectors``, ``mitigations``); ``serving`` wires it into
Ray Serve deployments behind an OpenAI-compatible FastAPI ingress, and ``cli`` is ``forewarn serve``.
"""

from forewarn.guard.config import GuardPolicy, GuardStage, ServeConfig
from forewarn.guard.detectors import STOP_KINDS, CycleDetector, StopDetector, StopReason
from forewarn.guard.mitigations import DECODING_KINDS
from forewarn.guard.pipeline import GenerationEngine, GuardedPipeline, GuardedResult, build_local

__all__ = [
    "DECODING_KINDS",
    "STOP_KINDS",
    "CycleDetector",
    "GenerationEngine",
    "GuardPolicy",
    "GuardStage",
    "GuardedPipeline",
    "GuardedResult",
    "ServeConfig",
    "StopDetector",
    "StopReason",
    "build_local",
]
