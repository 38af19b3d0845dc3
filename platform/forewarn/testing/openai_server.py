"""A local OpenAI-compatible HTTP server for tests, demos and scripted models.

It is a real HTTP server (FastAPI on uvicorn, in a background thread, bound to 127.0.0.1) that speaks
``GET /v1/models``, ``POST /v1/chat/completions`` and ``POST /v1/completions``. Answers come from a
*responder*: a plain function of the parsed request (a scripted model, e.g. an analyst that always
proposes the same prompt) or any forewarn ``Generator`` (``GeneratorResponder``). Faults make the
unhappy paths testable: ``inject(429, times=2)`` answers the next two requests with a rate-limit error,
``inject(400, times=None, when=...)`` rejects every matching request, ``inject(None, delay_s=0.5)``
only slows requests down. Every request is logged (``.requests``) with its body, status, timing and how
many requests were in flight when it arrived (``.peak_in_flight``), so client-side concurrency limits
can be checked from the server's side.

    with OpenAIServer(lambda req: "hello", model="scripted") as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="EMPTY")

``python -m forewarn.testing.openai_server --model-path DIR`` serves a local HF folder for manual use.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from forewarn.config import GenerationParams, ModelSpec, format_validation_error
from forewarn.models import load_generator
from forewarn.models.base import Completion, Generator, Prompt, apply_stop
from forewarn.models.openai_api import params_from_request

Endpoint = Literal["chat", "completions"]
ResponderOutput = Union[str, Sequence[str], Sequence[Completion]]

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout",
    429: "rate_limit_error",
}


@dataclass
class ServerRequest:
    """One parsed generation request, as a responder or a fault's ``when`` sees it."""

    endpoint: Endpoint
    model: str
    prompt: Prompt  # the chat messages, or the completion prompt string
    params: GenerationParams
    body: dict[str, Any]
    headers: dict[str, str]

    @property
    def text(self) -> str:
        """The prompt string, or the content of the last user turn of a chat."""
        if isinstance(self.prompt, str):
            return self.prompt
        users = [m.get("content") or "" for m in self.prompt if m.get("role") == "user"]
        return str(users[-1]) if users else ""


Responder = Callable[[ServerRequest], ResponderOutput]


@dataclass
class Fault:
    """An injected failure or delay. ``status=None`` answers normally after ``delay_s``.

    ``times`` is how many matching requests it hits (None: all of them); ``when`` picks requests.
    """

    status: int | None
    times: int | None = 1
    when: Callable[[ServerRequest], bool] | None = None
    delay_s: float = 0.0
    message: str | None = None
    retry_after: float | None = None
    hits: int = 0

    def matches(self, req: ServerRequest) -> bool:
        spent = self.times is not None and self.hits >= self.times
        return not spent and (self.when is None or bool(self.when(req)))


@dataclass
class LoggedRequest:
    """What the server saw and answered, in arrival order."""

    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    text: str  # ServerRequest.text, or "" when the request did not parse
    status: int
    started: float  # time.monotonic()
    finished: float
    in_flight: int  # requests being served when this one arrived, itself included
    fault: Fault | None = None


def echo_responder(req: ServerRequest) -> str:
    """The default responder: answers ``echo: <prompt text>``."""
    return f"echo: {req.text}"


class GeneratorResponder:
    """Serve any forewarn Generator. Calls are serialised: local models are not built for threads."""

    def __init__(self, generator: Generator):
        self.generator = generator
        self._lock = threading.Lock()

    def __call__(self, req: ServerRequest) -> list[Completion]:
        with self._lock:
            return self.generator.generate([req.prompt], req.params)[0]


def request_params(body: dict[str, Any]) -> GenerationParams:
    """An OpenAI request body to GenerationParams: the mapping the guarded endpoint uses, with a 64-token
    default (logprobs accepted here: the ``openai`` backend's tests ask for them)."""
    return params_from_request(body)


