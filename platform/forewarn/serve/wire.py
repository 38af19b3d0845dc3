"""Response bodies and server-sent events of the guarded endpoint, in OpenAI's exact shapes.

``/v1/chat/completions`` answers ``chat.completion`` (streamed: ``chat.completion.chunk`` with ``delta``)
and ``/v1/completions`` answers ``text_completion`` (streamed: ``text_completion`` chunks with
``choices[i].text``), so the ``openai`` client parses both APIs. Everything that is not OpenAI's goes
under ``forewarn``. With ``compat: openai`` the finish reason ``recurrence`` (a stop detector ended a
loop), outside OpenAI's enum, is sent as ``length``; the real reason stays in ``forewarn.finish_reasons``.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from forewarn.serve.openai_schema import ApiError, ParsedRequest
from forewarn.serve.pipeline import GuardedResult
from forewarn.serve.streaming import StreamEvent

OPENAI_FINISH = {"stop", "length", "content_filter", "tool_calls", "function_call"}


def wire_finish(reason: str | None, compat: str) -> str | None:
    """The finish reason as sent: unchanged, or mapped into OpenAI's enum under ``compat: openai``."""
    if reason is None or compat != "openai" or reason in OPENAI_FINISH:
        return reason
    return "length"  # recurrence (and any other early stop): the model was cut before it finished


def usage(result: GuardedResult) -> dict[str, int]:
    done = sum(c.completion_tokens for c in result.choices)
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": done,
        "total_tokens": result.prompt_tokens + done,
    }


def response_body(
    parsed: ParsedRequest, result: GuardedResult, model: str, expose: bool, compat: str = "forewarn"
) -> dict[str, Any]:
    """A ``chat.completion`` or ``text_completion`` body; ``forewarn`` holds the guard's own fields."""
    chat = parsed.endpoint == "chat"
    choices = [
        (
            {"index": c.index, "message": {"role": "assistant", "content": c.text}}
            if chat
            else {"index": c.index, "text": c.text}
        )
        | {"finish_reason": wire_finish(c.finish_reason, compat), "logprobs": None}
        for c in result.choices
    ]
    return {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": usage(result),
        "forewarn": result.forewarn(expose),
    }


class SSEWriter:
    """Turns :class:`StreamEvent` objects into server-sent events of one streamed response."""

    def __init__(self, parsed: ParsedRequest, model: str, expose: bool, compat: str):
        self.parsed, self.model, self.expose, self.compat = parsed, model, expose, compat
        self.chat = parsed.endpoint == "chat"
        self.id = f"{'chatcmpl' if self.chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.started: set[int] = set()

    def _event(self, choices: list[dict[str, Any]], **extra: Any) -> str:
        chunk = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        } | extra
        return f"data: {json.dumps(chunk)}\n\n"

    def _choice(self, index: int, text: str | None, finish: str | None) -> dict[str, Any]:
        if not self.chat:
            return {"index": index, "text": text or "", "finish_reason": finish, "logprobs": None}
        delta: dict[str, Any] = {} if text is None else {"content": text}
        if index not in self.started:
            self.started.add(index)
            delta = {"role": "assistant", "content": text or ""}
        return {"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}

    def write(self, ev: StreamEvent) -> list[str]:
        """The SSE lines of one event (the ``done`` event adds the forewarn chunk, usage and ``[DONE]``)."""
        if ev.kind == "delta":
            return [self._event([self._choice(ev.index, ev.text, None)])]
        if ev.kind == "finish":
            return [self._event([self._choice(ev.index, None, wire_finish(ev.finish_reason, self.compat))])]
        assert ev.result is not None
        out = [self._event([], forewarn=ev.result.forewarn(self.expose))]
        if self.parsed.include_usage:
            out.append(self._event([], usage=usage(ev.result)))
        return out + ["data: [DONE]\n\n"]

    @staticmethod
    def error(e: ApiError) -> list[str]:
        """An error after the stream started (e.g. the request timeout): OpenAI's error object as an event."""
        return [f"data: {json.dumps(e.body())}\n\n", "data: [DONE]\n\n"]
