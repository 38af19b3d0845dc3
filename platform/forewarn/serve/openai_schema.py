"""The OpenAI wire format of the guarded endpoint: request validation, errors and response bodies.

Requests are checked field by field before any model runs. The endpoint honours ``model, messages /
prompt, max_tokens (max_completion_tokens), temperature, top_p, n, seed, stop, presence_penalty,
frequency_penalty, stream, stream_options.include_usage`` and vLLM's ``top_k`` / ``repetition_penalty``;
it accepts and ignores fields that change nothing here (``user``, ``metadata``, ``store``, ``logprobs:
false``, an empty ``logit_bias``, ``response_format: {type: text}``, ``tool_choice: none``, ...), and
answers anything it cannot honour (tools, JSON mode, log-probs, images, ``echo``, ``best_of > 1``)
with a 400 in OpenAI's error shape naming the parameter. Limits give 413 (size) or 400 (counts).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from forewarn.config import GenerationParams
from forewarn.serve.config import Limits
from forewarn.models.base import Prompt
from forewarn.models.openai_api import params_from_request

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
    504: "timeout_error",
}
MAX_SEED = 2**63 - 1  # torch, numpy and vLLM all take it
MIN_TEMPERATURE = 0.01  # below it (but above 0) logits / T overflow to inf and sampling yields NaN


class ApiError(Exception):
    """An HTTP error in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": ERROR_TYPES.get(self.status, "invalid_request_error"),
                "param": self.param,
                "code": self.code,
            }
        }


