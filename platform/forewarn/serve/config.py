"""Config of the guarded generator and of its Ray Serve application.

The pipeline is *input guard → generation (+ decoding mitigations) → stop detectors → output guard*.
Two lists make later capabilities one config entry each:

``generator.decoding``        logits processors (:data:`DecodingSpec`), e.g. ``{kind: no_repeat_ngram,
                              size: 4}``, ``{kind: knn_lm, ...}`` (Goodtriever), ``{kind: dexperts, ...}``;
                              built by :data:`forewarn.serve.mitigations.DECODING_BUILDERS`.
``generator.stop_detectors``  detectors checked every K tokens (:data:`StopSpec`), e.g. ``{kind: cycle}`` or
                              the learned ``{kind: loop_detector, path: DIR}``; built by
                              :data:`forewarn.serve.stop_detectors.STOP_BUILDERS`.

Each is a union discriminated by ``kind`` (the plug-in pattern of backends and judges): an unknown kind
lists the valid ones, unknown keys are errors, so a typo fails at config time with the dotted field path.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, SecretStr, model_validator

from forewarn.config import ModelSpec, RayConfig, Resources, Section
from forewarn.serve.stop_detectors import CycleSpec
from forewarn.serve.mitigations import BannedWordsSpec, NoRepeatNGramSpec
from forewarn.judges.spec import JudgeSpec, kinds_for
from forewarn.recurrence.stopping import LoopDetectorSpec
from forewarn.goodtriever.config import DExpertsSpec, KnnLMSpec


class GuardStage(Section):
    """One guard (input or output): which judge, when it blocks, and what a block does."""

    judge: JudgeSpec | None = Field(
        None, description="a JudgeSpec ({kind: offline_toxicity, ...}); null: off"
    )
    action: Literal["refuse", "redact"] = Field(
        "refuse",
        description="refuse: answer with guard.refusal_message; redact: replace the unsafe sentences",
    )
    threshold: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="block when the judge's score reaches it (flipped for judges where lower is unsafe); "
        "null: use the judge's own unsafe label",
    )
    categories: list[str] = Field(
        default_factory=list,
        description="only verdicts with one of these categories block; empty: any unsafe",
    )


class GuardPolicy(Section):
    """What the guards check and how blocked requests look to the caller."""

    input: GuardStage = Field(default_factory=lambda: GuardStage(judge={"kind": "offline_toxicity"}))
    output: GuardStage = Field(default_factory=lambda: GuardStage(judge={"kind": "offline_toxicity"}))
    refusal_message: str = "I can't help with that request."
    redaction_marker: str = "[redacted]"
    on_judge_error: Literal["block", "allow"] = Field(
        "block", description="a judge that fails on a row blocks it (block) or lets it through (allow)"
    )
    expose_verdicts: bool = Field(
        False,
        description="add the guard verdicts (labels and categories, never scores: an oracle for tuning "
        "evasions) to the `forewarn` field of responses",
    )
    judges_in: Literal["auto", "deployments", "ingress"] = Field(
        "auto",
        description="where the guard judges run: their own Serve deployments (scaled apart, rows of "
        "concurrent requests batched), or inside each ingress replica (no round trip on the request's "
        "path); auto: the ingress for judges that hold no model (offline_toxicity), deployments otherwise",
    )
    overlong_input: Literal["judge_visible", "reject"] = Field(
        "judge_visible",
        description="a prompt longer than the model's input window: judge exactly the part the model "
        "reads (judge_visible) or answer 400 (reject)",
    )

    def judge_in_ingress(self, spec: JudgeSpec) -> bool:
        """Whether ``spec`` runs inside the ingress replica rather than in a judge deployment."""
        return self.judges_in == "ingress" or (self.judges_in == "auto" and spec.cheap)

    @model_validator(mode="after")
    def _check_input_judge(self) -> GuardPolicy:
        j = self.input.judge
        if j is not None and j.kind == "llama_guard" and not j.judge_prompt_only:
            raise ValueError(
                "guard.input.judge: a llama_guard input judge must set judge_prompt_only: true "
                "(it classifies the user turn, there is no response yet)"
            )
        for stage in ("input", "output"):
            j = getattr(self, stage).judge
            if j is not None and j.task != "safety":
                raise ValueError(
                    f"guard.{stage}.judge.kind={j.kind!r} is not a safety judge; use one of "
                    f"{', '.join(kinds_for('safety'))}"
                )
        return self


DecodingSpec = Annotated[
    Union[NoRepeatNGramSpec, BannedWordsSpec, KnnLMSpec, DExpertsSpec], Field(discriminator="kind")
]
StopSpec = Annotated[Union[CycleSpec, LoopDetectorSpec], Field(discriminator="kind")]


class Batching(Section):
    """``@serve.batch`` settings of the generator (and the judges)."""

    max_batch_size: int = Field(8, ge=1)
    batch_wait_timeout_s: float = Field(0.01, ge=0.0)


class GeneratorSection(Section):
    """The guarded model: its weights, resources, batching, decoding mitigations and stop detectors."""

    model: ModelSpec
    resources: Resources = Field(default_factory=Resources)
    batching: Batching = Field(default_factory=Batching)
    decoding: list[DecodingSpec] = Field(
        default_factory=list, description="decoding mitigations (logits processors), each {kind: ...}"
    )
    stop_detectors: list[StopSpec] = Field(
        default_factory=lambda: [CycleSpec()],
        description="detectors checked every K tokens that end a row early (finish_reason 'recurrence')",
    )

    @model_validator(mode="after")
    def _backend(self) -> GeneratorSection:
        if self.model.backend == "openai":
            raise ValueError(
                "generator.model.backend='openai': the guarded generator hosts its model; use hf or vllm"
            )
        if self.model.backend == "vllm" and self.decoding:
            kinds = ", ".join(s.kind for s in self.decoding)  # type: ignore[attr-defined]
            raise ValueError(
                f"generator.decoding=[{kinds}]: decoding mitigations are transformers logits processors and "
                "need generator.model.backend='hf'; remove them or switch the backend to hf"
            )
        return self


class Limits(Section):
    """Request limits and time bounds of the HTTP API (413 for size, 400 for counts, 408/503/504 for time)."""

    max_body_bytes: int = Field(
        1_000_000, ge=1024, description="larger request bodies get 413, counted while the body is read"
    )
    max_prompt_chars: int = Field(8000, ge=1, description="longer prompts (all turns together) get 413")
    max_messages: int = Field(64, ge=1)
    max_tokens: int = Field(512, ge=1, description="the largest max_tokens a request may ask for")
    default_max_tokens: int = Field(128, ge=1, description="used when a request gives no max_tokens")
    max_n: int = Field(4, ge=1, description="the largest n a request may ask for")
    max_stop: int = Field(4, ge=0, description="the most stop strings a request may send")
    body_timeout_s: float = Field(
        10.0, gt=0, description="a client must send its whole body within this (408 otherwise)"
    )
    request_timeout_s: float = Field(
        120.0, gt=0, description="a request not answered within this gets 504 and its work is cancelled"
    )
    judge_timeout_s: float = Field(
        30.0, gt=0, description="one guard judge call; past it the judge has failed"
    )
    max_in_flight: int = Field(
        64, ge=1, description="requests one ingress replica works on at once; more get 503 + Retry-After"
    )
    retry_after_s: int = Field(1, ge=0, description="the Retry-After of a 503")

    @model_validator(mode="after")
    def _defaults_within(self) -> Limits:
        if self.default_max_tokens > self.max_tokens:
            raise ValueError(
                f"default_max_tokens ({self.default_max_tokens}) must be <= max_tokens ({self.max_tokens})"
            )
        return self


class Auth(Section):
    """Bearer API keys. Keys come from ``api_keys``, a file (one key a line, re-read when it changes:
    rotation without a redeploy) and an environment variable, which the app passes to every ingress
    replica through Serve's ``runtime_env``. With no key anywhere the endpoint refuses to start on a
    non-loopback host unless ``allow_unauthenticated`` is set."""

    api_keys: list[SecretStr] = Field(default_factory=list, description="accepted bearer keys")
    api_keys_file: str | None = Field(None, description="a file with one key per line (# comments)")
    api_keys_env: str | None = Field("FOREWARN_API_KEYS", description="env var with comma-separated keys")
    allow_unauthenticated: bool = Field(
        False, description="serve without keys on a non-loopback host (a warning is logged at start)"
    )


class HttpSection(Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)


class IngressSection(Section):
    """The FastAPI ingress deployment (cheap: parsing, policy, metrics)."""

    num_cpus: float = Field(0.1, ge=0)
    replicas: int = Field(1, ge=1)
    max_ongoing_requests: int = Field(
        256, ge=1, description="Serve's own bound; keep it above limits.max_in_flight so 503s are ours"
    )


class StreamingSection(Section):
    """The streaming output guard: each chunk is judged with some look-back before (strict) or while
    (default) it is released."""

    chunk_tokens: int = Field(8, ge=1, description="tokens per released chunk (one judge call each)")
    lookback_chars: int = Field(
        256, ge=0, description="text before the chunk judged with it, so a phrase cut in two is seen whole"
    )
    strict: bool = Field(
        False,
        description="true: release a chunk only after its window is judged (no unjudged text); false: "
        "judge chunk k while it is sent, and hold chunk k+1 until that verdict is in (leak <= one chunk)",
    )


class LoggingSection(Section):
    log_prompts: bool = Field(False, description="include prompt and response text in the request logs")


class ServeConfig(Section):
    """Everything ``forewarn serve`` / ``serve run serve/config.yaml`` needs."""

    model_name: str = Field("forewarn-guarded", description="the model id clients send and /v1/models lists")
    generator: GeneratorSection
    guard: GuardPolicy = Field(default_factory=GuardPolicy)
    guard_enabled: bool = Field(
        True, description="false: serve the bare generator (the benchmark's baseline)"
    )
    limits: Limits = Field(default_factory=Limits)
    auth: Auth = Field(default_factory=Auth)
    http: HttpSection = Field(default_factory=HttpSection)
    ingress: IngressSection = Field(default_factory=IngressSection)
    streaming: StreamingSection = Field(default_factory=StreamingSection)
    compat: Literal["forewarn", "openai"] = Field(
        "forewarn",
        description="openai: finish_reason 'recurrence' is sent as 'length' for strict clients (the real "
        "reason stays in the forewarn field)",
    )
    logging: LoggingSection = Field(default_factory=LoggingSection)
    app_name: str = "forewarn"
    ray: RayConfig = Field(default_factory=RayConfig)
