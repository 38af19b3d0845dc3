"""Ray Serve wiring of the guarded generator: judge and generator deployments behind an OpenAI ingress.

    OpenAIIngress (FastAPI: /v1/chat/completions, /v1/completions, /v1/models, /health)
      ├── JudgeDeployment  (one per distinct judge spec; input and output share it when equal)
      └── GeneratorDeployment  (@serve.batch; GenerationEngine with mitigations and stop detectors)

Each deployment takes its resources and replicas from the config, and sets torch's threads to its
``num_cpus``. :func:`build_app` is the ``import_path`` of ``serve/config.yaml``; :func:`app_from_config`
builds the same application from a validated :class:`ServeConfig` (the CLI and the tests use it).
The ingress exports Prometheus metrics through ``ray.serve.metrics`` and logs one JSON line per
request (prompt text only with ``logging.log_prompts``).
"""

# no `from __future__ import annotations`: FastAPI must see the real Request annotation on ingress methods
import asyncio
import hmac
import json
import logging
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from forewarn.config import GenerationParams, build_config
from forewarn.guard.config import GeneratorSection, ServeConfig
from forewarn.guard.openai_schema import ApiError, ParsedRequest, parse_body, response_body, stream_events
from forewarn.guard.pipeline import GenerationResult, GuardedPipeline, GuardedResult, prompt_text
from forewarn.guard.policy import GuardJudge
from forewarn.models.base import Prompt

logger = logging.getLogger("ray.serve")


def _set_threads(num_cpus: float) -> None:
    from forewarn.pipeline.stages import set_torch_threads

    set_torch_threads(num_cpus)


@serve.deployment(name="generator")
class GeneratorDeployment:
    """Holds the model once; ``@serve.batch`` groups concurrent requests, then one ``generate`` call runs
    per group of requests with identical sampling parameters."""

    def __init__(self, section: dict[str, Any]):
        from forewarn.guard.pipeline import GenerationEngine
        from forewarn.models.hf import HFGenerator

        cfg = GeneratorSection.model_validate(section)
        _set_threads(cfg.resources.num_cpus)
        self.engine = GenerationEngine(HFGenerator(cfg.model), cfg.decoding, cfg.stop_detectors)
        self.generate.set_max_batch_size(cfg.batching.max_batch_size)
        self.generate.set_batch_wait_timeout_s(cfg.batching.batch_wait_timeout_s)

    def _run_groups(self, items: list[tuple[Prompt, GenerationParams]]) -> list[GenerationResult]:
        groups: dict[str, list[int]] = {}
        for k, (_, params) in enumerate(items):
            groups.setdefault(params.model_dump_json(), []).append(k)
        out: list[GenerationResult | None] = [None] * len(items)
        for idx in groups.values():
            results = self.engine.generate([items[k][0] for k in idx], items[idx[0]][1])
            for k, r in zip(idx, results):
                out[k] = r
        return out  # type: ignore[return-value]

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def generate(self, items: list[tuple[Prompt, GenerationParams]]) -> list[GenerationResult]:
        return await asyncio.to_thread(self._run_groups, items)


@serve.deployment(name="judge")
class JudgeDeployment:
    """One judge model (a guard); ``@serve.batch`` merges the rows of concurrent calls into one judge call."""

    def __init__(self, spec: dict[str, Any], max_batch_size: int, batch_wait_timeout_s: float):
        from forewarn.judges.spec import build_judge, parse_judge_spec

        parsed = parse_judge_spec(spec)
        _set_threads(parsed.resources.num_cpus)
        self.judge_impl = build_judge(parsed)
        self.judge.set_max_batch_size(max_batch_size)
        self.judge.set_batch_wait_timeout_s(batch_wait_timeout_s)

    def info(self) -> dict[str, Any]:
        return {"name": self.judge_impl.name, "higher_is_unsafe": self.judge_impl.higher_is_unsafe}

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def judge(self, items: list[tuple[list[str], list[str]]]) -> list[list[Any]]:
        prompts = [p for ps, _ in items for p in ps]
        responses = [r for _, rs in items for r in rs]
        verdicts = await asyncio.to_thread(self.judge_impl.judge, prompts, responses)
        out, pos = [], 0
        for ps, _ in items:
            out.append(verdicts[pos : pos + len(ps)])
            pos += len(ps)
        return out


api = FastAPI(title="forewarn guarded generator", description="OpenAI-compatible, guarded.")


