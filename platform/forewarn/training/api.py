"""The Python API of training: ``train_sft`` and ``train_dpo`` (ReverseGen calls these), and the reference
log-prob pass of DPO.

DPO's reference log-probs are computed ONCE, before training, by a one-actor role pool
(``forewarn.pools.RolePool``) holding the frozen reference model, and stored beside the pairs
(``OUTPUT_DIR/dpo_pairs.parquet``); the train loop only reads them. Pairs that already carry
``ref_chosen_logps`` / ``ref_rejected_logps`` pass through.

    model_dir = train_dpo(DPOConfig(), "pairs.parquet", "runs/proposer-0/model", "runs/dpo-1", tracker)
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch

from forewarn.config import Resources
from forewarn.pipeline.rundir import RunDir
from forewarn.pools import RolePool
from forewarn.training.config import DPOConfig, TrainConfig
from forewarn.training.data import TableLike, load_table, require_columns
from forewarn.training.tasks import (
    DPOTask,
    SFTTask,
    collate_pairs,
    encode_pair,
    forward_logps,
    load_causal_lm,
)
from forewarn.training.trainer import fit

REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")


class ReferenceScorer:
    """The frozen reference model, loaded once per pool actor: summed response log-probs of chosen and
    rejected for each pair, encoded exactly as the train loop encodes them."""

    def __init__(self, model_path: str, cfg: TrainConfig):
        from transformers import AutoTokenizer

        self.cfg = cfg
        self.device = "cuda" if cfg.use_gpu else "cpu"
        self.tok = AutoTokenizer.from_pretrained(model_path)
        self.model = load_causal_lm(model_path).to(self.device).eval()

    def score(self, prompt: list[str], chosen: list[str], rejected: list[str]) -> list[tuple[float, float]]:
        rows = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in zip(prompt, chosen, rejected)]
        items = [encode_pair(self.tok, row, self.cfg) for row in rows]
        b = {k: v.to(self.device) for k, v in collate_pairs(items, self.tok).items()}
        with torch.inference_mode():
            logps = forward_logps(self.model, b["input_ids"], b["attention_mask"], b["loss_mask"]).double()
        n = len(items)
        return list(zip(logps[:n].cpu().tolist(), logps[n:].cpu().tolist()))


def compute_reference_logps(pairs: pa.Table, reference_model_path: str | Path, cfg: DPOConfig) -> pa.Table:
    """Add ``ref_chosen_logps`` / ``ref_rejected_logps`` (summed response log-probs under the reference),
    keeping the row order of ``pairs``.

    A one-actor pool asking what one training worker asks (which a job's training reserve holds free), and no
    other Ray work: a Ray Data pass here schedules 1-CPU metadata tasks, which deadlocked a ReverseGen run on
    2 CPUs whose role pools held 1.25 of them."""
    require_columns(pairs, ("prompt", "chosen", "rejected"), "DPO pairs")
    one = Resources(
        num_cpus=cfg.cpus_per_worker, num_gpus=1 if cfg.use_gpu else 0, batch_size=cfg.ref_batch_size
    )
    pool = RolePool("reference_logps", partial(ReferenceScorer, str(reference_model_path), cfg), one)
    try:
        cols = {k: pairs.column(k).to_pylist() for k in ("prompt", "chosen", "rejected")}
        logps = pool.map("score", cols)
    finally:
        pool.close()
    chosen, rejected = zip(*logps) if logps else ((), ())
    return pairs.append_column("ref_chosen_logps", pa.array(chosen, pa.float64())).append_column(
        "ref_rejected_logps", pa.array(rejected, pa.float64())
    )


def with_reference(
    pairs: pa.Table, reference_model_path: str | Path, cfg: DPOConfig, rundir: RunDir, name: str
) -> pa.Table:
    """Pairs with reference log-probs: passed through, reused from ``rundir``, or computed once and stored."""
    if all(c in pairs.column_names for c in REF_COLUMNS):
        return pairs
    stage = f"reference_logps:{name}"
    if rundir.is_done(stage) and rundir.has_table(name):
        return rundir.read_table(name)
    table = compute_reference_logps(pairs, reference_model_path, cfg)
    rundir.write_table(name, table)
    rundir.mark_done(stage, reference=str(reference_model_path), rows=table.num_rows)
    return table


def train_sft(
    cfg: TrainConfig,
    pairs: TableLike,
    output_dir: str | Path,
    tracker: Any,
    *,
    model_path: str | Path,
    eval_pairs: TableLike | None = None,
) -> Path:
    """Fine-tune ``model_path`` on (prompt, target) rows, loss on target tokens only; returns the HF folder."""
    task = SFTTask()
    train = load_table(pairs, "SFT pairs")
    require_columns(train, task.columns, "SFT pairs")
    evals = load_table(eval_pairs, "SFT eval pairs") if eval_pairs is not None else None
    if evals is not None:
        require_columns(evals, task.columns, "SFT eval pairs")
    return fit(task, cfg, model_path, train, output_dir, tracker, eval_table=evals)


def train_dpo(
    cfg: DPOConfig,
    pairs: TableLike,
    reference_model_path: str | Path,
    output_dir: str | Path,
    tracker: Any,
    *,
    policy_model_path: str | Path | None = None,
    eval_pairs: TableLike | None = None,
) -> Path:
    """DPO on (prompt, chosen, rejected) rows against a frozen reference; returns the HF checkpoint folder.

    The policy starts from ``policy_model_path`` (default: the reference itself, as in ReverseGen).
    """
    rundir = RunDir(output_dir)
    train = with_reference(load_table(pairs, "DPO pairs"), reference_model_path, cfg, rundir, "dpo_pairs")
    evals = None
    if eval_pairs is not None:
        evals = with_reference(
            load_table(eval_pairs, "DPO eval pairs"), reference_model_path, cfg, rundir, "dpo_eval_pairs"
        )
    return fit(
        DPOTask.from_config(cfg),
        cfg,
        policy_model_path or reference_model_path,
        train,
        output_dir,
        tracker,
        eval_table=evals,
    )
