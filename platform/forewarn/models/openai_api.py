"""The ``openai`` backend: any OpenAI-compatible endpoint through the official ``openai`` client.

That covers OpenAI itself, a vLLM or SGLang server, Ray Serve LLM apps and this project's own guarded
Serve endpoint. One request per prompt (``n`` samples each), at most ``spec.max_concurrency`` requests
in flight, results in prompt order.

Failure policy (ours, not the client's: the client's own retries are off so it is explicit and tested):

- 429, 408, 5xx and connection errors/timeouts are retried up to ``spec.max_retries`` times with
  exponential backoff and jitter (``backoff_s * 2**attempt``, capped, times a random factor in
  [0.5, 1]); a server's ``Retry-After`` is honoured up to the cap. A row still failing after that
  becomes an error row.
- Other 4xx (a prompt too long, a bad parameter, a content policy refusal) are not retried: the row
  becomes ``Completion(finish_reason="error", error=...)`` and the other rows go on.
- 401 (bad key) and 404 (model not served, wrong base URL) concern every row, so they raise
  ``BackendUnavailable`` at once instead of filling a run with error rows.

Sampling: ``temperature``, ``top_p``, ``max_tokens``, ``n``, ``stop``, ``seed``, the presence and
frequency penalties and log-probs map to the standard fields. ``top_k`` and ``repetition_penalty`` have
no OpenAI field; when set to a non-default value they go in the request body as vLLM's extensions do
(an endpoint that does not know them answers 400, which shows up as per-row errors).
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai

from forewarn.config import GenerationParams, ModelSpec
from forewarn.errors import BackendUnavailable, ConfigError
from forewarn.models.base import Completion, Prompt, apply_stop, as_chat

log = logging.getLogger(__name__)

NO_KEY = "EMPTY"  # the conventional key for servers that need none (vLLM, forewarn serve)
RETRYABLE_STATUS = frozenset({408, 429})
FATAL_STATUS = {401: "the server rejected the API key", 404: "the model or endpoint does not exist"}


def resolve_api_key(spec: ModelSpec) -> str:
    """The API key from ``$spec.api_key_env``; ``api_key_env: EMPTY`` means the server needs no key."""
    if spec.api_key_env == NO_KEY:
        return NO_KEY
    key = os.environ.get(spec.api_key_env, "").strip()
    if not key:
        raise ConfigError(
            f"model.api_key_env={spec.api_key_env!r}: the environment variable {spec.api_key_env} "
            "is not set. "
            f"Export it with the API key for {spec.base_url}, or set it (or model.api_key_env) to "
            f"{NO_KEY} for a server that needs no key, such as a local vLLM or forewarn serve endpoint."
        )
    return key


def request_kwargs(prompt: Prompt, params: GenerationParams, spec: ModelSpec) -> tuple[str, dict[str, Any]]:
    """The endpoint (``chat`` or ``completions``) and the ``create(...)`` kwargs for one prompt.

    A string prompt goes to ``/completions`` as raw text when ``spec.use_chat_template`` is False,
    else it becomes a single user turn of a chat, like the other backends.
    """
    endpoint = "completions" if isinstance(prompt, str) and not spec.use_chat_template else "chat"
    kw: dict[str, Any] = dict(
        model=spec.path,
        n=params.n,
        temperature=params.temperature,
        top_p=params.top_p,
        max_tokens=params.max_new_tokens,
    )
    if endpoint == "chat":
        kw["messages"] = as_chat(prompt)
    else:
        kw["prompt"] = prompt
    if params.stop:
        kw["stop"] = list(params.stop)
    if params.seed is not None:
        kw["seed"] = params.seed
    if params.presence_penalty:
        kw["presence_penalty"] = params.presence_penalty
    if params.frequency_penalty:
        kw["frequency_penalty"] = params.frequency_penalty
    if params.logprobs:
        # chat takes a bool; legacy completions take how many top alternatives (1 is the widest-supported)
        kw["logprobs"] = True if endpoint == "chat" else 1
    extra: dict[str, Any] = {}
    if params.top_k:
        extra["top_k"] = params.top_k
    if params.repetition_penalty != 1.0:
        extra["repetition_penalty"] = params.repetition_penalty
    if extra:
        kw["extra_body"] = extra
    return endpoint, kw


def params_from_request(body: Mapping[str, Any], default_max_tokens: int = 64) -> GenerationParams:
    """The inverse of :func:`request_kwargs`: an OpenAI request body (chat or completions) to
    GenerationParams, with OpenAI's defaults (temperature 1, top_p 1) and vLLM's ``top_k`` /
    ``repetition_penalty`` extensions. Every server of this project (the guarded endpoint, the test
    server) maps requests with it; range checks are the caller's (its errors name the field)."""
    stop = body.get("stop")
    top_k = body.get("top_k")
    logprobs = body.get("logprobs")
    return GenerationParams(
        max_new_tokens=body.get("max_completion_tokens") or body.get("max_tokens") or default_max_tokens,
        temperature=1.0 if body.get("temperature") is None else float(body["temperature"]),
        top_p=1.0 if body.get("top_p") is None else float(body["top_p"]),
        top_k=0 if top_k in (None, -1) else int(top_k),
        n=body.get("n") or 1,
        seed=body.get("seed"),
        stop=[s for s in ([stop] if isinstance(stop, str) else list(stop or [])) if s],
        repetition_penalty=float(body.get("repetition_penalty") or 1.0),
        presence_penalty=float(body.get("presence_penalty") or 0.0),
        frequency_penalty=float(body.get("frequency_penalty") or 0.0),
        logprobs=bool(logprobs) if isinstance(logprobs, bool) else logprobs is not None,
    )


