"""The one training runner of forewarn: Ray Train ``TorchTrainer`` with ``deepspeed.initialize`` in the loop.

A *task* (SFT, DPO, a DPL reward model) says how to load the model, encode a row, batch rows and compute
the loss; the runner does the rest identically for all of them: workers (gloo on CPU, NCCL on GPU),
DeepSpeed (ZeRO 0–3, offload, bf16/fp16, grad accumulation, clipping), optimiser and warm-up schedule,
optional LoRA, seeded equal sharding, evaluation, per-step metrics from rank 0 (MLflow + metrics.jsonl),
checkpoints every N steps and at the end, and resume from the latest checkpoint.

    model_dir = fit(SFTTask(), cfg, "path/to/model", table, "runs/sft", tracker)
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import torch

from forewarn.errors import ConfigError
from forewarn.tracking import short_error, unreachable
from forewarn.training.checkpoints import apply_lora, export_hf, restore_checkpoint, save_checkpoint
from forewarn.training.config import TrainConfig
from forewarn.training.data import micro_batch_indices, steps_per_epoch


class Task(Protocol):
    """What differs between trainers; everything else lives in the runner."""

    name: str
    peft_task_type: str  # "CAUSAL_LM" or "SEQ_CLS"
    columns: tuple[str, ...]  # required input columns

    def load_model(self, path: str, cfg: TrainConfig) -> torch.nn.Module: ...
    def fresh_model(self, hf_config: Any) -> torch.nn.Module: ...
    def encode(self, tok: Any, row: dict, cfg: TrainConfig) -> dict: ...
    def collate(self, items: list[dict], tok: Any) -> dict[str, torch.Tensor]: ...
    def loss(
        self, model: Any, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...
    def evaluate(self, model: Any, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...


# ------------------------------------------------------------------ schedule, optimiser, DeepSpeed config


def lr_factor(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Warm-up ``min(1, (step+1)/(warmup+1))`` (reversegen.md §7), then constant / linear / cosine to the floor."""
    if step < cfg.warmup_steps:
        return min(1.0, (step + 1) / (cfg.warmup_steps + 1))
    if cfg.schedule == "constant":
        return 1.0
    t = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    shape = 1.0 - t if cfg.schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * t))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * shape


def make_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """A torch optimiser handed to DeepSpeed (no JIT-compiled op, same maths on CPU and GPU)."""
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def deepspeed_config(cfg: TrainConfig, world: int) -> dict[str, Any]:
    ds = cfg.deepspeed
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": cfg.use_gpu}
    if ds.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": cfg.use_gpu}
    return {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "train_batch_size": cfg.micro_batch_size * cfg.grad_accum * world,
        "gradient_clipping": cfg.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": ds.dtype == "bf16"},
        "fp16": {"enabled": ds.dtype == "fp16"},
        # our optimiser is a torch one; offloading it is allowed (slower than DeepSpeedCPUAdam, no JIT build)
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**9,
    }


# ------------------------------------------------------------------ rank-0 metrics