def _error(e: ApiError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


@serve.deployment(name="ingress")
@serve.ingress(api)
class OpenAIIngress:
    """HTTP front: auth, validation and limits, the guard pipeline over the deployments, metrics, logs."""

    def __init__(
        self,
        cfg: dict[str, Any],
        generator: DeploymentHandle,
        input_judge: DeploymentHandle | None,
        output_judge: DeploymentHandle | None,
    ):
        from ray.serve import metrics

        self.cfg = ServeConfig.model_validate(cfg)
        self.keys = self.cfg.auth.keys()
        self.generator = generator
        self._judge_handles = {"input": input_judge, "output": output_judge}
        self._pipeline: GuardedPipeline | None = None
        self._pipeline_lock = asyncio.Lock()
        self.m_requests = metrics.Counter(
            "forewarn_requests", "HTTP requests by endpoint and status", tag_keys=("endpoint", "status")
        )
        self.m_blocks = metrics.Counter(
            "forewarn_blocks", "guard blocks by stage and reason", tag_keys=("stage", "reason")
        )
        self.m_finish = metrics.Counter(
            "forewarn_finish", "choices by finish reason", tag_keys=("finish_reason",)
        )
        self.m_latency = metrics.Histogram(
            "forewarn_request_latency_s",
            "request latency in seconds",
            boundaries=[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
            tag_keys=("endpoint",),
        )

    async def _get_pipeline(self) -> GuardedPipeline:
        async with self._pipeline_lock:
            if self._pipeline is None:
                judges: dict[str, GuardJudge | None] = {}
                for stage, handle in self._judge_handles.items():
                    judges[stage] = None if handle is None else await self._guard_judge(handle)

                async def generate(prompt: Prompt, params: GenerationParams) -> GenerationResult:
                    return await self.generator.generate.remote((prompt, params))

                self._pipeline = GuardedPipeline(self.cfg.guard, generate, judges["input"], judges["output"])
            return self._pipeline

    @staticmethod
    async def _guard_judge(handle: DeploymentHandle) -> GuardJudge:
        info = await handle.info.remote()

        async def call(prompts: list[str], responses: list[str]) -> list[Any]:
            return await handle.judge.remote((prompts, responses))

        return GuardJudge(call, info["name"], info["higher_is_unsafe"])

    def _check_auth(self, request: Request) -> None:
        if not self.keys:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ApiError(
                401, "Missing bearer API key: send 'Authorization: Bearer <key>'.", None, "invalid_api_key"
            )
        if not any(hmac.compare_digest(token.strip().encode(), k.encode()) for k in self.keys):
            raise ApiError(401, "Incorrect API key provided.", None, "invalid_api_key")

    @api.get("/health")
    def health(self) -> dict[str, str]:
        return {"status": "ok", "model": self.cfg.model_name}

    @api.get("/v1/models")
    def models(self, request: Request) -> JSONResponse:
        try:
            self._check_auth(request)
        except ApiError as e:
            return _error(e)
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {"id": self.cfg.model_name, "object": "model", "created": 0, "owned_by": "forewarn"}
                ],
            }
        )

    @api.post("/v1/chat/completions")
    async def chat(self, request: Request) -> Any:
        return await self._handle(request, "chat")

    @api.post("/v1/completions")
    async def completions(self, request: Request) -> Any:
        return await self._handle(request, "completions")

    async def _handle(self, request: Request, endpoint: str) -> Any:
        started = time.perf_counter()
        rid = uuid.uuid4().hex[:16]
        log: dict[str, Any] = {"event": "request", "request_id": rid, "endpoint": endpoint}
        status = 200
        try:
            self._check_auth(request)
            parsed = parse_body(await request.body(), endpoint, self.cfg.model_name, self.cfg.limits)  # type: ignore[arg-type]
            log.update(n=parsed.params.n, max_tokens=parsed.params.max_new_tokens, stream=parsed.stream)
            pipeline = await self._get_pipeline()
            result = await pipeline.run(parsed.prompt, parsed.params)
            self._record(result, log, parsed)
            expose = self.cfg.guard.expose_verdicts
            if parsed.stream:
                events = stream_events(parsed, result, self.cfg.model_name, expose)
                return StreamingResponse(iter(events), media_type="text/event-stream")
            return JSONResponse(response_body(parsed, result, self.cfg.model_name, expose))
        except ApiError as e:
            status = e.status
            log.update(error=e.code)
            return _error(e)
        except Exception as e:  # noqa: BLE001 -- a genuine server fault: 500 in OpenAI's shape, logged
            status = 500
            log.update(error=f"{type(e).__name__}: {e}"[:300])
            logger.exception("forewarn request %s failed", rid)
            return _error(
                ApiError(
                    500, f"internal error ({type(e).__name__}); request id {rid}", None, "internal_error"
                )
            )
        finally:
            latency = time.perf_counter() - started
            self.m_requests.inc(tags={"endpoint": endpoint, "status": str(status)})
            self.m_latency.observe(latency, tags={"endpoint": endpoint})
            log.update(status=status, latency_s=round(latency, 4))
            logger.info(json.dumps(log))

    def _record(self, result: GuardedResult, log: dict[str, Any], parsed: ParsedRequest) -> None:
        if result.input is not None and result.input.blocked:
            self.m_blocks.inc(tags={"stage": "input", "reason": result.input.reason or "unsafe"})
        for c in result.choices:
            self.m_finish.inc(tags={"finish_reason": c.finish_reason})
            if c.output is not None and c.output.blocked:
                self.m_blocks.inc(tags={"stage": "output", "reason": c.output.reason or "unsafe"})
        log.update(
            blocked=result.blocked,
            finish_reasons=[c.finish_reason for c in result.choices],
            prompt_tokens=result.prompt_tokens,
            completion_tokens=sum(c.completion_tokens for c in result.choices),
        )
        if self.cfg.logging.log_prompts:
            log.update(prompt=prompt_text(parsed.prompt), responses=[c.text for c in result.choices])


