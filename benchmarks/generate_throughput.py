"""Tokens/s of the Ray paths vs a direct batched HF loop, same model, prompts and params, at two workload sizes.

    OMP_NUM_THREADS=1 python benchmarks/generate_throughput.py [--model DIR] [--workloads small,big] [--replicas 2]

Paths: ``direct`` (one process, a loaded model, torch threads = replicas), ``ray_data`` (the Ray Data generate
stage: actor start-up and model loads included, as a job pays them per stage), ``pool_cold`` (a long-lived
``forewarn.pools.RolePool``: start-up, loads and the work) and ``pool_warm`` (the same pool called again, as
every stage after the first in an iterative job; small workload only). Workloads: ``small`` (1024 prompts x
64 tokens, a few
seconds of compute: start-up dominates) and ``big`` (sized so the direct loop takes over a minute: where a
stage should win). Prints a table per workload with the ratios over direct, and writes
benchmarks/results/generate_throughput.json. Without --model a tiny random Llama is built locally.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from functools import partial
from pathlib import Path

import ray
import torch
from rich.console import Console
from rich.table import Table

from forewarn.config import GenerationParams, ModelSpec, Resources, RoleConfig
from forewarn.models import load_generator
from forewarn.models.tiny import build_tiny_model
from forewarn.pipeline.stages import generate_stage
from forewarn.pools import RolePool

OUT = Path(__file__).resolve().parent / "results" / "generate_throughput.json"
# small: start-up dominates, and the warm pool shows what every later stage of an iterative job pays; big: the
# direct loop takes over a minute (a warm pool there would only repeat the cold figure minus start-up)
WORKLOADS = {
    "small": {"prompts": 1024, "max_new_tokens": 64, "warm": True},
    "big": {"prompts": 8192, "max_new_tokens": 96, "warm": False},
}


def direct(
    spec: ModelSpec, prompts: list[str], params: GenerationParams, batch_size: int
) -> tuple[float, int]:
    gen = load_generator(spec)
    start, tokens = time.perf_counter(), 0
    for i in range(0, len(prompts), batch_size):
        tokens += sum(len(row[0].token_ids) for row in gen.generate(prompts[i : i + batch_size], params))
    return time.perf_counter() - start, tokens


def ray_data(role: RoleConfig, prompts: list[str], params: GenerationParams) -> tuple[float, int]:
    rows = [{"id": str(i), "prompt": p} for i, p in enumerate(prompts)]
    start = time.perf_counter()
    df = generate_stage(ray.data.from_items(rows), role, params).to_pandas()
    return time.perf_counter() - start, int(df["num_tokens"].sum())


def pool(
    role: RoleConfig, prompts: list[str], params: GenerationParams, warm: bool
) -> dict[str, tuple[float, int]]:
    start = time.perf_counter()
    p = RolePool("target", partial(load_generator, role.model), role.resources)
    out = {}
    try:
        for name in ("pool_cold", "pool_warm")[: 2 if warm else 1]:
            rows = p.map("generate", {"prompts": prompts}, params=params)
            out[name] = (time.perf_counter() - start, sum(len(r[0].token_ids) for r in rows))
            start = time.perf_counter()
    finally:
        p.close()
    return out


def run_workload(name: str, spec: ModelSpec, args: argparse.Namespace) -> dict:
    w = WORKLOADS[name]
    params = GenerationParams(max_new_tokens=w["max_new_tokens"])
    prompts = [f"Question {i}: tell me about topic {i % 17} and item {i % 5}" for i in range(w["prompts"])]
    role = RoleConfig(
        model=spec, resources=Resources(num_cpus=1, replicas=args.replicas, batch_size=args.batch_size)
    )
    torch.set_num_threads(args.replicas)  # the direct loop may use every core the pool uses
    paths = {"direct": direct(spec, prompts, params, args.batch_size)}
    torch.set_num_threads(1)
    ray.init(address="local", num_cpus=args.replicas, include_dashboard=False, log_to_driver=False)
    try:
        paths["ray_data"] = ray_data(role, prompts, params)
        paths.update(pool(role, prompts, params, w["warm"]))
    finally:
        ray.shutdown()
    result: dict = {"prompts": len(prompts), "max_new_tokens": w["max_new_tokens"]}
    for path, (seconds, tokens) in paths.items():
        result[path] = {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds}
    for path in paths:
        result[path]["ratio_over_direct"] = result[path]["tokens_per_s"] / result["direct"]["tokens_per_s"]
    table = Table(
        title=f"generate throughput, workload {name!r}: {len(prompts)} prompts x {w['max_new_tokens']} "
        "tokens (same model, prompts and params)"
    )
    for col in ("path", "seconds", "tokens", "tokens/s", "over direct"):
        table.add_column(col)
    for path in paths:
        r = result[path]
        table.add_row(
            path,
            f"{r['seconds']:.2f}",
            str(r["tokens"]),
            f"{r['tokens_per_s']:.0f}",
            f"{r['ratio_over_direct']:.2f}",
        )
    Console().print(table)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="HF folder (default: a tiny random Llama built here)")
    ap.add_argument("--workloads", default="small,big", help="comma-separated: small, big")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--replicas", type=int, default=2)
    args = ap.parse_args()

    model = args.model or str(build_tiny_model(Path(tempfile.mkdtemp()) / "tiny", arch="llama"))
    spec = ModelSpec(path=model)
    result: dict = {"model": model, "batch_size": args.batch_size, "replicas": args.replicas, "workloads": {}}
    for name in args.workloads.split(","):
        result["workloads"][name] = run_workload(name, spec, args)
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