class MetricsLog:
    """Per-step metrics from rank 0: appended to ``metrics.jsonl`` and logged to the job's MLflow run."""

    def __init__(self, path: str, tracking_uri: str | None, run_id: str | None, prefix: str):
        self.path, self.prefix, self.client, self.run_id = Path(path), prefix, None, run_id
        if run_id:
            from mlflow.tracking import MlflowClient

            self.client = MlflowClient(tracking_uri)

    def log(self, step: int, metrics: dict[str, float], **extra: Any) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **extra, **metrics}) + "\n")
        if self.client is not None:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            try:
                self.client.log_batch(
                    self.run_id,
                    metrics=[Metric(f"{self.prefix}{k}", float(v), now, step) for k, v in metrics.items()],
                )
            except Exception as e:  # a tracking server gone mid-run costs the MLflow copy, not the training
                if not unreachable(e):
                    raise
                self.client = None
                with self.path.open("a") as f:
                    f.write(
                        json.dumps({"step": step, "event": "tracking_gap", "error": short_error(e)}) + "\n"
                    )


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a ``metrics.jsonl`` (empty if the run logged nothing yet)."""
    p = Path(path)
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.is_file() else []


def _all_reduce_mean(metrics: dict[str, torch.Tensor], world: int) -> dict[str, float]:
    import torch.distributed as dist

    keys = sorted(metrics)
    vec = torch.stack([metrics[k].detach().float().cpu() for k in keys])
    dist.all_reduce(vec)
    return {k: float(v) / world for k, v in zip(keys, vec.tolist())}


# ------------------------------------------------------------------ the Ray Train loop


def _evaluate(task: Task, engine: Any, rows: list[dict], tok: Any, batch_size: int) -> dict[str, float]:
    """Every rank evaluates all eval rows (same forwards on every rank, as ZeRO-3 requires); sums / count."""
    engine.eval()
    sums: dict[str, float] = {}
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            batch = {k: v.to(engine.device) for k, v in task.collate(rows[i : i + batch_size], tok).items()}
            for k, v in task.evaluate(engine, batch).items():
                sums[k] = sums.get(k, 0.0) + float(v)
    engine.train()
    count = sums.pop("count")
    return {f"eval/{k}": v / count for k, v in sums.items()}


def train_loop(config: dict) -> None:
    """Body of every Ray Train worker."""
    import deepspeed
    import ray
    import ray.train
    from transformers import AutoTokenizer

    task: Task = config["task"]
    cfg: TrainConfig = config["cfg"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
    torch.manual_seed(cfg.seed)

    tok = AutoTokenizer.from_pretrained(config["model_path"])
    model = task.load_model(config["model_path"], cfg)
    hf_config = model.config
    if cfg.lora.enabled:
        model = apply_lora(model, cfg.lora, task.peft_task_type)
    rows = [task.encode(tok, r, cfg) for r in ray.get(config["train_ref"]).to_pylist()]
    eval_rows = (
        [task.encode(tok, r, cfg) for r in ray.get(config["eval_ref"]).to_pylist()]
        if config["eval_ref"] is not None
        else []
    )

    spe = steps_per_epoch(len(rows), world, cfg.micro_batch_size, cfg.grad_accum)
    total = min(cfg.max_steps or spe * cfg.epochs, spe * cfg.epochs)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg, total))
    engine, _, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=deepspeed_config(cfg, world)
    )
    start = restore_checkpoint(engine)
    log = (
        MetricsLog(config["metrics_path"], config["tracking_uri"], config["run_id"], config["prefix"])
        if rank == 0
        else None
    )

    def export(out: Path, state: dict) -> None:
        export_hf(state, lambda: task.fresh_model(hf_config), cfg.lora, task.peft_task_type, tok, out)

    def maybe_eval(step: int) -> dict[str, float]:
        if not eval_rows:
            return {}
        metrics = _evaluate(task, engine, eval_rows, tok, cfg.micro_batch_size)
        if log:
            log.log(step, metrics)
        return metrics

    if log:
        log.log(start, {"resumed_from_step": float(start), "total_steps": float(total)}, event="start")
    last = maybe_eval(0) if start == 0 else {}
    metrics: dict[str, float] = {}
    for step in range(start, total):
        epoch, in_epoch = divmod(step, spe)
        t0 = time.perf_counter()
        acc: dict[str, torch.Tensor] = {}
        for a in range(cfg.grad_accum):
            idx = micro_batch_indices(
                len(rows), cfg.seed, epoch, in_epoch, a, rank, world, cfg.micro_batch_size, cfg.grad_accum
            )
            batch = {k: v.to(engine.device) for k, v in task.collate([rows[i] for i in idx], tok).items()}
            loss, parts = task.loss(engine, batch)
            engine.backward(loss)
            engine.step()
            for k, v in {"loss": loss.detach(), **parts}.items():
                acc[k] = acc.get(k, 0.0) + v.detach().float() / cfg.grad_accum
        metrics = _all_reduce_mean(acc, world)
        metrics.update(
            lr=scheduler.get_last_lr()[0], epoch=float(epoch), step_time_s=time.perf_counter() - t0
        )
        norm = engine.get_global_grad_norm()
        if norm is not None:
            metrics["grad_norm"] = float(norm)
        done = step + 1
        if log:
            log.log(done, metrics)
        if cfg.eval_every and done % cfg.eval_every == 0 and done != total:
            last = maybe_eval(done)
        if done == total or (cfg.checkpoint_every and done % cfg.checkpoint_every == 0):
            if done == total:
                last = maybe_eval(done) or last
            save_checkpoint(engine, done, {**metrics, **last}, export, cfg.deepspeed.zero_stage, rank)


# ------------------------------------------------------------------ the driver side


def fit(
    task: Task,
    cfg: TrainConfig,
    model_path: str | Path,
    train: pa.Table,
    output_dir: str | Path,
    tracker: Any,
    eval_table: pa.Table | None = None,
    name: str | None = None,
) -> Path:
    """Train ``model_path`` on ``train`` with ``task``; returns ``OUTPUT_DIR/model`` (a HF folder).

    A rerun with the same ``output_dir`` (and name) resumes from the latest checkpoint of the first run; within
    one run, a dead worker restarts the worker group (``cfg.max_failures`` times), which resumes the same way.
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    out = Path(output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    model_path = str(Path(model_path).resolve()) if Path(model_path).exists() else str(model_path)
    world = cfg.num_workers
    if steps_per_epoch(train.num_rows, world, cfg.micro_batch_size, cfg.grad_accum) == 0:
        raise ConfigError(
            f"{task.name}: {train.num_rows} training rows are fewer than one optimizer step needs "
            f"(num_workers {world} × micro_batch_size {cfg.micro_batch_size} × grad_accum {cfg.grad_accum}); "
            "lower micro_batch_size or num_workers, or add data"
        )
    resources = {"CPU": cfg.cpus_per_worker, **({"GPU": 1} if cfg.use_gpu else {})}
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={
            "task": task,
            "cfg": cfg,
            "model_path": model_path,
            "train_ref": ray.put(train),
            "eval_ref": ray.put(eval_table) if eval_table is not None else None,
            "metrics_path": str(out / "metrics.jsonl"),
            "tracking_uri": tracker.tracking_uri,
            "run_id": tracker.run_id,
            "prefix": f"{task.name}/",
        },
        scaling_config=ScalingConfig(num_workers=world, use_gpu=cfg.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=name or task.name,
            storage_path=cfg.storage_path or str(out / "ray"),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"{task.name}: training finished without a checkpoint (see the Ray Train logs)")
    final = out / "model"
    with result.checkpoint.as_directory() as d:
        tmp = out / ".model.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(Path(d) / "hf", tmp)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    return final


def final_metrics(output_dir: str | Path) -> dict[str, float]:
    """The last logged value of every metric in ``OUTPUT_DIR/metrics.jsonl``."""
    last: dict[str, float] = {}
    for row in read_metrics(Path(output_dir) / "metrics.jsonl"):
        last.update({k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"})
    return last
