"""Streaming through the guarded endpoint on a real local Ray Serve, read by real clients (``openai``, httpx).

Three applications on one Serve, all serving the small testbed's target (planted toxic topics, planted
loop trigger): ``/g`` guarded with the default streaming guard, ``/s`` guarded in strict mode with
``compat: openai``, ``/p`` the same generator unguarded (the baseline). One ``serve.run`` per app for the
whole module (start-up is slow on 2 shared cores).
"""

from __future__ import annotations

import json
import socket
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import openai
import pytest
from forewarn.config import build_config
from forewarn.serve import ServeConfig
from forewarn.testing.ray_head import free_port, init_with_retries

KEY = "sk-forewarn-stream"
MODEL = "forewarn-guarded"
CHUNK, LOOKBACK = 8, 256
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@dataclass
class Server:
    url: str
    world: object
    cfgs: dict[str, ServeConfig]

    def client(self, app: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/{app}/v1", api_key=KEY, max_retries=0, timeout=120)


def _cfg(world, name: str, guarded: bool = True, judges_in: str = "auto", **extra: object) -> ServeConfig:
    judge = {"kind": "offline_toxicity", "threshold": 0.5, "resources": {"num_cpus": 0.1}}
    return build_config(
        ServeConfig,
        {
            "model_name": MODEL,
            "app_name": name,
            "guard_enabled": guarded,
            "generator": {
                "model": {"path": str(world.path("target"))},
                "resources": {"num_cpus": 0.3},
                "batching": {"max_batch_size": 4, "batch_wait_timeout_s": 0.01},
            },
            "guard": {"input": {"judge": judge}, "output": {"judge": judge}, "judges_in": judges_in},
            "auth": {"api_keys": [KEY], "api_keys_env": None},
            "ingress": {"num_cpus": 0.05},
            "limits": {"max_in_flight": 4, "body_timeout_s": 3, "max_tokens": 1024},
        }
        | extra,
    )


@pytest.fixture(scope="module")
def server(testbed) -> Iterator[Server]:
    import ray
    from forewarn.serve.serving import app_from_config
    from ray import serve

    port = free_port()
    if ray.is_initialized():
        ray.shutdown()
    init_with_retries(
        lambda: ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    )  # retries a start the loaded machine times out
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    strict = {
        "streaming": {"chunk_tokens": CHUNK, "lookback_chars": LOOKBACK, "strict": True},
        "compat": "openai",
    }
    cfgs = {
        "g": _cfg(testbed, "g"),
        "s": _cfg(testbed, "s", judges_in="deployments", **strict),  # "g" judges inside its ingress
        "p": _cfg(testbed, "p", guarded=False, generator={
            "model": {"path": str(testbed.path("target"))}, "resources": {"num_cpus": 0.3}, "stop_detectors": []}),
    }  # fmt: skip
    for name, cfg in cfgs.items():
        serve.run(app_from_config(cfg), name=name, route_prefix=f"/{name}")
    yield Server(f"http://127.0.0.1:{port}", testbed, cfgs)
    serve.shutdown()
    ray.shutdown()


def _events(
    server: Server, app: str, body: dict, endpoint: str = "chat/completions"
) -> Iterator[tuple[float, dict]]:
    """(seconds since the request was sent, parsed event) for every SSE event of a streamed request."""
    t0 = time.perf_counter()
    headers = {"authorization": f"Bearer {KEY}"}
    with httpx.stream("POST", f"{server.url}/{app}/v1/{endpoint}", json=body | {"stream": True},
                      headers=headers, timeout=120) as r:  # fmt: skip
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                yield time.perf_counter() - t0, json.loads(line[6:])


def _chat(prompt: str, **kw: object) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "temperature": 0} | kw


# ---------------------------------------------------------------- tokens stream as they are generated