class _Common(BaseModel):
    """Fields both endpoints share; unknown fields are errors (named in the 400)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | int | None = Field(None, ge=0.0, le=2.0)
    top_p: float | int | None = Field(None, gt=0.0, le=1.0)
    n: int | None = Field(None, ge=1)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    stop: str | list[str] | None = None
    presence_penalty: float | int | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | int | None = Field(None, ge=-2.0, le=2.0)
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None
    user: str | None = None
    logit_bias: dict[str, float | int] | None = None
    top_k: int | None = Field(None, ge=-1, le=2**31 - 1)
    repetition_penalty: float | int | None = Field(None, ge=0.01, le=10.0)
    # accepted and ignored: they change nothing on this server
    metadata: dict[str, Any] | None = None
    store: bool | None = None
    service_tier: str | None = None


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class ChatRequest(_Common):
    messages: list[_Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=0)
    response_format: dict[str, Any] | None = None
    tools: list[Any] | None = Field(None, max_length=0)
    tool_choice: Literal["none"] | None = None
    parallel_tool_calls: bool | None = None
    functions: list[Any] | None = Field(None, max_length=0)


class CompletionRequest(_Common):
    prompt: str | list[str]
    logprobs: int | None = Field(None, ge=0, le=0)
    echo: Literal[False] | None = None
    best_of: Literal[1] | None = None
    suffix: None = None


@dataclass
class ParsedRequest:
    endpoint: Literal["chat", "completions"]
    prompt: Prompt
    params: GenerationParams
    stream: bool
    include_usage: bool
    user: str | None


def _first_error(e: ValidationError) -> ApiError:
    err = e.errors()[0]
    param = ".".join(str(p) for p in err["loc"]) or None
    if err["type"] == "extra_forbidden":
        return ApiError(
            400,
            f"Unrecognized request argument supplied: {param} (this endpoint does not support it; remove it)",
            param,
            "unsupported_parameter",
        )
    if err["type"] == "missing":
        return ApiError(400, f"Missing required parameter: '{param}'.", param, "missing_required_parameter")
    value = json.dumps(err.get("input"), default=str)
    value = value if len(value) <= 60 else value[:57] + "..."
    return ApiError(400, f"Invalid value for '{param}' ({value}): {err['msg']}.", param, "invalid_value")


def _content_text(content: Any, i: int) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for k, part in enumerate(content):  # OpenAI content parts; PyRIT sends text parts (issue #704)
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise ApiError(
                400,
                f"messages[{i}].content[{k}]: only text content parts are supported "
                f"(got type {part.get('type')!r})",
                f"messages[{i}].content",
                "unsupported_content",
            )
        parts.append(part["text"])
    return "".join(parts)


def parse_body(
    raw: bytes, endpoint: Literal["chat", "completions"], served_model: str, limits: Limits
) -> ParsedRequest:
    """Validate a raw request body into a prompt and GenerationParams, or raise :class:`ApiError`."""
    if len(raw) > limits.max_body_bytes:
        raise ApiError(
            413,
            f"Request body is {len(raw)} bytes; the limit is {limits.max_body_bytes}.",
            None,
            "request_too_large",
        )
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ApiError(
            400,
            f"The request body is not valid JSON ({type(e).__name__}: {str(e)[:120]}).",
            None,
            "invalid_json",
        ) from None
    if not isinstance(body, dict):
        raise ApiError(
            400, f"The request body must be a JSON object, got {type(body).__name__}.", None, "invalid_json"
        )
    try:
        req = (ChatRequest if endpoint == "chat" else CompletionRequest).model_validate(body)
    except ValidationError as e:
        raise _first_error(e) from None
    if req.model != served_model:
        raise ApiError(
            404,
            f"The model `{req.model[:100]}` does not exist; this server serves "
            f"`{served_model}` (GET /v1/models).",
            "model",
            "model_not_found",
        )
    if req.logit_bias:
        raise ApiError(
            400, "logit_bias is not supported by this endpoint.", "logit_bias", "unsupported_parameter"
        )
    if isinstance(req, ChatRequest):
        if req.logprobs:
            raise ApiError(
                400, "logprobs is not supported by this endpoint.", "logprobs", "unsupported_parameter"
            )
        fmt = (req.response_format or {}).get("type", "text")
        if fmt != "text":
            raise ApiError(
                400,
                f"response_format {fmt!r} is not supported (only 'text').",
                "response_format",
                "unsupported_parameter",
            )
        if len(req.messages) > limits.max_messages:
            raise ApiError(
                400,
                f"{len(req.messages)} messages; the limit is {limits.max_messages}.",
                "messages",
                "too_many_messages",
            )
        prompt: Prompt = [
            {"role": "system" if m.role == "developer" else m.role, "content": _content_text(m.content, i)}
            for i, m in enumerate(req.messages)
        ]
        if not any(m["role"] == "user" for m in prompt):
            raise ApiError(
                400, "messages must contain at least one user message.", "messages", "invalid_value"
            )
        size = sum(len(m["content"]) for m in prompt)
        max_tokens = req.max_completion_tokens or req.max_tokens
    else:
        if req.logprobs:
            raise ApiError(
                400, "logprobs is not supported by this endpoint.", "logprobs", "unsupported_parameter"
            )
        if isinstance(req.prompt, list):
            if len(req.prompt) != 1:
                raise ApiError(
                    400,
                    f"prompt: send one prompt per request (got a list of {len(req.prompt)}).",
                    "prompt",
                    "invalid_value",
                )
            prompt = req.prompt[0]
        else:
            prompt = req.prompt
        size = len(prompt)
        max_tokens = req.max_tokens
    if size > limits.max_prompt_chars:
        raise ApiError(
            413,
            f"The prompt has {size} characters; the limit is {limits.max_prompt_chars}.",
            "messages" if endpoint == "chat" else "prompt",
            "prompt_too_long",
        )
    n = req.n or 1
    if n > limits.max_n:
        raise ApiError(400, f"n={n} is above this server's limit of {limits.max_n}.", "n", "invalid_value")
    if max_tokens is not None and max_tokens > limits.max_tokens:
        raise ApiError(
            400,
            f"max_tokens={max_tokens} is above this server's limit of {limits.max_tokens}.",
            "max_tokens",
            "invalid_value",
        )
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stop) > limits.max_stop:
        raise ApiError(
            400, f"{len(stop)} stop sequences; the limit is {limits.max_stop}.", "stop", "invalid_value"
        )
    if stream_opts := req.stream_options:
        if set(stream_opts) - {"include_usage"} or not isinstance(
            stream_opts.get("include_usage", False), bool
        ):
            raise ApiError(
                400, "stream_options supports only {include_usage: bool}.", "stream_options", "invalid_value"
            )
    if req.temperature is not None and 0 < req.temperature < MIN_TEMPERATURE:
        raise ApiError(
            400,
            f"Invalid value for 'temperature' ({req.temperature!r}): use 0 for greedy decoding or at least "
            f"{MIN_TEMPERATURE} (smaller values overflow the logits).",
            "temperature",
            "invalid_value",
        )
    # logprobs were refused above (a completions request may still carry logprobs=0)
    params = params_from_request({**req.model_dump(), "logprobs": None}, limits.default_max_tokens)
    return ParsedRequest(
        endpoint,
        prompt,
        params,
        bool(req.stream),
        bool((req.stream_options or {}).get("include_usage")),
        req.user,
    )