class OpenAIServer:
    """A real OpenAI-compatible server on 127.0.0.1 in a background thread; use as a context manager."""

    def __init__(
        self,
        responder: Responder | Generator | None = None,
        *,
        model: str = "forewarn-test",
        host: str = "127.0.0.1",
        port: int = 0,
        delay_s: float = 0.0,
    ):
        if responder is None:
            responder = echo_responder
        elif isinstance(responder, Generator):
            responder = GeneratorResponder(responder)
        self.responder: Responder = responder
        self.model, self.host, self.delay_s = model, host, delay_s
        self._port = port
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._log: list[LoggedRequest] = []
        self._in_flight = 0
        self._peak = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.app = self._build_app()

    # ------------------------------------------------------------ lifecycle

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self._port}"

    @property
    def base_url(self) -> str:
        """What an OpenAI client takes as ``base_url``."""
        return f"{self.url}/v1"

    def start(self, timeout_s: float = 10.0) -> "OpenAIServer":
        if self._thread is not None:
            raise RuntimeError("server already started")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._port))
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [sock]},
            name=f"openai-server-{self._port}",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the OpenAI test server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> "OpenAIServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ faults and the log

    def inject(
        self,
        status: int | None,
        *,
        times: int | None = 1,
        when: Callable[[ServerRequest], bool] | None = None,
        delay_s: float = 0.0,
        message: str | None = None,
        retry_after: float | None = None,
    ) -> Fault:
        """Add a fault; the first matching fault (in insertion order) handles a request."""
        fault = Fault(status, times, when, delay_s, message, retry_after)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def reset(self) -> None:
        """Forget faults, the request log and the peak in-flight count."""
        with self._lock:
            self._faults.clear()
            self._log.clear()
            self._peak = 0

    @property
    def requests(self) -> list[LoggedRequest]:
        with self._lock:
            return list(self._log)

    @property
    def peak_in_flight(self) -> int:
        """The most requests served at the same time since the start (or the last ``reset``)."""
        return self._peak

    # ------------------------------------------------------------ HTTP

    def _build_app(self) -> FastAPI:
        app = FastAPI(title="forewarn OpenAI-compatible test server")

        @app.get("/v1/models")
        async def models() -> dict:
            return {
                "object": "list",
                "data": [{"id": self.model, "object": "model", "created": 0, "owned_by": "forewarn"}],
            }

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> JSONResponse:
            return await self._handle(request, "chat")

        @app.post("/v1/completions")
        async def completions(request: Request) -> JSONResponse:
            return await self._handle(request, "completions")

        return app

    async def _handle(self, request: Request, endpoint: Endpoint) -> JSONResponse:
        started = time.monotonic()
        with self._lock:
            self._in_flight += 1
            in_flight = self._in_flight
            self._peak = max(self._peak, in_flight)
        body: dict[str, Any] = {}
        req: ServerRequest | None = None
        fault: Fault | None = None
        status = 500
        try:
            try:
                body = json.loads(await request.body())
                req = self._parse(endpoint, body, dict(request.headers))
            except (ValueError, TypeError, ValidationError) as e:
                msg = format_validation_error(e, "request") if isinstance(e, ValidationError) else str(e)
                status = 400
                return _error(400, msg)
            if req.model != self.model:
                status = 404
                return _error(
                    404, f"The model `{req.model}` does not exist (this server has {self.model!r})."
                )
            with self._lock:
                fault = next((f for f in self._faults if f.matches(req)), None)
                if fault is not None:
                    fault.hits += 1
            delay = self.delay_s + (fault.delay_s if fault else 0.0)
            if delay > 0:
                await asyncio.sleep(delay)
            if fault is not None and fault.status is not None:
                status = fault.status
                headers = {"retry-after": f"{fault.retry_after:g}"} if fault.retry_after is not None else None
                return _error(fault.status, fault.message or f"injected {fault.status}", headers)
            try:
                payload = await asyncio.to_thread(self._answer, req)
            except Exception as e:  # noqa: BLE001 -- a failing responder is a 500, as on a real server
                status = 500
                return _error(500, f"responder failed: {type(e).__name__}: {e}")
            status = 200
            return JSONResponse(payload)
        finally:
            with self._lock:
                self._in_flight -= 1
                self._log.append(
                    LoggedRequest(
                        path=request.url.path,
                        body=body,
                        headers=dict(request.headers),
                        text=req.text if req else "",
                        status=status,
                        started=started,
                        finished=time.monotonic(),
                        in_flight=in_flight,
                        fault=fault,
                    )
                )

    def _parse(self, endpoint: Endpoint, body: Any, headers: dict[str, str]) -> ServerRequest:
        if not isinstance(body, dict):
            raise ValueError("the request body must be a JSON object")
        if body.get("stream"):
            raise ValueError("stream=true is not supported by this test server")
        if not body.get("model"):
            raise ValueError("'model' is required")
        if endpoint == "chat":
            prompt = body.get("messages")
            if not isinstance(prompt, list) or not prompt:
                raise ValueError("'messages' must be a non-empty list of {role, content} objects")
        else:
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
                prompt = prompt[0]
            if not isinstance(prompt, str):
                raise ValueError("'prompt' must be a string (one prompt per request on this server)")
        return ServerRequest(endpoint, body["model"], prompt, request_params(body), body, headers)

    def _answer(self, req: ServerRequest) -> dict[str, Any]:
        completions = _normalise(self.responder(req), req.params)
        want_ids = bool(req.body.get("return_token_ids"))
        choices = [
            (_chat_choice if req.endpoint == "chat" else _text_choice)(i, c, req.params, want_ids)
            for i, c in enumerate(completions)
        ]
        used = sum(len(c.token_ids) or len(c.text.split()) for c in completions)
        prompt_tokens = len(req.text.split())
        return {
            "id": f"{'chatcmpl' if req.endpoint == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:12]}",
            "object": "chat.completion" if req.endpoint == "chat" else "text_completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": used,
                "total_tokens": prompt_tokens + used,
            },
        }