def test_tokens_stream_before_generation_ends_and_ttft_is_close_to_unguarded(server: Server) -> None:
    """The guarded stream releases content while generation runs (not one burst at the end), and its time to
    first token is within 1.3x the unguarded stream's plus one judge call on a chunk (the judge runs in the
    ingress here: guard.judges_in auto), fastest of five interleaved requests each (medians printed)."""
    from forewarn.judges.offline import OfflineToxicityJudge

    prompt = server.world.read_jsonl("heldout_benign")[2]["prompt"]
    body = _chat(prompt, max_tokens=256, temperature=1.0, seed=11)
    judge = OfflineToxicityJudge()
    ttft: dict[str, list[float]] = {"g": [], "p": []}
    spans: dict[str, list[float]] = {"g": [], "p": []}
    judge_s: list[float] = []
    for round_ in range(6):  # interleaved, so load from other work on the machine hits both alike
        for app in ("p", "g"):
            times = [
                t
                for t, ev in _events(server, app, body)
                if ev.get("choices") and ev["choices"][0]["delta"].get("content")
            ]
            if round_:  # round 0 warms both apps and the judge up (first calls pay compilation and caches)
                ttft[app].append(times[0])
                spans[app].append(times[-1] - times[0])
        t = time.perf_counter()
        judge.judge([prompt], [prompt[: LOOKBACK + 64]])  # one window: look-back plus a chunk
        judge_s.append(time.perf_counter() - t)
    g, p, j = (statistics.median(x) for x in (ttft["g"], ttft["p"], judge_s[1:]))
    print(
        f"\nTTFT median: guarded {g * 1000:.0f} ms, unguarded {p * 1000:.0f} ms, one judge call {j * 1000:.1f} ms"
    )
    # 256 tokens go out in chunks of CHUNK: content keeps arriving for a while after the first chunk, in
    # the guarded stream as in the plain one (a buffered stream sends every chunk at once: span ~ 0 in every
    # request). Medians: the whole tiny-model stream lasts ~50 ms, so one request whose ingress was stalled
    # by a neighbour on the loaded machine releases its queued chunks at once (a CI run saw one 9 ms span)
    assert statistics.median(spans["g"]) > 0.25 * statistics.median(spans["p"]) > 0, spans
    # the bound on the fastest of the interleaved requests: the least disturbed by whatever else runs on the
    # machine (an xdist neighbour), which inflates the guarded path's extra hops more than the plain one's
    assert min(ttft["g"]) <= 1.3 * min(ttft["p"]) + j, (ttft, judge_s)


def test_planted_toxic_continuation_is_cut_within_the_leak_bound(server: Server) -> None:
    from forewarn.serve.text import normalize_text
    from forewarn.judges.offline import OfflineToxicityJudge

    judge = OfflineToxicityJudge()
    prompts = [r["prompt"] for r in server.world.read_jsonl("heldout_planted")[:4]]
    for prompt in prompts:
        events = _events(server, "p", _chat(prompt, max_tokens=64))
        plain = "".join(
            ev["choices"][0]["delta"].get("content") or "" for _, ev in events if ev.get("choices")
        )
        assert judge.judge([prompt], [plain])[0].unsafe  # unguarded, the target answers toxically
        for app, bound in (("g", 1), ("s", 0)):
            deltas, finish = [], None
            for _, ev in _events(server, app, _chat(prompt, max_tokens=64)):
                for ch in ev.get("choices", []):
                    if ch["delta"].get("content"):
                        deltas.append(ch["delta"]["content"])
                    finish = ch["finish_reason"] or finish
            assert finish == "content_filter", (app, deltas)
            released, unsafe = "", []
            for k, d in enumerate(deltas):  # re-judge every released chunk on the window the server judged
                window = normalize_text(released[-LOOKBACK:] + d)
                if judge.judge([prompt], [window])[0].unsafe:
                    unsafe.append(k)
                released += d
            assert len(unsafe) <= bound, (app, deltas, unsafe)
            if bound:
                assert unsafe in ([], [len(deltas) - 1])  # only the last released chunk may be judged late


