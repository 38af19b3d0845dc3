"""Perspective client against a real local HTTP server that mimics the API and misbehaves on purpose.

The server (``http.server`` on 127.0.0.1, random port) answers ``POST /v1alpha1/comments:analyze`` (key in
``X-Goog-Api-Key``)
like the API and reads directives from the comment text: ``[429x2]`` (429 twice, with Retry-After), ``[500x1]``,
``[503x9]`` (always), ``[timeoutx1]`` / ``[timeoutx9]`` (answers after the client timeout), ``[malformed]``,
``[nofield]``, ``[400]``. Server-side arrival timestamps check the rate limit; an in-flight counter checks
the concurrency bound.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

import pytest

from forewarn.errors import ConfigError
from forewarn.judges import build_judge
from forewarn.judges.perspective import PerspectiveJudge

KEY = "test-key-123"
QPS = 20.0


class FakePerspective(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.lock = threading.Lock()
        self.arrivals: list[float] = []
        self.by_text: dict[str, list[float]] = defaultdict(list)
        self.bodies: list[dict] = []
        self.inflight = self.max_inflight = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def _send(self, code: int, body: str, headers: dict[str, str] | None = None) -> None:
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body.encode())))
            self.end_headers()
            self.wfile.write(body.encode())
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client timed out and left

    def do_POST(self):
        t = time.monotonic()
        srv: FakePerspective = self.server  # type: ignore[assignment]
        with srv.lock:
            srv.inflight += 1
            srv.max_inflight = max(srv.max_inflight, srv.inflight)
        try:
            self._handle(srv, t)
        finally:
            with srv.lock:
                srv.inflight -= 1

    def _handle(self, srv: FakePerspective, t: float) -> None:
        url = urlparse(self.path)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = body["comment"]["text"]
        with srv.lock:
            srv.arrivals.append(t)
            srv.by_text[text].append(t)
            srv.bodies.append(body)
            n = len(srv.by_text[text])
        if url.query:  # the key must never travel in the URL: request logs record it
            return self._send(
                400, json.dumps({"error": {"code": 400, "message": f"query string: {url.query}"}})
            )
        if url.path != "/v1alpha1/comments:analyze" or self.headers.get("X-Goog-Api-Key") != KEY:
            return self._send(403, json.dumps({"error": {"code": 403, "message": "bad key or path"}}))
        m = re.search(r"\[(\w+?)(?:x(\d+))?\]", text)
        kind, times = (m.group(1), int(m.group(2) or 1)) if m else (None, 0)
        if kind in ("429", "500", "503") and n <= times:
            return self._send(
                int(kind),
                json.dumps({"error": {"code": int(kind), "message": f"injected {kind}"}}),
                {"Retry-After": "0.2"} if kind == "429" else None,
            )
        if kind == "timeout" and n <= times:
            time.sleep(4.0)
            return self._send(200, "{}")
        if kind == "malformed":
            return self._send(200, '{"attributeScores": {"TOXICITY": {"summaryScore": ')
        if kind == "nofield":
            return self._send(200, json.dumps({"languages": ["en"]}))
        if kind == "400":
            return self._send(400, json.dumps({"error": {"code": 400, "message": "Comment text too long"}}))
        score = float(re.search(r"score=([\d.]+)", text).group(1))
        attrs = {
            a: {"summaryScore": {"value": score if a == "TOXICITY" else score / 2, "type": "PROBABILITY"}}
            for a in body["requestedAttributes"]
        }
        return self._send(200, json.dumps({"attributeScores": attrs, "languages": ["en"]}))


@pytest.fixture()
def server():
    srv = FakePerspective()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture()
def judge(server, monkeypatch):
    monkeypatch.setenv("PERSPECTIVE_API_KEY", KEY)
    # rate_margin 0.1: the server's clock may see arrivals up to 100 ms out of step on a loaded machine
    j = PerspectiveJudge(
        base_url=server.base_url,
        qps=QPS,
        max_concurrency=4,
        max_retries=3,
        backoff_s=0.01,
        backoff_max_s=0.3,
        timeout_s=2.0,  # generous: a loaded CI machine must never time out an honest answer
        rate_margin=0.1,
    )
    yield j
    j.close()


def max_in_window(times: list[float], window: float = 1.0) -> int:
    """The most arrivals inside any half-open window [t, t + window)."""
    ts = sorted(times)
    best, j = 0, 0
    for i in range(len(ts)):
        while ts[i] - ts[j] >= window:
            j += 1
        best = max(best, i - j + 1)
    return best


def test_every_row_scored_or_failed_with_reason(server, judge):
    plain = [f"plain row {i} score={i / 20:.2f}" for i in range(12)]
    special = {
        "[429x2] score=0.91": ("ok", 3),
        "[429x1] score=0.12": ("ok", 2),
        "[500x1] score=0.77": ("ok", 2),
        "[500x2] score=0.33": ("ok", 3),
        "[timeoutx1] score=0.64": ("ok", 2),
        "[503x9] score=0.5": ("HTTP 503", 4),
        "[timeoutx9] score=0.5": ("timeout", 4),
        "[malformed] score=0.5": ("malformed", 1),
        "[nofield] score=0.5": ("malformed", 1),
        "[400] score=0.5": ("HTTP 400: Comment text too long", 1),
        "": ("empty text", 0),
    }
    texts = plain + list(special)
    verdicts = judge.judge(["prompt"] * len(texts), texts)
    assert len(verdicts) == len(texts)
    for text, v in zip(texts, verdicts):
        expect, attempts = special.get(text, ("ok", 1))
        assert len(server.by_text.get(text, [])) == attempts, text
        if expect == "ok":
            want = float(re.search(r"score=([\d.]+)", text).group(1))
            assert v.ok and v.score == pytest.approx(want) and v.unsafe == (want >= 0.5), text
            assert v.scores["toxicity"] == pytest.approx(want) and v.scores["insult"] == pytest.approx(
                want / 2
            )
            assert v.label == ("unsafe" if want >= 0.5 else "safe")
        else:
            assert v.unsafe is None and v.label == "error" and expect in v.error, (text, v.error)
            assert KEY not in v.error
    assert "gave up after 4 attempts" in verdicts[texts.index("[503x9] score=0.5")].error
    # counted, never silently dropped
    n_failed = sum(1 for e, _ in special.values() if e != "ok")
    assert judge.stats["failed"] == n_failed == sum(v.unsafe is None for v in verdicts)
    assert judge.stats["scored"] == len(texts) - n_failed
    assert judge.stats["requests"] == len(server.arrivals)
    assert judge.stats["failed_malformed"] == 2 and judge.stats["transient_http_429"] == 3
    # the rate limit and the concurrency bound held on the server's clock
    assert max_in_window(server.arrivals) <= QPS
    assert server.max_inflight <= 4
    # Retry-After (0.2 s) was honoured between a 429 and the retry
    gaps = [
        b - a for a, b in zip(server.by_text["[429x2] score=0.91"], server.by_text["[429x2] score=0.91"][1:])
    ]
    assert min(gaps) >= 0.2
    # the request has the API's shape
    body = next(b for b in server.bodies if b["comment"]["text"] == plain[0])
    assert body["languages"] == ["en"] and body["doNotStore"] is True
    assert set(body["requestedAttributes"]) >= {"TOXICITY", "SEVERE_TOXICITY", "INSULT", "THREAT"}


def test_rate_limit_holds_across_threads_and_judges(server, judge):
    other = build_judge(
        {
            "kind": "perspective",
            "base_url": server.base_url,
            "qps": QPS,
            "max_concurrency": 4,
            "backoff_s": 0.01,
            "rate_margin": 0.1,
        }
    )  # same endpoint, key and rate: shares the limiter
    results: dict[int, list] = {}

    def work(k: int, j: PerspectiveJudge) -> None:
        texts = [f"thread {k} row {i} score=0.{i}" for i in range(8)]
        results[k] = j.judge(texts, texts)

    threads = [threading.Thread(target=work, args=(k, judge if k % 2 else other)) for k in range(4)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    assert all(v.ok for vs in results.values() for v in vs) and len(server.arrivals) == 32
    assert max_in_window(server.arrivals) <= QPS
    assert elapsed >= (32 - 1) / QPS  # 32 requests cannot start faster than the limit allows
    assert server.max_inflight <= 8
    other.close()


def test_missing_key_and_bad_config(monkeypatch):
    monkeypatch.delenv("PERSPECTIVE_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="PERSPECTIVE_API_KEY"):
        PerspectiveJudge(base_url="http://127.0.0.1:9")
    monkeypatch.setenv("PERSPECTIVE_API_KEY", KEY)
    with pytest.raises(ConfigError, match="score_attribute"):
        PerspectiveJudge(attributes=["INSULT"], score_attribute="TOXICITY")
    with pytest.raises(ConfigError, match="qps"):
        build_judge({"kind": "perspective", "qps": 0})


def test_connection_refused_is_retried_then_kept(monkeypatch):
    monkeypatch.setenv("PERSPECTIVE_API_KEY", KEY)
    with PerspectiveJudge(base_url="http://127.0.0.1:9", qps=50, max_retries=1, backoff_s=0.01) as j:
        (v,) = j.judge(["p"], ["some text"])
    assert v.unsafe is None and "connection error" in v.error and j.stats["requests"] == 2
