"""The Python API of training: ``train_sft`` and ``train_dpo`` (ReverseGen calls these), and the reference
log-prob pass of DPO.

DPO's reference log-probs are computed ONCE, before training, by a Ray Data actor pass over the pairs with
the frozen reference model, and stored beside the pairs (``OUTPUT_DIR/dpo_pairs.parquet``); the train
loop only reads them. Pairs that already carry ``ref_chosen_logps`` / ``ref_rejected_logps`` pass through.

    model_dir = train_dpo(DPOConfig(), "pairs.parquet", "runs/proposer-0/model", "runs/dpo-1", tracker)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import torch

from forewarn.config import Resources
from forewarn.pipeline.rundir import RunDir
from forewarn.pools import data_stage, set_torch_threads
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


class ReferenceLogpsUDF:
    """Ray Data actor: the frozen reference model, loaded once, scores chosen and rejected of each pair."""

    def __init__(self, model_path: str, cfg: TrainConfig, num_cpus: float):
        from transformers import AutoTokenizer

        set_torch_threads(num_cpus)
        self.cfg = cfg
        self.device = "cuda" if cfg.use_gpu else "cpu"
        self.tok = AutoTokenizer.from_pretrained(model_path)
        self.model = load_causal_lm(model_path).to(self.device).eval()

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        items = [encode_pair(self.tok, row, self.cfg) for row in batch.to_dict("records")]
        b = {k: v.to(self.device) for k, v in collate_pairs(items, self.tok).items()}
        with torch.inference_mode():
            logps = (
                forward_logps(self.model, b["input_ids"], b["attention_mask"], b["loss_mask"]).double().cpu()
            )
        n = len(items)
        out = batch.copy()
        out["ref_chosen_logps"], out["ref_rejected_logps"] = logps[:n].numpy(), logps[n:].numpy()
        return out


def compute_reference_logps(pairs: pa.Table, reference_model_path: str | Path, cfg: DPOConfig) -> pa.Table:
    """Add ``ref_chosen_logps`` / ``ref_rejected_logps`` (summed response log-probs under the reference),
    keeping the row order of ``pairs``."""
    import ray.data

    require_columns(pairs, ("prompt", "chosen", "rejected"), "DPO pairs")
    indexed = pairs.append_column("__row", pa.array(range(pairs.num_rows), pa.int64()))
    # one replica: the frozen reference, loaded once, asking what a training worker asks
    one = Resources(
        num_cpus=cfg.cpus_per_worker, num_gpus=1 if cfg.use_gpu else 0, batch_size=cfg.ref_batch_size
    )
    ds = data_stage(
        ray.data.from_arrow(indexed),
        ReferenceLogpsUDF,
        dict(model_path=str(reference_model_path), cfg=cfg, num_cpus=cfg.cpus_per_worker),
        one,
    )
    table = load_table(ds).sort_by("__row")
    return table.drop_columns(["__row"])


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