# ---------------------------------------------------------------- response building


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    err_type = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return JSONResponse(
        {"error": {"message": message, "type": err_type, "param": None, "code": status}},
        status_code=status,
        headers=headers,
    )


def _normalise(out: ResponderOutput, params: GenerationParams) -> list[Completion]:
    """Responder output to exactly ``n`` completions, with stop strings applied as a server would."""
    items = [out] if isinstance(out, str) else list(out)
    comps = [Completion(text=x) if isinstance(x, str) else x for x in items]
    if len(comps) == 1 and params.n > 1:
        comps = comps * params.n
    if len(comps) != params.n:
        raise ValueError(f"responder returned {len(comps)} completions for n={params.n}")
    out_list = []
    for c in comps:
        if c.error is not None:
            raise RuntimeError(c.error)
        text, hit = apply_stop(c.text, params.stop)
        out_list.append(Completion(text, list(c.token_ids), "stop" if hit else c.finish_reason, c.logprobs))
    return out_list


def _token_strings(c: Completion) -> list[str]:
    return [f"<{t}>" for t in c.token_ids] if c.token_ids else [""] * len(c.logprobs or [])


def _chat_choice(i: int, c: Completion, params: GenerationParams, want_ids: bool) -> dict[str, Any]:
    choice: dict[str, Any] = {
        "index": i,
        "message": {"role": "assistant", "content": c.text},
        "finish_reason": c.finish_reason,
        "logprobs": None,
    }
    if params.logprobs and c.logprobs is not None:
        choice["logprobs"] = {
            "content": [
                {"token": tok, "logprob": lp, "bytes": None, "top_logprobs": []}
                for tok, lp in zip(_token_strings(c), c.logprobs)
            ]
        }
    if want_ids:
        choice["token_ids"] = list(c.token_ids)
    return choice


def _text_choice(i: int, c: Completion, params: GenerationParams, want_ids: bool) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": i, "text": c.text, "finish_reason": c.finish_reason, "logprobs": None}
    if params.logprobs and c.logprobs is not None:
        toks = _token_strings(c)
        choice["logprobs"] = {
            "tokens": toks,
            "token_logprobs": list(c.logprobs),
            "top_logprobs": [{} for _ in toks],
            "text_offset": [0] * len(toks),
        }
    if want_ids:
        choice["token_ids"] = list(c.token_ids)
    return choice


def main(argv: list[str] | None = None) -> None:
    """Serve a local HF folder (or the echo responder) until Ctrl-C."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-path", help="a local HF model folder; omit to serve the echo responder")
    ap.add_argument("--model", default=None, help="the model name clients send (default: the path)")
    ap.add_argument("--port", type=int, default=8000)
    args = ap.parse_args(argv)
    responder: Responder | Generator = echo_responder
    if args.model_path:
        responder = load_generator(ModelSpec(path=args.model_path))
    name = args.model or args.model_path or "forewarn-test"
    with OpenAIServer(responder, model=name, port=args.port) as server:
        print(f"serving {name!r} at {server.base_url} (Ctrl-C to stop)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
