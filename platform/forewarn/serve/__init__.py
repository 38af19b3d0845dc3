"""The guarded generator: input guard → mitigated generation → recurrence stop → output guard.

Plain Python here (``engine``, ``pipeline``, ``streaming``, ``policy``, ``text``, ``detectors``,
``mitigations``); ``deployments`` and ``serving`` wire it into Ray Serve behind an OpenAI-compatible FastAPI
ingress (``openai_schema`` parses requests, ``wire`` writes responses, ``auth`` checks keys), ``local``
runs it without Ray, and ``cli`` is ``forewarn serve``.
"""

from forewarn.serve.config import GuardPolicy, GuardStage, ServeConfig
from forewarn.serve.stop_detectors import STOP_BUILDERS, CycleDetector
from forewarn.serve.engine import GenerationEngine
from forewarn.serve.local import build_local
from forewarn.serve.mitigations import DECODING_BUILDERS
from forewarn.serve.pipeline import GuardedPipeline, GuardedResult
from forewarn.models.stopping import StopDetector, StopReason

__all__ = [
    "DECODING_BUILDERS",
    "STOP_BUILDERS",
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