def _finish(reason: str | None) -> str:
    """OpenAI finish reasons to ours: stop/length kept, function_call folded into tool_calls."""
    if reason is None:
        return "stop"
    return "tool_calls" if reason == "function_call" else reason


def parse_response(endpoint: str, resp: Any, params: GenerationParams) -> list[Completion]:
    """A ChatCompletion / Completion object to ``params.n`` Completions, in choice-index order."""
    choices = sorted(resp.choices, key=lambda c: c.index)
    if len(choices) != params.n:
        msg = (
            f"the server returned {len(choices)} choices for n={params.n} "
            "(it may not support n>1; set generation n=1)"
        )
        return error_row(msg, params.n)
    out = []
    for ch in choices:
        extra = ch.model_extra or {}
        if endpoint == "chat":
            text = ch.message.content or ""
            got = params.logprobs and ch.logprobs is not None and ch.logprobs.content is not None
            lps = [t.logprob for t in ch.logprobs.content] if got else None
        else:
            text = ch.text or ""
            got = params.logprobs and ch.logprobs is not None and ch.logprobs.token_logprobs is not None
            lps = list(ch.logprobs.token_logprobs) if got else None
        text, hit = apply_stop(text, params.stop)  # for servers that ignore `stop`
        ids = [int(t) for t in extra.get("token_ids") or []]  # vLLM returns them on request
        reason = "stop" if hit else _finish(ch.finish_reason)
        out.append(Completion(text=text, token_ids=ids, finish_reason=reason, logprobs=lps))
    return out


def error_row(message: str, n: int) -> list[Completion]:
    return [Completion(text="", finish_reason="error", error=message) for _ in range(n)]


class OpenAIGenerator:
    """Batched generation against an OpenAI-compatible endpoint with bounded concurrency and retries.

    ``stats`` counts ``requests`` (HTTP attempts), ``retries`` and ``error_rows`` over the generator's
    life, for logging and tests.
    """

    def __init__(self, spec: ModelSpec, *, backoff_s: float = 0.5, max_backoff_s: float = 20.0):
        if spec.backend != "openai" or not spec.base_url:
            raise ConfigError(
                f"model.backend={spec.backend!r}: OpenAIGenerator needs backend 'openai' "
                "and model.base_url (e.g. http://127.0.0.1:8000/v1)"
            )
        self.spec = spec
        self.name = spec.path
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.client = openai.OpenAI(
            base_url=spec.base_url,
            api_key=resolve_api_key(spec),
            max_retries=0,
            timeout=spec.request_timeout_s,
        )
        self.stats: Counter[str] = Counter()
        self._stats_lock = threading.Lock()
        self._rng = random.Random()

    def models(self) -> list[str]:
        """The model ids the endpoint serves (``GET /models``)."""
        return [m.id for m in self.client.models.list()]

    def close(self) -> None:
        self.client.close()

    def generate(self, prompts: list[Prompt], params: GenerationParams) -> list[list[Completion]]:
        """``params.n`` completions per prompt, in prompt order; a failing row never fails the batch."""
        if not prompts:
            return []
        workers = min(self.spec.max_concurrency, len(prompts))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="openai-gen") as pool:
            futures = [pool.submit(self._one, p, params) for p in prompts]
            try:
                return [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise

    # ------------------------------------------------------------ one prompt

    def _count(self, key: str, k: int = 1) -> None:
        with self._stats_lock:
            self.stats[key] += k

    def _one(self, prompt: Prompt, params: GenerationParams) -> list[Completion]:
        endpoint, kw = request_kwargs(prompt, params, self.spec)
        create = self.client.chat.completions.create if endpoint == "chat" else self.client.completions.create
        last = ""
        for attempt in range(self.spec.max_retries + 1):
            if attempt:
                self._count("retries")
            self._count("requests")
            retry_after: float | None = None
            try:
                return parse_response(endpoint, create(**kw), params)
            except openai.APIStatusError as e:
                status = e.status_code
                last = f"HTTP {status} ({type(e).__name__}): {_message(e)}"
                if status in FATAL_STATUS:
                    raise BackendUnavailable(
                        f"{FATAL_STATUS[status]} at model.base_url={self.spec.base_url!r} for "
                        f"model.path={self.spec.path!r} ({last}). Check the key in ${self.spec.api_key_env}, "
                        f"the base URL and the served model ids (GET {self.spec.base_url}/models)."
                    ) from None
                if status not in RETRYABLE_STATUS and status < 500:
                    self._count("error_rows")
                    return error_row(last, params.n)
                retry_after = _retry_after(e)
            except openai.APIConnectionError as e:  # includes APITimeoutError
                last = f"{type(e).__name__}: {e} (base_url {self.spec.base_url})"
            if attempt < self.spec.max_retries:
                time.sleep(self._backoff(attempt, retry_after))
        self._count("error_rows")
        return error_row(f"gave up after {self.spec.max_retries + 1} attempts; last error: {last}", params.n)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        with self._stats_lock:
            jitter = self._rng.uniform(0.5, 1.0)
        delay = min(self.max_backoff_s, self.backoff_s * (2**attempt)) * jitter
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_backoff_s))
        return delay


def _message(e: openai.APIStatusError) -> str:
    body = e.body
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
    return str(e.message)


def _retry_after(e: openai.APIStatusError) -> float | None:
    raw = e.response.headers.get("retry-after") if e.response is not None else None
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff
