"""Latency (p50 / p95), time to first token and requests/s of the guarded endpoint vs the same model
unguarded, on Ray Serve.

    OMP_NUM_THREADS=1 python benchmarks/serve_latency.py [--model DIR] [--requests 200] [--concurrency 8]

Two Serve applications run side by side on one local Ray: ``/guarded`` (input + output offline toxicity
judges, cycle stop detector) and ``/plain`` (``guard_enabled: false``, same generator settings, same
model). Each is measured alone, over HTTP with the ``openai`` client, first one request at a time
(latency) and then with ``--concurrency`` clients (throughput, batching), each both as plain requests
(p50 / p95 of the whole answer) and streamed (time to the first content chunk, TTFT). One at a time, the two
modes are interleaved request by request; with several clients they take turns, each alone for an eighth of
the prompts, eight turns each (see :func:`measure`), so load from elsewhere on the machine hits both alike.
The prompt set mixes the testbed's held-out benign and planted-topic prompts, so the guard both passes and
blocks.
Prints a table with the guarded / plain ratio and writes benchmarks/results/serve_latency.json.
Without --model the small testbed's target is used (built once, cached).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import ray
from forewarn.config import build_config
from forewarn.serve import ServeConfig
from forewarn.serve.serving import app_from_config
from forewarn.testing.ray_head import free_port, init_with_retries
from ray import serve
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

OUT = Path(__file__).resolve().parent / "results" / "serve_latency.json"
MODEL = "forewarn-guarded"


def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def config(model: str, guarded: bool, max_batch: int) -> ServeConfig:
    judge = {"kind": "offline_toxicity", "resources": {"num_cpus": 0.25}}
    return build_config(
        ServeConfig,
        {
            "model_name": MODEL,
            "guard_enabled": guarded,
            "app_name": "guarded" if guarded else "plain",
            "generator": {
                "model": {"path": model},
                "resources": {"num_cpus": 0.5},
                "batching": {"max_batch_size": max_batch, "batch_wait_timeout_s": 0.01},
            },
            "guard": {"input": {"judge": judge}, "output": {"judge": judge}},
            "auth": {"api_keys_env": None},
            "ingress": {"num_cpus": 0.1},
        },
    )


def _one(client: openai.OpenAI, prompt: str, max_tokens: int, stream: bool) -> tuple[float, float, str]:
    """(latency, time to first content, finish reason) of one request."""
    t = time.perf_counter()
    msgs = [{"role": "user", "content": prompt}]
    if not stream:
        r = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=max_tokens, temperature=0)
        lat = time.perf_counter() - t
        return lat, lat, r.choices[0].finish_reason
    first, reason = None, "?"
    for ch in client.chat.completions.create(
        model=MODEL, messages=msgs, max_tokens=max_tokens, temperature=0, stream=True
    ):
        if ch.choices and ch.choices[0].delta.content and first is None:
            first = time.perf_counter() - t
        if ch.choices and ch.choices[0].finish_reason:
            reason = ch.choices[0].finish_reason
    lat = time.perf_counter() - t
    return lat, lat if first is None else first, reason


def measure(urls: dict[str, str], prompts: list[str], concurrency: int, max_tokens: int, stream: bool,
            progress: Progress, rounds: int = 8) -> dict[str, dict]:  # fmt: skip
    """Both modes over the same prompts. One at a time, request i goes to guarded and plain back to back.
    With several clients, each mode runs alone in turn, ``rounds`` times over a share of the prompts: with
    both served at once, clients pile up on whichever is momentarily slower (a closed loop shares its
    clients between the two), which turned small cost differences into 1-3x latency swings run to run."""
    clients = {m: openai.OpenAI(base_url=u, api_key="x", max_retries=0, timeout=300) for m, u in urls.items()}
    label = f"{'stream' if stream else 'plain'} x{concurrency}"
    task = progress.add_task(label, total=len(prompts) * len(urls))
    for m in urls:
        _one(clients[m], prompts[0], max_tokens, stream)  # warm-up: handles, lazy state

    def job(item: tuple[str, str]) -> tuple[str, str, tuple[float, float, str]]:
        mode, prompt = item
        out = _one(clients[mode], prompt, max_tokens, stream)
        progress.advance(task)
        return mode, prompt, out

    if concurrency == 1:
        batches = [[(m, p) for p in prompts for m in urls]]
    else:
        share = -(-len(prompts) // rounds)
        parts = [prompts[k : k + share] for k in range(0, len(prompts), share)]
        batches = [[(m, p) for p in part] for part in parts for m in urls]
    done, wall = [], 0.0
    for work in batches:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            done += list(pool.map(job, work))
        wall += time.perf_counter() - t0
    # the prompts every mode answered (not refused by a guard): a refusal is fast, so the p50 of all requests
    # flatters the guarded endpoint; the "passed" figures compare the same answered prompts
    refused = {p for _, p, r in done if r[2] == "content_filter"}
    result = {}
    for m in urls:
        rows = [r for mode, _, r in done if mode == m]
        passed = [r[0] for mode, p, r in done if mode == m and p not in refused]
        lat, ttft = [r[0] for r in rows], [r[1] for r in rows]
        reasons: dict[str, int] = {}
        for r in rows:
            reasons[r[2]] = reasons.get(r[2], 0) + 1
        result[m] = {
            "requests": len(rows), "concurrency": concurrency, "stream": stream,
            "req_per_s_both": len(done) / wall,  # both modes' requests over both modes' time
            "p50_s": statistics.median(lat), "p95_s": percentile(lat, 0.95),
            "passed_p50_s": statistics.median(passed), "passed_p95_s": percentile(passed, 0.95),
            "ttft_p50_s": statistics.median(ttft), "ttft_p95_s": percentile(ttft, 0.95),
            "finish_reasons": reasons,
        }  # fmt: skip
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="HF folder (default: the small testbed's target)")
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args()

    from forewarn.testbed import build_testbed

    world = build_testbed(size="small", progress=False)
    model = args.model or str(world.path("target"))
    pool = [r["prompt"] for r in world.read_jsonl("heldout_benign") + world.read_jsonl("heldout_planted")]
    prompts = [pool[(i * 7) % len(pool)] for i in range(args.requests)]

    port = free_port()
    init_with_retries(
        lambda: ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    )  # retries a start the loaded machine times out
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    for guarded in (True, False):
        cfg = config(model, guarded, args.concurrency)
        serve.run(app_from_config(cfg), name=cfg.app_name, route_prefix=f"/{cfg.app_name}")
    result: dict = {"model": model, "requests": args.requests, "max_tokens": args.max_tokens, "runs": {}}
    urls = {name: f"http://127.0.0.1:{port}/{name}/v1" for name in ("guarded", "plain")}
    seq = prompts[: max(20, args.requests // 5)]
    with Progress() as progress:
        for stream in (False, True):
            kind = "stream" if stream else "plain"
            result["runs"][f"sequential_{kind}"] = measure(urls, seq, 1, args.max_tokens, stream, progress)
            result["runs"][f"concurrent_{kind}"] = measure(
                urls, prompts, args.concurrency, args.max_tokens, stream, progress
            )
    serve.shutdown()
    ray.shutdown()

    table = Table(title=f"Serve latency, guarded vs plain (same model, {args.max_tokens} max tokens, greedy)")
    for col in ("metric", "guarded", "plain", "guarded / plain"):
        table.add_column(col)
    ratios = {}
    for run, modes in result["runs"].items():
        keys = (("ttft_p50_s", "s"), ("ttft_p95_s", "s")) if run.endswith("stream") else (
            ("p50_s", "s"), ("p95_s", "s"), ("passed_p50_s", "s"))  # fmt: skip
        for key, unit in keys:
            a, b = modes["guarded"][key], modes["plain"][key]
            ratios[f"{run}.{key}"] = a / b
            table.add_row(f"{run} {key} ({unit})", f"{a:.3f}", f"{b:.3f}", f"{a / b:.2f}")
    result["ratios_guarded_over_plain"] = ratios
    Console().print(table)
    conc = result["runs"]["concurrent_plain"]
    print(
        "finish reasons (concurrent): guarded",
        conc["guarded"]["finish_reasons"],
        "plain",
        conc["plain"]["finish_reasons"],
    )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
