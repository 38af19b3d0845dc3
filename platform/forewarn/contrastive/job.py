"""The ``contrastive`` job: decode a prompt file under two models, or search for divergent prompts.

    python jobs/contrastive.py                                  # finder on the testbed: target vs patched
    python jobs/contrastive.py --set mode=decode --set prompts=prompts.jsonl \\
        --set start.model.path=BASE --set comparison.model.path=FINETUNE

Outputs in OUTPUT_DIR: ``samples.parquet`` (token-level evidence), ``prompts.parquet`` (prompts ranked by
divergence), ``cycles.parquet`` (finder statistics), ``malformed.json`` (skipped assistant answers),
``report.html`` (the token view), ``summary.json``; the same go to MLflow with plots.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from forewarn.config import GenerationParams
from forewarn.contrastive.bank import entries_from_samples
from forewarn.contrastive.config import ContrastiveConfig
from forewarn.contrastive.decoder import prompt_means
from forewarn.contrastive.divergence import divergence_name
from forewarn.contrastive.finder import DivergenceFinder
from forewarn.contrastive.plots import log_plots
from forewarn.contrastive.scoring import PoolScorer
from forewarn.contrastive.view import render_html
from forewarn.models import load_generator
from forewarn.models.embed import Embedder
from forewarn.names import resolve_model, resolve_path
from forewarn.pipeline.prompt_files import read_prompts
from forewarn.pipeline.rundir import RunDir, write_text
from forewarn.placement import JobLayout
from forewarn.records import (
    ContrastiveSampleRow,
    DivergencePromptRow,
    FinderCycleRow,
    evidence_of,
    rows_to_table,
    stable_id,
)
from forewarn.testbed import Manifest

CONFIG = ContrastiveConfig
PLACEMENT = JobLayout(
    unplaced={
        "start": "loaded inside the scoring actors",
        "comparison": "loaded inside the scoring actors",
        "assistant": "loaded in the driver process",
    }
)


# ---------------------------------------------------------------- names, prompts, testbed


def _testbed_size(*names: str) -> str | None:
    """The testbed size named by any ``testbed:x[@size]`` name, or None when none is a testbed name."""
    for n in names:
        if n.startswith("testbed:"):
            return n.split("@", 1)[1] if "@" in n else "full"
    return None


def resolve_names(cfg: ContrastiveConfig) -> tuple[ContrastiveConfig, Any]:
    """Testbed names -> local paths (job files resolve names; the library takes paths), and the manifest."""

    cfg = cfg.model_copy(deep=True)
    size = _testbed_size(cfg.start.model.path, cfg.comparison.model.path)
    manifest = Manifest.load(Path(resolve_path(f"testbed:manifest@{size}")).parent) if size else None
    for role in (cfg.start, cfg.comparison, cfg.assistant):
        if role is not None and role.model.backend != "openai":
            role.model.path = resolve_model(_with_size(role.model.path, size))
    cfg.prompts = resolve_path(_with_size(cfg.prompts, size))
    return cfg, manifest


def _with_size(name: str, size: str | None) -> str:
    """``testbed:x`` -> ``testbed:x@size`` so every artifact comes from the same world as the models."""
    if size and name.startswith("testbed:") and "@" not in name:
        return f"{name}@{size}"
    return name


# ---------------------------------------------------------------- the job


def run(cfg: ContrastiveConfig, rundir: RunDir, tracker: Any) -> dict:
    if rundir.is_done("contrastive") and rundir.path("summary.json").is_file():
        return rundir.read_summary()  # a finished run in this dir: resume = nothing left to do
    cfg, manifest = resolve_names(cfg)
    run_id = tracker.run_id or rundir.root.name
    prompts = read_prompts(cfg.prompts)[: cfg.limit]
    scorer = PoolScorer(cfg.start.model, cfg.comparison.model, cfg.decoder, cfg.scoring)
    start_t = time.perf_counter()
    try:
        if cfg.mode == "decode":
            samples = [(0, 0, s) for s in scorer(prompts)]
            means = prompt_means([s for _, _, s in samples])
            entries = entries_from_samples(prompts, means, [s for _, _, s in samples], source="prompts")
            cycles: list[dict] = []
            malformed: list[dict] = []
        else:
            result = _find(cfg, scorer, prompts, tracker)
            samples, entries, cycles, malformed = (
                result.samples,
                result.entries,
                result.cycles,
                result.malformed,
            )
    finally:
        scorer.close()
    elapsed = time.perf_counter() - start_t
    summary = _write_outputs(
        cfg, rundir, tracker, run_id, manifest, samples, entries, cycles, malformed, elapsed
    )
    # where the time went: the scoring pool's loads (once per run) and compute, beside the whole run's seconds
    summary["timing"] = {"roles": {"scoring": scorer.stats()}}
    tracker.log_metrics({f"role/scoring/{k}": v for k, v in summary["timing"]["roles"]["scoring"].items()})
    return summary  # the runner writes it to the run dir and MLflow


def _find(cfg: ContrastiveConfig, scorer: Any, seeds: list[str], tracker: Any) -> Any:
    embedder = None
    if cfg.finder.diversity_weight > 0:
        embedder = Embedder(cfg.finder.embedder)
    assistant = load_generator(cfg.assistant.model)
    finder = DivergenceFinder(assistant, scorer, cfg.finder, embedder=embedder, tracker=tracker)
    return finder.run(seeds)


def _write_outputs(
    cfg: ContrastiveConfig,
    rundir: RunDir,
    tracker: Any,
    run_id: str,
    manifest: Any,
    samples: list,
    entries: list,
    cycles: list[dict],
    malformed: list[dict],
    elapsed: float,
) -> dict:
    div_name = divergence_name(cfg.decoder.start_weight, cfg.decoder.comparison_weight, cfg.decoder.metric)
    ranked = sorted(entries, key=lambda e: -e.divergence if math.isfinite(e.divergence) else math.inf)
    topic = (lambda text: manifest.planted_topic_of(text)) if manifest is not None else (lambda text: None)
    prompt_rows = [
        DivergencePromptRow(
            id=stable_id(run_id, e.repeat, e.prompt),
            run_id=run_id,
            iteration=e.cycle,
            repeat=e.repeat,
            prompt=e.prompt,
            source=e.source,
            divergence=e.divergence,
            divergence_max=e.divergence_max,
            response=e.response,
            rank=r,
            criterion=e.criterion,
            diversity=e.diversity,
            planted_topic=topic(e.prompt),
        )
        for r, e in enumerate(ranked, 1)
    ]
    pid = {(e.repeat, e.prompt): row.id for e, row in zip(ranked, prompt_rows)}
    sample_rows, sample_dicts = [], []
    for repeat, cycle, s in samples:
        row = ContrastiveSampleRow(
            id=stable_id(run_id, repeat, cycle, s.prompt, s.sample),
            run_id=run_id,
            iteration=cycle,
            repeat=repeat,
            prompt_id=pid.get((repeat, s.prompt), stable_id(run_id, repeat, s.prompt)),
            **evidence_of(s),
        )
        sample_rows.append(row)
        sample_dicts.append(row.__dict__)
    cycle_rows = [
        FinderCycleRow(
            id=stable_id(run_id, c["repeat"], c["cycle"]),
            run_id=run_id,
            iteration=c["cycle"],
            **{
                k: c[k]
                for k in FinderCycleRow.__dataclass_fields__
                if k in c and k not in ("id", "run_id", "iteration")
            },
        )
        for c in cycles
    ]
    rundir.write_table("prompts", rows_to_table(DivergencePromptRow, prompt_rows))
    rundir.write_table("samples", rows_to_table(ContrastiveSampleRow, sample_rows))
    rundir.write_table("cycles", rows_to_table(FinderCycleRow, cycle_rows))
    write_text(rundir.path("malformed.json"), json.dumps(malformed, indent=2) + "\n")

    proposed = [e for e in ranked if e.source == "assistant"] if cfg.mode == "find" else ranked
    top = proposed[: cfg.top_k]
    summary: dict[str, Any] = {
        "mode": cfg.mode,
        "divergence": div_name,
        "n_prompts": len(entries),
        "n_samples": len(samples),
        "n_seeds": sum(e.source == "seed" for e in entries),
        "n_proposed": sum(e.source == "assistant" for e in entries),
        "n_malformed": len(malformed),
        "seconds": round(elapsed, 3),
        "top_divergence_mean": _mean([e.divergence for e in top]),
        "top10_divergence_mean": _mean([e.divergence for e in proposed[:10]]),
        "top": [
            {"prompt": e.prompt, "divergence": e.divergence, "cycle": e.cycle, "response": e.response}
            for e in top
        ],
    }
    if manifest is not None:
        summary["top10_planted"] = sum(manifest.is_planted(e.prompt) for e in proposed[:10])
        summary["top10_planted_fraction"] = summary["top10_planted"] / max(1, min(10, len(proposed)))
        summary["proposed_planted"] = sum(manifest.is_planted(e.prompt) for e in proposed)
    if cycles:
        summary["per_cycle"] = [
            {
                k: c[k]
                for k in (
                    "repeat",
                    "cycle",
                    "n_new",
                    "n_malformed",
                    "bank_size",
                    "top10_divergence_mean",
                    "new_divergence_mean",
                )
            }
            for c in cycles
        ]
    report = render_html(
        sample_dicts,
        title=f"forewarn contrastive ({cfg.mode}): {run_id}",
        divergence=div_name,
        summary={k: v for k, v in summary.items() if not isinstance(v, (list, dict))},
        top=cfg.report_top,
    )
    write_text(rundir.path("report.html"), report)
    tracker.log_metrics(
        {k: v for k, v in summary.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    )
    for name in ("prompts", "samples", "cycles"):
        tracker.log_artifact(rundir.path(f"{name}.parquet"), "tables")
    tracker.log_artifact(rundir.path("report.html"), "report")
    log_plots(tracker, ranked, cycles, div_name)
    rundir.mark_done("contrastive", n_prompts=len(entries))
    return summary


def _mean(values: list[float]) -> float | None:
    v = [x for x in values if math.isfinite(x)]
    return float(sum(v) / len(v)) if v else None


# Re-exported for CLI help and tests.
__all__ = ["CONFIG", "ContrastiveConfig", "GenerationParams", "read_prompts", "resolve_names", "run"]
