"""Seeded vs unseeded sampling through the generate stage: same model, prompts, n and batch size.

    OMP_NUM_THREADS=1 python benchmarks/seeded_sampling.py [--model DIR] [--prompts 256] [--n 8] [--repeats 2]

With a seed, the generate stage gives every row its own seed (from its id) so a row's samples do not depend on
its batch; before batched seeded sampling that meant one call per row (0.55x the unseeded tokens/s). Both
modes run through ``forewarn.pipeline.stages.generate_stage`` on a local Ray (one actor, so the two modes
see the same CPU), alternating, best of ``--repeats`` each; the stage time includes the actor start and
model load, which both modes pay alike. On a shared machine wall time swings with others' load, so the
stage's actor body (``GenerateUDF``, model loaded beforehand) is also timed in-process in CPU seconds, the
figure that load does not move. Prints a table and the ratio, and writes
benchmarks/results/seeded_sampling.json. Default model: the testbed proposer (its default sampling).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import ray
from rich.console import Console
from rich.table import Table

from forewarn.config import GenerationParams, ModelSpec, Resources, RoleConfig
from forewarn.pipeline.stages import GenerateUDF, generate_stage

OUT = Path(__file__).resolve().parent / "results" / "seeded_sampling.json"


def run_stage(role: RoleConfig, params: GenerationParams, rows: list[dict]) -> tuple[float, int, list[str]]:
    start = time.perf_counter()
    df = generate_stage(ray.data.from_items(rows), role, params).to_pandas()
    seconds = time.perf_counter() - start
    df = df.sort_values(["id", "sample"])
    return seconds, int(df["num_tokens"].sum()), list(df["text"])


def run_udf(
    role: RoleConfig, params: GenerationParams, rows: list[dict], batch_size: int
) -> tuple[float, int]:
    """The stage's actor body in this process, timed in CPU seconds (robust to other load on a shared box)."""
    udf = GenerateUDF(role.model, params, role.resources.num_cpus, "prompt", "")
    df = pd.DataFrame(rows)
    start = time.process_time()
    out = pd.concat([udf(df.iloc[i : i + batch_size]) for i in range(0, len(df), batch_size)])
    return time.process_time() - start, int(out["num_tokens"].sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="HF folder (default: the testbed proposer)")
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument(
        "--no-stage", action="store_true", help="only the in-process actor-body (CPU time) comparison"
    )
    args = ap.parse_args()

    if args.model is None:
        from forewarn.names import resolve_model

        args.model = resolve_model("testbed:proposer")
    role = RoleConfig(
        model=ModelSpec(path=args.model, use_chat_template=False),
        resources=Resources(num_cpus=1, replicas=1, batch_size=args.batch_size),
    )
    base = GenerationParams(temperature=1.0, top_p=0.9, n=args.n, max_new_tokens=args.max_new_tokens)
    modes = {"unseeded": base, "seeded": base.model_copy(update={"seed": 0})}
    rows = [
        {
            "id": f"p{i}",
            "prompt": f"Ask questions:\n1. How do I fix item {i}?\n2. What is topic {i % 13}?\n"
            f"3. Why does thing {i % 7} happen?\n4.",
        }
        for i in range(args.prompts)
    ]
    cpu: dict[str, list[tuple[float, int]]] = {m: [] for m in modes}
    for _ in range(args.repeats):
        for name, params in modes.items():
            cpu[name].append(run_udf(role, params, rows, args.batch_size))
    result: dict = {
        "model": args.model,
        "prompts": args.prompts,
        "n": args.n,
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
    }
    for name in modes:
        cpu_s, tokens = min(cpu[name])
        result[name] = {"udf_cpu_seconds": cpu_s, "tokens": tokens, "udf_tokens_per_cpu_s": tokens / cpu_s}
    result["ratio_cpu_seeded_over_unseeded"] = (
        result["seeded"]["udf_tokens_per_cpu_s"] / result["unseeded"]["udf_tokens_per_cpu_s"]
    )
    print(
        f"actor body, CPU time: seeded / unseeded tokens per CPU second = "
        f"{result['ratio_cpu_seeded_over_unseeded']:.2f}",
        flush=True,
    )
    write(result)
    if args.no_stage:
        return
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    runs: dict[str, list[tuple[float, int]]] = {m: [] for m in modes}
    texts: dict[str, list[list[str]]] = {m: [] for m in modes}
    for _ in range(args.repeats):
        for name, params in modes.items():
            seconds, tokens, out = run_stage(role, params, rows)
            runs[name].append((seconds, tokens))
            texts[name].append(out)
    ray.shutdown()
    for name in modes:
        seconds, tokens = min(runs[name])
        result[name].update(
            seconds=seconds,
            stage_tokens=tokens,
            tokens_per_s=tokens / seconds,
            all_seconds=[s for s, _ in runs[name]],
        )
    result["ratio_seeded_over_unseeded"] = (
        result["seeded"]["tokens_per_s"] / result["unseeded"]["tokens_per_s"]
    )
    result["seeded_reproducible"] = all(t == texts["seeded"][0] for t in texts["seeded"])
    table = Table(title=f"generate stage, {args.prompts} prompts x {args.n} samples (best of {args.repeats})")
    for col in ("mode", "stage seconds", "tokens", "tokens/s", "actor-body CPU s", "tokens/CPU s"):
        table.add_column(col)
    for name in modes:
        r = result[name]
        table.add_row(
            name,
            f"{r['seconds']:.2f}",
            str(r["stage_tokens"]),
            f"{r['tokens_per_s']:.0f}",
            f"{r['udf_cpu_seconds']:.2f}",
            f"{r['udf_tokens_per_cpu_s']:.0f}",
        )
    Console().print(table)
    print(
        f"ratio seeded / unseeded tokens/s: {result['ratio_seeded_over_unseeded']:.2f} through the stage (wall), "
        f"{result['ratio_cpu_seeded_over_unseeded']:.2f} in its actor body (CPU time); "
        f"seeded runs identical: {result['seeded_reproducible']}"
    )
    write(result)


def write(result: dict) -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