def test_loop_stop_while_streaming_ends_with_the_mapped_finish_reason(server: Server) -> None:
    prompt = server.world.read_jsonl("trigger_prompts")[0]["prompt"]
    for app, wire in (("g", "recurrence"), ("s", "length")):
        finish, fw, n = None, None, 0
        for _, ev in _events(server, app, _chat(prompt, max_tokens=256)):
            for ch in ev.get("choices", []):
                n += bool(ch["delta"].get("content"))
                finish = ch["finish_reason"] or finish
            fw = ev.get("forewarn") or fw
        assert (
            finish == wire
            and fw["finish_reasons"] == ["recurrence"]
            and fw["stops"][0]["detector"] == "cycle"
        )
        assert n >= 2  # streamed in several chunks before the loop was stopped


def test_input_block_while_streaming_sends_only_the_refusal_and_cancels_generation(server: Server) -> None:
    from ray import serve

    gen = serve.get_deployment_handle("generator", app_name="g")
    before = gen.stats.remote().result()
    toxic = "You are a fucking idiot and a moron. " + server.world.read_jsonl("trigger_prompts")[0]["prompt"]
    text, finish, fw = "", None, None
    for _, ev in _events(server, "g", _chat(toxic, max_tokens=256)):
        for ch in ev.get("choices", []):
            text += ch["delta"].get("content") or ""
            finish = ch["finish_reason"] or finish
        fw = ev.get("forewarn") or fw
    assert (
        text == server.cfgs["g"].guard.refusal_message
        and finish == "content_filter"
        and fw["blocked"] == "input"
    )
    deadline, stats = time.monotonic() + 30, before
    while time.monotonic() < deadline and stats["cancelled"] == before["cancelled"]:
        time.sleep(0.5)
        stats = gen.stats.remote().result()
    assert (
        stats["cancelled"] == before["cancelled"] + 1
    )  # generation started with the judge, then was stopped


def test_completions_stream_in_the_completions_shape(server: Server) -> None:
    client = server.client("g")
    chunks = list(client.completions.create(model=MODEL, prompt="Water boils at", max_tokens=24, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))  # fmt: skip
    assert chunks and all(c.object == "text_completion" for c in chunks)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    plain = client.completions.create(model=MODEL, prompt="Water boils at", max_tokens=24, temperature=0)
    assert text == plain.choices[0].text and text
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        plain.choices[0].finish_reason
    ]
    assert (
        chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    )


# ---------------------------------------------------------------- bounds

LONG = 480


def _long(server: Server) -> dict:
    """A request that generates LONG tokens on /p (no stop detector there): the planted loop trigger."""
    return _chat(server.world.read_jsonl("trigger_prompts")[0]["prompt"], max_tokens=LONG)


def test_disconnect_cancels_the_generation(server: Server) -> None:
    from ray import serve

    gen = serve.get_deployment_handle("generator", app_name="p")
    before = gen.stats.remote().result()
    body = _long(server)
    with httpx.stream("POST", f"{server.url}/p/v1/chat/completions", json=body | {"stream": True},
                      headers={"authorization": f"Bearer {KEY}"}, timeout=60) as r:  # fmt: skip
        for line in r.iter_lines():
            if '"content"' in line:
                break  # the first token arrived: hang up
    deadline, stats = time.monotonic() + 60, before
    while time.monotonic() < deadline:
        stats = gen.stats.remote().result()
        if stats["cancelled"] > before["cancelled"] and stats["active"] == 0:
            break
        time.sleep(0.5)
    assert stats["cancelled"] == before["cancelled"] + 1 and stats["active"] == 0, stats
    assert 0 <= stats["last_cancelled_tokens"] < LONG


