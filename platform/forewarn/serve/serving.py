"""Ray Serve wiring of the guarded generator: the OpenAI ingress over judge and generator deployments.

    OpenAIIngress (FastAPI: /v1/chat/completions, /v1/completions, /v1/models, /health)
      ├── JudgeDeployment  (one per distinct judge spec; input and output share it when equal; a judge
      │                     that holds no model runs inside the ingress instead: guard.judges_in)
      └── GeneratorDeployment  (@serve.batch generate, chunked stream; hf or vllm)

The ingress authenticates (:mod:`forewarn.serve.auth`), bounds every request (body size counted while
reading, a body deadline, a request timeout, at most ``limits.max_in_flight`` requests per replica,
then 503 with ``Retry-After``), runs the guard pipeline (:mod:`forewarn.serve.pipeline`, streamed by
:mod:`forewarn.serve.streaming`) and answers in OpenAI's shapes (:mod:`forewarn.serve.wire`), errors
included for every status, FastAPI's own 404/405/422 too. :func:`build_app` is the ``import_path`` of
``serve/config.yaml``; :func:`app_from_config` builds the same application from a validated config.
"""

# no `from __future__ import annotations`: FastAPI must see the real Request annotation on ingress methods
import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import SecretStr
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from forewarn.config import GenerationParams, build_config, deep_merge, packaged_defaults
from forewarn.judges.spec import build_judge
from forewarn.models.base import Prompt
from forewarn.serve.auth import KeyStore, check_exposure, key_env_vars
from forewarn.serve.config import ServeConfig
from forewarn.serve.deployments import GeneratorDeployment, JudgeDeployment
from forewarn.serve.engine import GenerationResult, StreamChunk
from forewarn.serve.ingress_support import IngressMetrics, load_tokenizer, read_body, serve_http_host
from forewarn.serve.openai_schema import ApiError, ParsedRequest, parse_body
from forewarn.serve.pipeline import GuardedPipeline, GuardedResult, prompt_text
from forewarn.serve.policy import GuardJudge, inline_judge, threaded_judge
from forewarn.serve.streaming import GuardedStream
from forewarn.serve.text import PromptViewer
from forewarn.serve.wire import SSEWriter, response_body
from forewarn.testbed import resolve_model

logger = logging.getLogger("ray.serve")
api = FastAPI(title="forewarn guarded generator", description="OpenAI-compatible, guarded.")


def error_response(e: ApiError) -> JSONResponse:
    headers = dict(e.headers or {})
    if e.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(e.body(), status_code=e.status, headers=headers or None)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    codes = {404: "not_found", 405: "method_not_allowed"}
    msg = f"{request.method} {request.url.path}: {exc.detail}"
    return error_response(
        ApiError(exc.status_code, msg, None, codes.get(exc.status_code), dict(exc.headers or {}))
    )


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    err = (exc.errors() or [{}])[0]
    param = ".".join(str(p) for p in err.get("loc", ())) or None
    return error_response(
        ApiError(422, f"Invalid request: {err.get('msg', 'validation failed')}.", param, "invalid_value")
    )


