"""Helpers of the ingress replica: bounded body reading, its Prometheus metrics, the generator's tokenizer
and the host the Serve proxies actually bind.

:func:`read_body` counts bytes as they arrive: a body over ``limits.max_body_bytes`` is refused with 413
as soon as it crosses the limit (a declared ``Content-Length`` over it, before reading anything), and a
client that does not finish its body within ``limits.body_timeout_s`` gets 408, so slow clients cannot
hold ingress slots.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from fastapi import Request

from forewarn.config import ModelSpec
from forewarn.errors import ModelNotFound
from forewarn.serve.config import Limits
from forewarn.serve.openai_schema import ApiError
from forewarn.serve.pipeline import GuardedResult

logger = logging.getLogger("ray.serve")


def _too_large(size: int | str, limit: int) -> ApiError:
    return ApiError(413, f"Request body is {size} bytes; the limit is {limit}.", None, "request_too_large")


async def read_body(request: Request, limits: Limits) -> bytes:
    """The request body, read under the size limit and the body deadline."""
    limit = limits.max_body_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(declared, limit)
    buf = bytearray()

    async def read() -> None:
        async for chunk in request.stream():
            buf.extend(chunk)
            if len(buf) > limit:
                raise _too_large(f"more than {limit}", limit)

    try:
        await asyncio.wait_for(read(), limits.body_timeout_s)
    except asyncio.TimeoutError:
        raise ApiError(
            408,
            f"The request body was not received within {limits.body_timeout_s:g} s; send it at once.",
            None,
            "request_timeout",
        ) from None
    return bytes(buf)


def load_tokenizer(spec: ModelSpec) -> Any:
    """The generator model's tokenizer (no weights): the input guard renders and truncates prompts with it
    exactly as the generator does."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(
            spec.path, trust_remote_code=spec.trust_remote_code, local_files_only=not Path(spec.path).exists()
        )
    except OSError as e:
        raise ModelNotFound(f"generator.model.path={spec.path!r}: no tokenizer there ({e})") from None
    tok.truncation_side = "left"
    return tok


def serve_http_host() -> str | None:
    """The host Serve's HTTP proxies bind (``http_options.host`` of the running Serve instance), read from
    the controller: ``serve run serve/config.yaml`` sets it outside this app's args. None when the
    controller cannot say (the configured ``http.host`` is then checked alone, with a warning)."""
    import ray
    from ray.serve.context import _get_global_client

    try:
        client = _get_global_client()
        return str(ray.get(client._controller.get_http_config.remote(), timeout=30).host)
    except Exception as e:  # noqa: BLE001 -- a private Serve API: report, and check the configured host
        logger.warning(
            "forewarn: could not read Serve's HTTP host (%s); checking http.host only", type(e).__name__
        )
        return None


class IngressMetrics:
    """The ingress's Prometheus metrics (``ray.serve.metrics``): requests, blocks, finish reasons, latency."""

    def __init__(self) -> None:
        from ray.serve import metrics

        self.requests = metrics.Counter(
            "forewarn_requests", "HTTP requests by endpoint and status", tag_keys=("endpoint", "status")
        )
        self.blocks = metrics.Counter(
            "forewarn_blocks", "guard blocks by stage and reason", tag_keys=("stage", "reason")
        )
        self.finish = metrics.Counter(
            "forewarn_finish", "choices by finish reason", tag_keys=("finish_reason",)
        )
        self.latency = metrics.Histogram(
            "forewarn_request_latency_s",
            "request latency in seconds",
            boundaries=[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
            tag_keys=("endpoint",),
        )

    def request(self, endpoint: str, status: int, latency_s: float) -> None:
        self.requests.inc(tags={"endpoint": endpoint, "status": str(status)})
        self.latency.observe(latency_s, tags={"endpoint": endpoint})

    def result(self, result: GuardedResult) -> None:
        if result.input is not None and result.input.blocked:
            self.blocks.inc(tags={"stage": "input", "reason": result.input.reason or "unsafe"})
        for c in result.choices:
            self.finish.inc(tags={"finish_reason": c.finish_reason})
            if c.output is not None and c.output.blocked:
                self.blocks.inc(tags={"stage": "output", "reason": c.output.reason or "unsafe"})
