"""Search results as tables: ``experiences``, ``best_records``, ``alg_log`` (Parquet, typed) plus CSV copies
with the original RecurrentGenerator column names first (extra columns after them), and the summary."""

from __future__ import annotations

import statistics
from typing import Any

import pandas as pd

from forewarn.pipeline.rundir import RunDir, atomic_path
from forewarn.records import AlgLogRow, BestRecordRow, ExperienceRow, rows_to_table, stable_id
from forewarn.recurrence.search import SearchResult

TABLES = {"experiences": ExperienceRow, "best_records": BestRecordRow, "alg_log": AlgLogRow}

# the original CSV columns (reference section 3), then ours
CSV_COLUMNS = {
    "experiences": [
        "iteration",
        "prompt",
        "response",
        "fitness",
        "tokens_generated",
        "time_taken",
        "time_per_token",
        "method",
        "seed",
        "evaluation",
        "hit",
        "hit_cap",
        "cycled",
        "period",
        "cycle_start",
    ],
    "best_records": [
        "iteration",
        "best_results",
        "average_fitness",
        "max_tokens_generated",
        "max_fitness",
        "method",
        "seed",
        "evaluations",
        "hits",
    ],
    "alg_log": [
        "first_iteration_to_hit_goal",
        "time_to_hit_goal",
        "method",
        "seed",
        "evaluations_to_hit_goal",
        "total_evaluations",
    ],
}


def result_rows(res: SearchResult, run_id: str) -> dict[str, list[Any]]:
    """The three tables' rows for one search."""
    exp = []
    for it, k, e in res.evaluations:
        r = e.recurrence
        exp.append(
            ExperienceRow(
                id=stable_id(res.method, res.seed, k),
                run_id=run_id,
                iteration=it,
                method=res.method,
                seed=res.seed,
                evaluation=k,
                token_ids=list(e.ids),
                prompt=e.prompt,
                response=e.response,
                response_token_ids=e.response_ids,
                tokens_generated=r.num_tokens,
                finish_reason=e.finish_reason,
                fitness=e.fitness,
                hit=e.hit,
                hit_cap=r.hit_cap,
                cycled=r.cycled,
                period=r.period,
                cycle_start=r.cycle_start,
                repeats=r.repeats,
                repeated_tokens=r.repeated_tokens,
                loop_share=r.loop_share,
                time_taken=e.seconds,
                time_per_token=e.seconds / max(1, r.num_tokens),
            )
        )
    best = [
        BestRecordRow(
            run_id=run_id,
            iteration=log.iteration,
            method=res.method,
            seed=res.seed,
            best_prompts=[p for p, _ in log.best],
            best_fitness=[f for _, f in log.best],
            average_fitness=log.average_fitness,
            max_fitness=log.max_fitness,
            max_tokens_generated=log.max_tokens_generated,
            evaluations=log.evaluations,
            hits=log.hits,
        )
        for log in res.iterations
    ]
    alg = [
        AlgLogRow(
            run_id=run_id,
            method=res.method,
            seed=res.seed,
            first_iteration_to_hit_goal=res.first_hit_iteration,
            evaluations_to_hit_goal=res.first_hit_evaluations,
            time_to_hit_goal=res.first_hit_seconds,
            total_evaluations=res.total_evaluations,
            seconds=res.seconds,
        )
    ]
    return {"experiences": exp, "best_records": best, "alg_log": alg}


def write_tables(rundir: RunDir, rows: dict[str, list[Any]]) -> None:
    """Write each table as Parquet and as a CSV with the original column names first."""
    for name, record in TABLES.items():
        table = rows_to_table(record, rows[name])
        rundir.write_table(name, table)
        df = table.to_pandas()
        if name == "best_records":
            df["best_results"] = [list(zip(p, f)) for p, f in zip(df["best_prompts"], df["best_fitness"])]
        with atomic_path(rundir.path(f"{name}.csv")) as tmp:
            df[CSV_COLUMNS[name]].to_csv(tmp, index=False)


def median_to_hit(results: list[SearchResult], budget: int | None) -> tuple[float | None, int]:
    """Median target generations to the first hit; a search that never hit counts as its whole budget
    (a lower bound, so a ratio against it is conservative). Returns (median, number of censored runs)."""
    values, censored = [], 0
    for r in results:
        if r.first_hit_evaluations is not None:
            values.append(r.first_hit_evaluations)
        else:
            censored += 1
            values.append(budget if budget is not None else r.total_evaluations)
    return (float(statistics.median(values)) if values else None), censored


def summarize(results: list[SearchResult], budget: int | None) -> dict[str, Any]:
    """Per-method medians, hit counts and the random/GA ratio; the best GA triggers."""
    out: dict[str, Any] = {"budget_evaluations": budget, "methods": {}}
    for method in sorted({r.method for r in results}):
        rs = [r for r in results if r.method == method]
        med, censored = median_to_hit(rs, budget)
        out["methods"][method] = {
            "seeds": [r.seed for r in rs],
            "evaluations_to_first_hit": [r.first_hit_evaluations for r in rs],
            "iterations_to_first_hit": [r.first_hit_iteration for r in rs],
            "found": sum(r.found for r in rs),
            "median_evaluations_to_first_hit": med,
            "censored": censored,
            "total_evaluations": sum(r.total_evaluations for r in rs),
        }
    m = out["methods"]
    if "ga" in m and "random" in m and m["ga"]["median_evaluations_to_first_hit"]:
        out["speedup_random_over_ga"] = round(
            m["random"]["median_evaluations_to_first_hit"] / m["ga"]["median_evaluations_to_first_hit"], 3
        )
    triggers = [e for r in results if r.method == "ga" for e in r.triggers()]
    out["triggers"] = [
        {
            "prompt": e.prompt,
            "token_ids": list(e.ids),
            "tokens_generated": e.recurrence.num_tokens,
            "period": e.recurrence.period,
            "fitness": e.fitness,
        }
        for e in triggers[:10]
    ]
    return out


def fitness_figure(results: list[SearchResult]) -> Any:
    """Max fitness against target generations spent, one line per (method, seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        df = pd.DataFrame([(log.evaluations, log.max_fitness) for log in r.iterations], columns=["e", "f"])
        ax.plot(
            df["e"],
            df["f"].cummax(),
            color="C0" if r.method == "ga" else "C1",
            alpha=0.7,
            label=f"{r.method} seed {r.seed}",
        )
    ax.set_xlabel("target generations")
    ax.set_ylabel("best fitness so far")
    ax.legend(fontsize=6)
    fig.tight_layout()
    return fig