async def _server_error(request: Request, exc: Exception) -> JSONResponse:
    logger.error("forewarn: unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path)
    return error_response(ApiError(500, f"internal error ({type(exc).__name__})", None, "internal_error"))


api.add_exception_handler(Exception, _server_error)


@serve.deployment(name="ingress")
@serve.ingress(api)
class OpenAIIngress:
    """HTTP front: auth, bounds, the guard pipeline over the deployments, metrics, logs."""

    def __init__(
        self,
        cfg: dict[str, Any],
        generator: DeploymentHandle,
        input_judge: DeploymentHandle | None,
        output_judge: DeploymentHandle | None,
        api_keys: list[str] | None = None,
    ):
        self.cfg = ServeConfig.model_validate(cfg)
        self.cfg.auth.api_keys = [SecretStr(k) for k in api_keys or []]
        self.keys = KeyStore(self.cfg.auth)
        for host in {self.cfg.http.host, serve_http_host() or self.cfg.http.host}:
            check_exposure(self.cfg.auth, host, self.keys.required)
        spec = self.cfg.generator.model
        self.viewer = PromptViewer(load_tokenizer(spec), spec.max_input_tokens, spec.use_chat_template)
        self.generator = generator
        self._judge_handles = {"input": input_judge, "output": output_judge}
        self._pipeline: GuardedPipeline | None = None
        self._pipeline_lock = asyncio.Lock()
        self.in_flight = 0
        self.metrics = IngressMetrics()

    async def _get_pipeline(self) -> GuardedPipeline:
        async with self._pipeline_lock:
            if self._pipeline is None:
                judges: dict[str, GuardJudge | None] = {}
                in_process: dict[str, GuardJudge] = {}  # input and output share an equal judge
                for stage, handle in self._judge_handles.items():
                    spec = getattr(self.cfg.guard, stage).judge
                    if handle is not None:
                        judges[stage] = await self._guard_judge(handle)
                    elif spec is not None and self.cfg.guard_enabled:  # guard.judges_in: this replica
                        key = spec.model_dump_json()
                        if key not in in_process:  # a cheap judge on the loop, any other on a thread
                            wrap = inline_judge if spec.cheap else threaded_judge
                            in_process[key] = wrap(build_judge(spec))
                        judges[stage] = in_process[key]
                    else:
                        judges[stage] = None

                async def generate(prompt: Prompt, params: GenerationParams) -> GenerationResult:
                    return await self.generator.generate.remote((prompt, params))

                async def stream(
                    prompt: Prompt, params: GenerationParams, chunk_tokens: int
                ) -> AsyncIterator[StreamChunk]:
                    gen = self.generator.options(stream=True).stream.remote(prompt, params, chunk_tokens)
                    try:
                        async for chunk in gen:
                            yield chunk
                    finally:
                        gen.cancel()

                self._pipeline = GuardedPipeline(
                    self.cfg.guard, generate, judges["input"], judges["output"], self.viewer,
                    self.cfg.limits.judge_timeout_s, stream,
                )  # fmt: skip
            return self._pipeline

    @staticmethod
    async def _guard_judge(handle: DeploymentHandle) -> GuardJudge:
        info = await handle.info.remote()

        async def call(prompts: list[str], responses: list[str]) -> list[Any]:
            return await handle.judge.remote((prompts, responses))

        return GuardJudge(call, info["name"], info["higher_is_unsafe"])

    @api.get("/health")
    def health(self) -> dict[str, str]:
        return {"status": "ok", "model": self.cfg.model_name}

    @api.get("/v1/models")
    def models(self, request: Request) -> JSONResponse:
        try:
            self.keys.check(request.headers.get("authorization", ""))
        except ApiError as e:
            return error_response(e)
        model = {"id": self.cfg.model_name, "object": "model", "created": 0, "owned_by": "forewarn"}
        return JSONResponse({"object": "list", "data": [model]})

    @api.post("/v1/chat/completions")
    async def chat(self, request: Request) -> Any:
        return await self._handle(request, "chat")

    @api.post("/v1/completions")
    async def completions(self, request: Request) -> Any:
        return await self._handle(request, "completions")

    def _admit(self) -> None:
        lim = self.cfg.limits
        if self.in_flight >= lim.max_in_flight:
            raise ApiError(
                503,
                f"The server is at capacity ({lim.max_in_flight} requests in flight); "
                f"retry after {lim.retry_after_s} s.",
                None,
                "server_overloaded",
                {"Retry-After": str(lim.retry_after_s)},
            )
        self.in_flight += 1

    async def _handle(self, request: Request, endpoint: str) -> Any:
        started, rid = time.perf_counter(), uuid.uuid4().hex[:16]
        log: dict[str, Any] = {"event": "request", "request_id": rid, "endpoint": endpoint, "status": 200}
        admitted = streaming = False
        try:
            self.keys.check(request.headers.get("authorization", ""))
            self._admit()
            admitted = True
            raw = await read_body(request, self.cfg.limits)
            parsed = parse_body(raw, endpoint, self.cfg.model_name, self.cfg.limits)  # type: ignore[arg-type]
            log.update(n=parsed.params.n, max_tokens=parsed.params.max_new_tokens, stream=parsed.stream)
            pipeline = await self._get_pipeline()
            if parsed.stream:
                response = self._stream(pipeline, parsed, log, started)
                streaming = True
                return response
            try:
                result = await asyncio.wait_for(
                    pipeline.run(parsed.prompt, parsed.params), self.cfg.limits.request_timeout_s
                )
            except asyncio.TimeoutError:
                raise ApiError(
                    504,
                    f"The request took longer than {self.cfg.limits.request_timeout_s:g} s and was cancelled.",
                    None,
                    "timeout",
                ) from None
            self._record(result, log, parsed)
            return JSONResponse(
                response_body(
                    parsed, result, self.cfg.model_name, self.cfg.guard.expose_verdicts, self.cfg.compat
                )
            )
        except ApiError as e:
            log.update(status=e.status, error=e.code)
            return error_response(e)
        except Exception as e:
            log.update(status=500, error=type(e).__name__)
            logger.exception("forewarn request %s failed", rid)
            return error_response(
                ApiError(
                    500, f"internal error ({type(e).__name__}); request id {rid}", None, "internal_error"
                )
            )
        finally:
            if not streaming:
                if admitted:
                    self.in_flight -= 1
                self._finish_log(log, endpoint, started)

    def _stream(
        self, pipeline: GuardedPipeline, parsed: ParsedRequest, log: dict[str, Any], started: float
    ) -> StreamingResponse:
        gs = GuardedStream(pipeline, parsed.prompt, parsed.params, self.cfg.streaming)
        gs.prepare()  # request errors (e.g. an overlong prompt under reject) are raised before any byte is sent
        writer = SSEWriter(parsed, self.cfg.model_name, self.cfg.guard.expose_verdicts, self.cfg.compat)
        timeout = self.cfg.limits.request_timeout_s

        async def body() -> AsyncIterator[str]:
            try:
                async with asyncio.timeout(timeout):
                    async for ev in gs.events():
                        if ev.result is not None:
                            self._record(ev.result, log, parsed)
                        for line in writer.write(ev):
                            yield line
            except TimeoutError:
                log.update(status=504, error="timeout")
                for line in writer.error(
                    ApiError(
                        504, f"The stream took longer than {timeout:g} s and was cancelled.", None, "timeout"
                    )
                ):
                    yield line
            except asyncio.CancelledError:
                log.update(status=499, error="client_disconnected")
                raise
            except Exception as e:
                log.update(status=500, error=type(e).__name__)
                logger.exception("forewarn stream %s failed", log["request_id"])
                for line in writer.error(
                    ApiError(500, f"internal error ({type(e).__name__})", None, "internal_error")
                ):
                    yield line
            finally:
                self.in_flight -= 1
                self._finish_log(log, parsed.endpoint, started)

        return StreamingResponse(body(), media_type="text/event-stream")

    def _finish_log(self, log: dict[str, Any], endpoint: str, started: float) -> None:
        latency = time.perf_counter() - started
        self.metrics.request(endpoint, log["status"], latency)
        log.update(latency_s=round(latency, 4))
        logger.info(json.dumps(log))

    def _record(self, result: GuardedResult, log: dict[str, Any], parsed: ParsedRequest) -> None:
        self.metrics.result(result)
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

    model = cfg.generator.model.model_copy(update={"path": resolve_model(path)})
    return cfg.model_copy(update={"generator": cfg.generator.model_copy(update={"model": model})})


def app_from_config(cfg: ServeConfig) -> serve.Application:
    """The Serve application of a validated config (models resolved to folders first).

    Refuses (ConfigError) an unauthenticated app on a non-loopback ``http.host``; the key variable of this
    process's environment travels to every ingress replica in its ``runtime_env``."""
    env = key_env_vars(cfg.auth)
    has_keys = bool([k for k in cfg.auth.api_keys if k.get_secret_value()] or env or cfg.auth.api_keys_file)
    check_exposure(cfg.auth, cfg.http.host, has_keys)
    cfg = resolve_models(cfg)
    g = cfg.generator
    per_replica = max(2 * g.batching.max_batch_size, cfg.limits.max_in_flight)
    generator = GeneratorDeployment.options(
        num_replicas=g.resources.replicas,
        ray_actor_options={"num_cpus": g.resources.num_cpus, "num_gpus": g.resources.num_gpus},
        max_ongoing_requests=per_replica,
    ).bind(g.model_dump(mode="json"))
    judges: dict[str, Any] = {}
    handles: dict[str, Any] = {"input": None, "output": None}
    ingress_cpus = cfg.ingress.num_cpus
    if cfg.guard_enabled:
        for stage in ("input", "output"):
            spec = getattr(cfg.guard, stage).judge
            if spec is None:
                continue
            if cfg.guard.judge_in_ingress(spec):  # built by the ingress itself; it asks for the judge's CPUs
                ingress_cpus = max(ingress_cpus, cfg.ingress.num_cpus + spec.resources.num_cpus)
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
                    max_ongoing_requests=per_replica,
                ).bind(spec.model_dump(mode="json"), g.batching.max_batch_size, 0.0)
                # a judge call never waits for batch-mates: the output guard is on the request's critical
                # path; concurrent calls still merge into one batch while a batch runs
            handles[stage] = judges[key]
    actor: dict[str, Any] = {"num_cpus": ingress_cpus}
    if env:
        actor["runtime_env"] = {"env_vars": env}
    keys = [k.get_secret_value() for k in cfg.auth.api_keys]
    return OpenAIIngress.options(
        num_replicas=cfg.ingress.replicas,
        ray_actor_options=actor,
        max_ongoing_requests=max(cfg.ingress.max_ongoing_requests, cfg.limits.max_in_flight + 16),
    ).bind(cfg.model_dump(mode="json"), generator, handles["input"], handles["output"], keys)


def build_app(args: dict[str, Any]) -> serve.Application:
    """``import_path`` target of ``serve/config.yaml``: ``args`` is a ServeConfig mapping laid over the
    packaged defaults (``forewarn/defaults/serve.yaml``)."""

    cfg = build_config(ServeConfig, deep_merge(packaged_defaults("serve"), dict(args or {})), "serve args")
    return app_from_config(cfg)