# ---------------------------------------------------------------- building the application


def resolve_models(cfg: ServeConfig) -> ServeConfig:
    """Resolve ``testbed:<name>`` model paths to local folders (the builder is this app's job file)."""
    path = cfg.generator.model.path
    if not path.startswith("testbed:"):
        return cfg
    from forewarn.testbed import resolve_model

    model = cfg.generator.model.model_copy(update={"path": resolve_model(path)})
    return cfg.model_copy(update={"generator": cfg.generator.model_copy(update={"model": model})})


def app_from_config(cfg: ServeConfig) -> serve.Application:
    """The Serve application of a validated config (models resolved to folders first)."""
    cfg = resolve_models(cfg)
    g = cfg.generator
    generator = GeneratorDeployment.options(
        num_replicas=g.resources.replicas,
        ray_actor_options={"num_cpus": g.resources.num_cpus, "num_gpus": g.resources.num_gpus},
        max_ongoing_requests=max(2 * g.batching.max_batch_size, 16),
    ).bind(g.model_dump(mode="json"))
    judges: dict[str, Any] = {}
    handles: dict[str, Any] = {"input": None, "output": None}
    if cfg.guard_enabled:
        for stage in ("input", "output"):
            spec = getattr(cfg.guard, stage).judge
            if spec is None:
                continue
            key = spec.model_dump_json()
            if key not in judges:
                judges[key] = JudgeDeployment.options(
                    name=f"judge-{len(judges)}-{spec.kind}",
                    num_replicas=spec.resources.replicas,
                    ray_actor_options={
                        "num_cpus": spec.resources.num_cpus,
                        "num_gpus": spec.resources.num_gpus,
                    },
                    max_ongoing_requests=max(2 * g.batching.max_batch_size, 16),
                ).bind(
                    spec.model_dump(mode="json"), g.batching.max_batch_size, g.batching.batch_wait_timeout_s
                )
            handles[stage] = judges[key]
    return OpenAIIngress.options(
        num_replicas=cfg.ingress.replicas,
        ray_actor_options={"num_cpus": cfg.ingress.num_cpus},
        max_ongoing_requests=cfg.ingress.max_ongoing_requests,
    ).bind(cfg.model_dump(mode="json"), generator, handles["input"], handles["output"])


def build_app(args: dict[str, Any]) -> serve.Application:
    """``import_path`` target of ``serve/config.yaml``: ``args`` is a ServeConfig mapping laid over the
    packaged defaults (``forewarn/defaults/serve.yaml``)."""
    from forewarn.config import deep_merge, packaged_defaults

    cfg = build_config(ServeConfig, deep_merge(packaged_defaults("serve"), dict(args or {})), "serve args")
    return app_from_config(cfg)
