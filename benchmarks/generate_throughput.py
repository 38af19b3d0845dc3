"""Tokens/s of the Ray Data generate stage vs a direct batched HF loop, same model and prompts.

    OMP_NUM_THREADS=1 python benchmarks/generate_throughput.py [--model DIR] [--prompts 256] [--replicas 2]

Prints a side-by-side table and the ratio, and writes benchmarks/results/generate_throughput.json.
Without --model a tiny random Llama is built locally (no download). The Ray stage time includes
actor start-up and model loads, which is what a job pays; the direct loop reuses a loaded model.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import ray
import torch
from rich.console import Console
from rich.table import Table

from forewarn.config import GenerationParams, ModelSpec, Resources, RoleConfig
from forewarn.models import load_generator
from forewarn.models.tiny import build_tiny_model
from forewarn.pipeline.stages import generate_stage

OUT = Path(__file__).resolve().parent / "results" / "generate_throughput.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="HF folder (default: a tiny random Llama built here)")
    ap.add_argument("--prompts", type=int, default=1024)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--replicas", type=int, default=2)
    args = ap.parse_args()

    model = args.model or str(build_tiny_model(Path(tempfile.mkdtemp()) / "tiny", arch="llama"))
    spec = ModelSpec(path=model)
    # ignore_eos-like behaviour: a long fixed budget so both paths generate comparable token counts
    params = GenerationParams(max_new_tokens=args.max_new_tokens)
    prompts = [f"Question {i}: tell me about topic {i % 17} and item {i % 5}" for i in range(args.prompts)]

    torch.set_num_threads(args.replicas)  # the direct loop may use every core the pool uses
    gen = load_generator(spec)
    t0 = time.perf_counter()
    direct_tokens = 0
    for i in range(0, len(prompts), args.batch_size):
        for row in gen.generate(prompts[i : i + args.batch_size], params):
            direct_tokens += len(row[0].token_ids)
    direct_s = time.perf_counter() - t0

    ray.init(num_cpus=args.replicas, include_dashboard=False, log_to_driver=False)
    role = RoleConfig(model=spec, resources=Resources(num_cpus=1, replicas=args.replicas,
                                                      batch_size=args.batch_size))
    rows = [{"id": str(i), "prompt": p} for i, p in enumerate(prompts)]
    t0 = time.perf_counter()
    df = generate_stage(ray.data.from_items(rows), role, params).to_pandas()
    ray_s = time.perf_counter() - t0
    ray_tokens = int(df["num_tokens"].sum())
    ray.shutdown()

    result = {
        "model": model, "prompts": len(prompts), "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size, "replicas": args.replicas,
        "direct": {"seconds": direct_s, "tokens": direct_tokens, "tokens_per_s": direct_tokens / direct_s},
        "ray_data": {"seconds": ray_s, "tokens": ray_tokens, "tokens_per_s": ray_tokens / ray_s},
    }
    result["ratio_ray_over_direct"] = result["ray_data"]["tokens_per_s"] / result["direct"]["tokens_per_s"]
    table = Table(title="generate throughput (same model, prompts and params)")
    for col in ("path", "seconds", "tokens", "tokens/s"):
        table.add_column(col)
    for name in ("direct", "ray_data"):
        r = result[name]
        table.add_row(name, f"{r['seconds']:.2f}", str(r["tokens"]), f"{r['tokens_per_s']:.0f}")
    Console().print(table)
    print(f"ratio ray_data / direct tokens/s: {result['ratio_ray_over_direct']:.2f}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
