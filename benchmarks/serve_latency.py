"""Latency (p50 / p95) and requests/s of the guarded endpoint vs the same model unguarded, on Ray Serve.

    OMP_NUM_THREADS=1 python benchmarks/serve_latency.py [--model DIR] [--requests 200] [--concurrency 8]

Two Serve applications run side by side on one local Ray: ``/guarded`` (input + output offline toxicity
judges, cycle stop detector) and ``/plain`` (``guard_enabled: false``, same generator settings, same
model). Each is measured alone, over HTTP with the ``openai`` client, first one request at a time
(latency) and then with ``--concurrency`` clients (throughput, batching). The prompt set mixes the
testbed's held-out benign and planted-topic prompts, so the guard both passes and blocks.
Prints a table with the guarded / plain ratio and writes benchmarks/results/serve_latency.json.
Without --model the small testbed's target is used (built once, cached).
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import ray
from forewarn.config import build_config
from forewarn.guard import ServeConfig
from forewarn.guard.serving import app_from_config
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


def measure(
    base_url: str, prompts: list[str], concurrency: int, max_tokens: int, progress: Progress, label: str
) -> dict:
    client = openai.OpenAI(base_url=base_url, api_key="x", max_retries=0, timeout=300)
    task = progress.add_task(f"{label} x{concurrency}", total=len(prompts))

    def one(prompt: str) -> tuple[float, str]:
        t = time.perf_counter()
        r = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0
        )
        progress.advance(task)
        return time.perf_counter() - t, r.choices[0].finish_reason

    one(prompts[0])  # warm-up: first calls resolve handles and load lazy state
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        out = list(pool.map(one, prompts))
    wall = time.perf_counter() - t0
    lat = [x for x, _ in out]
    reasons: dict[str, int] = {}
    for _, r in out:
        reasons[r] = reasons.get(r, 0) + 1
    return {
        "requests": len(prompts),
        "concurrency": concurrency,
        "wall_s": wall,
        "req_per_s": len(prompts) / wall,
        "p50_s": statistics.median(lat),
        "p95_s": percentile(lat, 0.95),
        "finish_reasons": reasons,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="HF folder (default: the small testbed's target)")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args()

    from forewarn.testbed import build_testbed

    world = build_testbed(size="small", progress=False)
    model = args.model or str(world.path("target"))
    pool = [r["prompt"] for r in world.read_jsonl("heldout_benign") + world.read_jsonl("heldout_planted")]
    prompts = [pool[(i * 7) % len(pool)] for i in range(args.requests)]

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    for guarded in (True, False):
        cfg = config(model, guarded, args.concurrency)
        serve.run(app_from_config(cfg), name=cfg.app_name, route_prefix=f"/{cfg.app_name}")
    result: dict = {"model": model, "requests": args.requests, "max_tokens": args.max_tokens, "modes": {}}
    with Progress() as progress:
        for name in ("guarded", "plain"):
            url = f"http://127.0.0.1:{port}/{name}/v1"
            result["modes"][name] = {
                "sequential": measure(
                    url, prompts[: max(20, args.requests // 5)], 1, args.max_tokens, progress, name
                ),
                "concurrent": measure(url, prompts, args.concurrency, args.max_tokens, progress, name),
            }
    serve.shutdown()
    ray.shutdown()

    g, p = result["modes"]["guarded"], result["modes"]["plain"]
    table = Table(title=f"Serve latency, guarded vs plain (same model, {args.max_tokens} max tokens, greedy)")
    for col in ("metric", "guarded", "plain", "guarded / plain"):
        table.add_column(col)
    ratios = {}
    for mode in ("sequential", "concurrent"):
        for key, unit in (("p50_s", "s"), ("p95_s", "s"), ("req_per_s", "req/s")):
            a, b = g[mode][key], p[mode][key]
            ratios[f"{mode}.{key}"] = a / b
            table.add_row(f"{mode} {key} ({unit})", f"{a:.3f}", f"{b:.3f}", f"{a / b:.2f}")
    result["ratios_guarded_over_plain"] = ratios
    Console().print(table)
    print(
        "finish reasons (concurrent): guarded",
        g["concurrent"]["finish_reasons"],
        "plain",
        p["concurrent"]["finish_reasons"],
    )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