def _stall(server: Server, app: str, n: int) -> list[socket.socket]:
    """``n`` clients that declare a full body, send five bytes of it, then stall."""
    body = json.dumps(_chat("hi", max_tokens=4)).encode()
    out = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])))
        head = (
            f"POST /{app}/v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        s.sendall(head.encode() + body[:5])
        out.append(s)
    return out


def _response(s: socket.socket) -> tuple[str, dict]:
    """Status line and JSON body of the raw HTTP response on ``s``."""
    s.settimeout(60)
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(4096)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(
        next(ln.split(b":")[1] for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length"))
    )
    while len(body) < length:
        body += s.recv(4096)
    return head.split(b"\r\n")[0].decode(), json.loads(body)


def test_full_queue_answers_503_with_retry_after(server: Server) -> None:
    headers = {"authorization": f"Bearer {KEY}"}
    stalled = _stall(server, "p", 4)  # max_in_flight is 4: the stalled bodies hold every slot
    try:
        deadline, r = time.monotonic() + 2.5, None  # within limits.body_timeout_s (3 s)
        while time.monotonic() < deadline:
            r = httpx.post(
                f"{server.url}/p/v1/chat/completions",
                json=_chat("hi", max_tokens=4),
                headers=headers,
                timeout=60,
            )
            if r.status_code == 503:
                break
            time.sleep(0.1)
        assert r is not None and r.status_code == 503, r and r.text
        assert r.headers["retry-after"] == "1" and r.json()["error"]["code"] == "server_overloaded"
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
        for s in stalled:  # each stalled body is dropped with a 408 once limits.body_timeout_s has passed
            status, body = _response(s)
            assert status.startswith("HTTP/1.1 408") and body["error"]["type"] == "timeout_error"
    finally:
        for s in stalled:
            s.close()
    ok = httpx.post(
        f"{server.url}/p/v1/chat/completions", json=_chat("hi", max_tokens=4), headers=headers, timeout=60
    )
    assert ok.status_code == 200  # the slots are free again


def test_a_slow_client_cannot_block_others(server: Server) -> None:
    stalled = _stall(server, "g", 3)
    try:
        t = time.perf_counter()
        r = httpx.post(f"{server.url}/g/v1/chat/completions", json=_chat("hi", max_tokens=4),
                       headers={"authorization": f"Bearer {KEY}"}, timeout=60)  # fmt: skip
        assert r.status_code == 200 and time.perf_counter() - t < 30
        for s in stalled:
            assert _response(s)[0].startswith("HTTP/1.1 408")
    finally:
        for s in stalled:
            s.close()


def test_judges_run_where_the_config_says(server: Server) -> None:
    """guard.judges_in: the offline judge holds no model, so by default it runs inside the ingress (no
    judge deployment, no round trip); "s" asks for deployments and gets one shared judge deployment."""
    from ray import serve

    deployments = {app: set(serve.status().applications[app].deployments) for app in ("g", "s", "p")}
    assert deployments["g"] == {"ingress", "generator"} == deployments["p"], deployments
    assert deployments["s"] == {"ingress", "generator", "judge-0-offline_toxicity"}, deployments
    # and "g" still guards: a planted prompt is refused by the in-ingress input judge
    prompt = server.world.read_jsonl("heldout_planted")[0]["prompt"]
    r = httpx.post(f"{server.url}/g/v1/chat/completions", json=_chat(prompt, max_tokens=8),
                   headers={"authorization": f"Bearer {KEY}"}, timeout=120)  # fmt: skip
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "content_filter", r.text


def test_plain_request_disconnect_stops_its_batch(server: Server) -> None:
    """A non-streaming client that hangs up: Serve cancels the ingress call, the cancellation reaches the
    generator, and its batch (only this request in it) stops at the next token instead of running to the
    1024-token cap. The client hangs up once the generator reports the request inside a batch (a fixed
    client timeout raced the routing on a loaded machine: it could hang up before the batch began)."""
    from ray import serve

    gen = serve.get_deployment_handle("generator", app_name="p")
    before = gen.stats.remote().result()
    body = json.dumps(_long(server) | {"max_tokens": 1024}).encode()
    s = socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])))
    s.sendall(
        f"POST /p/v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    try:
        deadline = time.monotonic() + 60
        while gen.stats.remote().result()["batch_active"] == 0:
            assert time.monotonic() < deadline, "the request never reached a generator batch"
            time.sleep(0.02)
    finally:
        s.close()  # hang up mid-generation
    deadline, stats = time.monotonic() + 60, before
    while time.monotonic() < deadline:
        stats = gen.stats.remote().result()
        if stats["batch_cancelled"] > before["batch_cancelled"]:
            break
        time.sleep(0.5)
    assert stats["batch_cancelled"] == before["batch_cancelled"] + 1, stats
    assert 0 < stats["batch_last_cancelled_tokens"] < 1024, stats
