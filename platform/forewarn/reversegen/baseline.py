"""The baseline beside a ReverseGen run: the target's failure rate on a fixed set of instructions.

A loop that "finds" failures proves little if the instructions it starts from, or any ordinary
instructions, fail just as often. ``measure_baseline`` asks the run's target the instructions of a JSONL
file (the run's own seed file, or a file of benign instructions) exactly as an iteration asks proposals —
the same respond template, sampling and judge, through :func:`forewarn.reversegen.loop.respond_and_judge`
— and reports their ASR. The models run in this process (no Ray): the files are small.

    forewarn reversegen baseline --config configs/smollm2/reversegen-safety.yaml \\
        --instructions configs/smollm2/seeds/benign.jsonl

Writes ``OUTPUT_DIR/baseline/<file stem>.parquet`` (the judged rows) and returns the figures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from forewarn.judges import build_judge
from forewarn.metrics import attack_success_rate
from forewarn.models import load_generator
from forewarn.pipeline.rundir import RunDir
from forewarn.records import stable_id
from forewarn.reversegen.config import ReverseGenConfig, reference_role, uses_reference
from forewarn.reversegen.loop import IterationContext, Roles, respond_and_judge
from forewarn.reversegen.proposer import read_seeds


def _no_proposals(*_: Any, **__: Any) -> Any:
    raise RuntimeError("a baseline asks fixed instructions; it never samples the proposer")


def instruction_rows(items: list[dict], name: str) -> pd.DataFrame:
    """Seed items as the rows an iteration's ``instructions`` table holds (one prompt group per item)."""
    ids = [stable_id("baseline", name, i) for i in range(len(items))]
    return pd.DataFrame(
        {
            "id": ids,
            "prompt_id": ids,
            "prompt": [""] * len(items),
            "subject": [it.get("subject", "") for it in items],
            "instruction": [it["instruction"] for it in items],
            "iteration": -1,
            "run_id": f"baseline-{name}",
        }
    )


def measure_baseline(cfg: ReverseGenConfig, instructions: str, limit: int | None = None) -> dict[str, Any]:
    """ASR of the config's target and judge on the instructions in ``instructions`` (JSONL). The config's
    names must be resolved to local paths (``forewarn.reversegen.job.resolve_names``, as the CLI does)."""

    items = read_seeds(instructions, cfg.task)[:limit]
    name = Path(instructions).stem
    reference = load_generator(reference_role(cfg).model).generate if uses_reference(cfg) else None
    roles = Roles(
        propose=_no_proposals,
        respond=load_generator(cfg.target.model).generate,
        judge=build_judge(cfg.judge).judge,
        reference=reference,
    )
    rundir = RunDir(cfg.output_dir)
    rundir.path("baseline").mkdir(exist_ok=True)
    ctx = IterationContext(cfg, rundir, f"baseline-{name}", -1, items, roles)
    judged = respond_and_judge(ctx, instruction_rows(items, name))
    rundir.write_table(f"baseline/{name}", pa.Table.from_pandas(judged, preserve_index=False))
    labels = [None if f is None or pd.isna(f) else bool(f) for f in judged["failure"]]
    return {
        "instructions": instructions,
        "n": len(labels),
        "n_failures": sum(x is True for x in labels),
        "n_judge_errors": sum(x is None for x in labels),
        "asr": attack_success_rate(labels),
        "judge": cfg.judge.kind,
        "mean_score": float(pd.to_numeric(judged["judge_score"]).mean()),
    }
