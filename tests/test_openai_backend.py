"""The openai backend against a real local OpenAI-compatible HTTP server (forewarn.testing.openai_server).

Covers chat and completion endpoints, n samples, parameter mapping, injected 429/500 (retried, then
success), a 400 kept as a per-row error, retries running out, connection errors, Retry-After, bounded
concurrency as the server observes it, API keys, and a server backed by a real tiny HF model.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from forewarn.config import GenerationParams, ModelSpec
from forewarn.errors import BackendUnavailable, ConfigError
from forewarn.models import load_generator
from forewarn.models.base import Completion
from forewarn.models.openai_api import OpenAIGenerator, params_from_request, request_kwargs
from forewarn.testing.openai_server import OpenAIServer, ServerRequest, echo_responder

MODEL = "scripted-target"
FAST = dict(backoff_s=0.01, max_backoff_s=0.5)


@pytest.fixture(scope="module")
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer(model=MODEL) as s:
        yield s


@pytest.fixture(autouse=True)
def _clean(server: OpenAIServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    server.reset()
    server.responder = echo_responder
    server.delay_s = 0.0
    monkeypatch.setenv("FW_TEST_KEY", "sekrit")
    yield


def spec_for(server: OpenAIServer, **kw) -> ModelSpec:
    base = dict(backend="openai", path=MODEL, base_url=server.base_url, api_key_env="FW_TEST_KEY")
    return ModelSpec(**{**base, **kw})


def texts(rows: list[list[Completion]]) -> list[list[str]]:
    return [[c.text for c in row] for row in rows]


def test_chat_and_completion_endpoints(server: OpenAIServer) -> None:
    gen = load_generator(spec_for(server))
    assert isinstance(gen, OpenAIGenerator) and gen.models() == [MODEL]
    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}]
    out = gen.generate([chat, "plain string"], GenerationParams())
    assert texts(out) == [["echo: hi there"], ["echo: plain string"]]
    assert all(c.ok and c.finish_reason == "stop" for row in out for c in row)
    bodies = {r.text: r for r in server.requests}
    assert bodies["hi there"].path == "/v1/chat/completions" and bodies["hi there"].body["messages"] == chat
    # with the chat template on, a string prompt is sent as one user turn
    assert bodies["plain string"].body["messages"] == [{"role": "user", "content": "plain string"}]
    assert bodies["hi there"].headers["authorization"] == "Bearer sekrit"

    raw = OpenAIGenerator(spec_for(server, use_chat_template=False))
    assert texts(raw.generate(["raw text"], GenerationParams())) == [["echo: raw text"]]
    assert server.requests[-1].path == "/v1/completions" and server.requests[-1].body["prompt"] == "raw text"


def test_generation_params_are_mapped(server: OpenAIServer) -> None:
    params = GenerationParams(
        n=2,
        temperature=0.7,
        top_p=0.9,
        max_new_tokens=12,
        stop=["END"],
        seed=3,
        presence_penalty=0.5,
        frequency_penalty=0.25,
        logprobs=True,
        top_k=5,
        repetition_penalty=1.1,
    )
    OpenAIGenerator(spec_for(server)).generate(["p"], params)
    body = server.requests[-1].body
    assert body["model"] == MODEL
    # the servers' inverse mapping reads every field back from the wire names the client sent
    assert params_from_request(body) == params
    # defaults send only standard fields, so strict OpenAI endpoints accept them
    endpoint, kw = request_kwargs("p", GenerationParams(), spec_for(server))
    assert endpoint == "chat" and set(kw) == {"model", "n", "temperature", "top_p", "max_tokens", "messages"}
    endpoint, kw = request_kwargs(
        "p", GenerationParams(logprobs=True), spec_for(server, use_chat_template=False)
    )
    assert endpoint == "completions" and kw["logprobs"] == 1 and kw["prompt"] == "p"


@pytest.mark.parametrize("use_chat_template", [True, False])
def test_n_samples_logprobs_and_finish_reasons(server: OpenAIServer, use_chat_template: bool) -> None:
    def sampler(req: ServerRequest) -> list[Completion]:
        return [
            Completion(
                f"{req.text}-{k} tail END more",
                token_ids=[k, k + 1],
                finish_reason="length",
                logprobs=[-0.5 * k, -1.0],
            )
            for k in range(req.params.n)
        ]

    server.responder = sampler
    gen = OpenAIGenerator(spec_for(server, use_chat_template=use_chat_template))
    out = gen.generate(["a", "b"], GenerationParams(n=3, temperature=1.0, logprobs=True))
    assert texts(out) == [[f"{p}-{k} tail END more" for k in range(3)] for p in "ab"]
    assert [c.logprobs for c in out[1]] == [[0.0, -1.0], [-0.5, -1.0], [-1.0, -1.0]]
    assert {c.finish_reason for row in out for c in row} == {"length"}
    # the server cuts at stop strings and reports finish_reason "stop"
    cut = gen.generate(["a"], GenerationParams(n=2, stop=["END"]))
    assert texts(cut) == [["a-0 tail ", "a-1 tail "]] and {c.finish_reason for c in cut[0]} == {"stop"}


def test_429_and_500_are_retried_then_succeed(server: OpenAIServer) -> None:
    flaky = lambda r: r.text == "flaky"  # noqa: E731
    server.inject(429, times=2, when=flaky, message="slow down")
    server.inject(500, times=1, when=flaky)
    gen = OpenAIGenerator(spec_for(server, max_retries=5), **FAST)
    out = gen.generate(["ok-1", "flaky", "ok-2"], GenerationParams())
    assert texts(out) == [["echo: ok-1"], ["echo: flaky"], ["echo: ok-2"]] and all(
        c.ok for r in out for c in r
    )
    assert [r.status for r in server.requests if r.text == "flaky"] == [429, 429, 500, 200]
    assert gen.stats["retries"] == 3 and gen.stats["requests"] == 6 and gen.stats["error_rows"] == 0


def test_retry_after_is_honoured(server: OpenAIServer) -> None:
    server.inject(429, times=1, retry_after=0.3)
    OpenAIGenerator(spec_for(server), **FAST).generate(["x"], GenerationParams())
    first, second = server.requests
    assert first.status == 429 and second.status == 200
    assert second.started - first.finished >= 0.25  # without Retry-After the backoff is <= 0.01 s


def test_400_is_a_per_row_error_and_not_retried(server: OpenAIServer) -> None:
    server.inject(400, times=None, when=lambda r: "BAD" in r.text, message="prompt violates policy")
    gen = OpenAIGenerator(spec_for(server), **FAST)
    out = gen.generate(["a", "BAD b", "c", "d"], GenerationParams(n=2))
    assert texts(out)[0] == ["echo: a"] * 2 and texts(out)[2:] == [["echo: c"] * 2, ["echo: d"] * 2]
    bad = out[1]
    assert len(bad) == 2 and all(c.finish_reason == "error" and c.text == "" for c in bad)
    assert "400" in bad[0].error and "prompt violates policy" in bad[0].error
    assert [r.status for r in server.requests if r.text == "BAD b"] == [400]
    assert gen.stats["retries"] == 0 and gen.stats["error_rows"] == 1


def test_retries_run_out_into_an_error_row(server: OpenAIServer) -> None:
    server.inject(503, times=None, when=lambda r: r.text == "down")
    gen = OpenAIGenerator(spec_for(server, max_retries=2), **FAST)
    out = gen.generate(["down", "up"], GenerationParams())
    assert out[1][0].text == "echo: up"
    assert out[0][0].finish_reason == "error" and "gave up after 3 attempts" in out[0][0].error
    assert "HTTP 503" in out[0][0].error
    assert [r.status for r in server.requests if r.text == "down"] == [503] * 3


def test_connection_errors_are_retried_then_kept_per_row(server: OpenAIServer) -> None:
    with OpenAIServer() as gone:
        url = gone.base_url  # a port that nothing listens on once the server stops
    gen = OpenAIGenerator(spec_for(server, base_url=url, max_retries=2), **FAST)
    out = gen.generate(["a", "b"], GenerationParams())
    assert all(r[0].finish_reason == "error" and "APIConnectionError" in r[0].error for r in out)
    assert gen.stats["requests"] == 6 and gen.stats["retries"] == 4


def gated(server: OpenAIServer, n: int, limit_s: float = 60.0):
    """A responder that answers only once ``n`` requests have been in flight together (or after ``limit_s``, so
    a client that never reaches ``n`` fails the test instead of hanging it). Overlap then does not depend on
    timing (with fixed delays, a loaded machine could finish the first request before the last one starts)."""

    def respond(req: ServerRequest) -> str:
        deadline = time.monotonic() + limit_s
        while server.peak_in_flight < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return echo_responder(req)

    return respond


def test_concurrency_is_bounded_and_order_kept(server: OpenAIServer) -> None:
    server.responder = gated(server, 3)
    # uneven delays make responses arrive out of order
    server.inject(None, times=None, when=lambda r: r.text.endswith(("1", "5")), delay_s=0.15)
    prompts = [f"p{i}" for i in range(12)]
    out = OpenAIGenerator(spec_for(server, max_concurrency=3)).generate(prompts, GenerationParams())
    assert texts(out) == [[f"echo: {p}"] for p in prompts]
    assert server.peak_in_flight == 3
    assert max(r.in_flight for r in server.requests) == 3

    server.reset()
    server.responder = gated(server, 8)
    OpenAIGenerator(spec_for(server, max_concurrency=8)).generate(prompts[:8], GenerationParams())
    assert server.peak_in_flight == 8


def test_api_key_from_env(server: OpenAIServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FW_TEST_KEY")
    with pytest.raises(ConfigError, match=r"model.api_key_env='FW_TEST_KEY'.*EMPTY"):
        OpenAIGenerator(spec_for(server))
    monkeypatch.setenv("FW_TEST_KEY", "EMPTY")
    assert texts(OpenAIGenerator(spec_for(server)).generate(["k"], GenerationParams())) == [["echo: k"]]
    assert server.requests[-1].headers["authorization"] == "Bearer EMPTY"
    no_key = OpenAIGenerator(spec_for(server, api_key_env="EMPTY"))
    assert texts(no_key.generate(["k2"], GenerationParams())) == [["echo: k2"]]


def test_bad_key_or_unknown_model_raise(server: OpenAIServer) -> None:
    server.inject(401, times=1, message="invalid api key")
    with pytest.raises(BackendUnavailable, match=r"rejected the API key.*FW_TEST_KEY"):
        OpenAIGenerator(spec_for(server), **FAST).generate(["a"], GenerationParams())
    with pytest.raises(BackendUnavailable, match=r"model.path='no-such-model'.*does not exist"):
        OpenAIGenerator(spec_for(server, path="no-such-model"), **FAST).generate(["a"], GenerationParams())


def test_server_rejects_malformed_requests(server: OpenAIServer) -> None:
    with httpx.Client(base_url=server.base_url) as client:
        assert client.get("/models").json()["data"][0]["id"] == MODEL
        r = client.post("/chat/completions", json={"model": MODEL, "messages": [], "n": 1})
        assert r.status_code == 400 and "messages" in r.json()["error"]["message"]
        r = client.post("/completions", json={"model": MODEL, "prompt": "x", "stream": True})
        assert r.status_code == 400
        r = client.post("/completions", json={"model": MODEL, "prompt": "x", "temperature": -1})
        assert r.status_code == 400 and "temperature" in r.json()["error"]["message"]


def test_server_backed_by_a_real_generator_matches_direct_hf(tiny_llama_dir) -> None:
    from forewarn.models.hf import HFGenerator

    hf = HFGenerator(ModelSpec(path=str(tiny_llama_dir), device="cpu"))
    prompts = ["hello", [{"role": "user", "content": "why is the sky blue?"}], "bake bread"]
    params = GenerationParams(max_new_tokens=8, temperature=0.0)
    direct = hf.generate(prompts, params)
    with OpenAIServer(hf, model="tiny") as srv:
        spec = ModelSpec(backend="openai", path="tiny", base_url=srv.base_url, api_key_env="EMPTY")
        served = OpenAIGenerator(spec).generate(prompts, params)
    assert texts(served) == texts(direct)
    assert [c.finish_reason for r in served for c in r] == [c.finish_reason for r in direct for c in r]
