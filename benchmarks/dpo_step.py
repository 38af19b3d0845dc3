"""Time per DPO optimizer step: forewarn's runner (Ray Train + DeepSpeed ZeRO-0, one worker) vs TRL's
``DPOTrainer``, on the same tiny model, pairs, batch size, optimiser and precomputed reference log-probs.

    OMP_NUM_THREADS=1 python benchmarks/dpo_step.py [--steps 30] [--batch 8] [--workers 1]

Per-step times exclude start-up (Ray, DeepSpeed init, the reference pass); the median over the steps after
the first few warm-up steps is compared. Prints a side-by-side table with the ratio and writes
benchmarks/results/dpo_step.json.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import ray
import torch
from rich.console import Console
from rich.table import Table

from forewarn.models.tiny import build_tiny_model, train_tokenizer
from forewarn.tracking import NullTracker
from forewarn.training.api import train_dpo
from forewarn.training.config import DPOConfig
from forewarn.training.trainer import read_metrics

OUT = Path(__file__).resolve().parent / "results" / "dpo_step.json"
WARMUP = 3


def pairs(n: int) -> list[dict]:
    r = random.Random(0)
    words = ["cat", "dog", "cow", "owl", "fox", "bee", "ant", "elk"]
    return [
        {
            "prompt": f"Tell me about the {r.choice(words)} number {r.randint(0, 99)}.",
            "chosen": "It is kind and calm and it helps everyone nearby.",
            "rejected": "It is rude and loud and it bothers everyone nearby.",
        }
        for _ in range(n)
    ]


def forewarn_steps(model: str, rows: list[dict], args: argparse.Namespace, out: Path) -> list[float]:
    cfg = DPOConfig(
        num_workers=args.workers,
        lr=1e-4,
        micro_batch_size=args.batch // args.workers,
        max_steps=args.steps,
        epochs=100,
        max_length=128,
        max_prompt_length=64,
        use_chat_template=False,
        max_grad_norm=1.0,
    )
    train_dpo(cfg, rows, model, out, NullTracker())
    return [r["step_time_s"] for r in read_metrics(out / "metrics.jsonl") if "step_time_s" in r]


def trl_steps(model_path: str, rows: list[dict], args: argparse.Namespace, out: Path) -> list[float]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig as TRLConfig
    from trl import DPOTrainer

    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t0)

    tok = AutoTokenizer.from_pretrained(model_path)
    tok.padding_side = "right"
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    targs = TRLConfig(
        output_dir=str(out),
        per_device_train_batch_size=args.batch,
        max_steps=args.steps,
        learning_rate=1e-4,
        beta=0.1,
        max_length=128,
        precompute_ref_log_probs=True,
        report_to="none",
        use_cpu=True,
        logging_steps=10**6,
        save_strategy="no",
        dataloader_num_workers=0,
        max_grad_norm=1.0,
        lr_scheduler_type="constant",
        warmup_steps=0,
    )
    trainer = DPOTrainer(
        model=model,
        args=targs,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        callbacks=[StepTimer()],
    )
    trainer.train()
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=8, help="pairs per optimizer step (global)")
    ap.add_argument("--workers", type=int, default=1, help="forewarn Ray Train workers")
    args = ap.parse_args()
    torch.set_num_threads(1)

    root = Path(tempfile.mkdtemp(prefix="dpo-bench-"))
    rows = pairs(args.steps * args.batch)
    tok = train_tokenizer(
        [f"{r['prompt']} {r['chosen']} {r['rejected']}" for r in rows[:200]], vocab_size=400
    )
    model = str(build_tiny_model(root / "model", tokenizer=tok))
    ray.init(address="local", num_cpus=max(2, args.workers))
    fw = forewarn_steps(model, rows, args, root / "forewarn")
    ray.shutdown()
    trl = trl_steps(model, rows, args, root / "trl")

    med = {"forewarn": statistics.median(fw[WARMUP:]), "trl": statistics.median(trl[WARMUP:])}
    table = Table(
        title=f"DPO step time, tiny Llama, batch {args.batch}, {args.steps} steps (median after "
        f"{WARMUP} warm-up steps)"
    )
    for col in ("trainer", "median step (ms)", "mean step (ms)", "steps"):
        table.add_column(col)
    for name, times in (("forewarn (Ray Train + DeepSpeed ZeRO-0)", fw), ("TRL DPOTrainer", trl)):
        key = "forewarn" if name.startswith("forewarn") else "trl"
        table.add_row(
            name, f"{med[key] * 1e3:.1f}", f"{statistics.mean(times[WARMUP:]) * 1e3:.1f}", str(len(times))
        )
    console = Console()
    console.print(table)
    ratio = med["forewarn"] / med["trl"]
    console.print(f"forewarn / TRL step time: {ratio:.2f}x")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(
        json.dumps(
            {
                "args": vars(args),
                "median_step_s": med,
                "ratio_forewarn_over_trl": ratio,
                "forewarn_steps_s": fw,
                "trl_steps_s": trl,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
