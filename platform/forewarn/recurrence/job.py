"""The ``recurrence_search`` job: GA and random search for loop triggers, with the same budget, over seeds.

    python jobs/recurrence_search.py --set seeds=[0,1,2,3,4] --set search.max_evaluations=2000

Loads the config, starts a target actor pool, runs every (seed, method) search, writes ``experiences``,
``best_records`` and ``alg_log`` (Parquet + CSV), and a summary with the median target generations to the
first hit per method and the random/GA ratio. Per-iteration metrics and a fitness plot go to MLflow.
"""

from __future__ import annotations

import time
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from forewarn.pipeline.rundir import RunDir
from forewarn.recurrence.config import RecurrenceSearchConfig
from forewarn.recurrence.pool import TargetPool, make_evaluator, search_vocab
from forewarn.recurrence.search import IterationLog, Search, SearchResult
from forewarn.recurrence.tables import fitness_figure, result_rows, summarize, write_tables

CONFIG = RecurrenceSearchConfig


def resolve_names(cfg: Any) -> Any:
    """Map ``testbed:<name>`` model paths to local folders (job files resolve names; the library takes paths)."""
    cfg = cfg.model_copy(deep=True)
    # lazy: loads sklearn, torch, transformers only when called
    from forewarn.names import resolve_model

    cfg.target.model.path = resolve_model(cfg.target.model.path)
    return cfg


def load_tokenizer(cfg: Any) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(cfg.search.tokenizer or cfg.target.model.path)


def run_searches(
    cfg: RecurrenceSearchConfig,
    generate: Any,
    tokenizer: Any,
    tracker: Any,
    show_progress: bool = True,
    seconds: dict[str, float] | None = None,
) -> list[SearchResult]:
    """Every (seed, method) search against one ``generate`` callable, with a progress bar per search;
    ``seconds`` (if given) gets each search's wall time under ``"<method>.seed<seed>"``."""
    evaluate = make_evaluator(generate, tokenizer, cfg.params, cfg.detect, cfg.search.contexts)
    vocab = search_vocab(tokenizer, cfg.search.exclude_special_tokens)
    results = []
    total = cfg.search.max_evaluations or cfg.search.iterations * cfg.search.pool_size
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, disable=not show_progress) as bar:
        for seed in cfg.seeds:
            for method in cfg.methods:
                task = bar.add_task(f"{method} seed {seed}", total=total)

                def on_iteration(
                    log: IterationLog,
                    res: SearchResult,
                    task: Any = task,
                    method: str = method,
                    seed: int = seed,
                ) -> None:
                    bar.update(task, completed=log.evaluations)
                    tracker.log_metrics(
                        {
                            f"{method}.seed{seed}.max_fitness": log.max_fitness,
                            f"{method}.seed{seed}.max_tokens": log.max_tokens_generated,
                            f"{method}.seed{seed}.hits": log.hits,
                        },
                        step=log.evaluations,
                    )

                start = time.perf_counter()
                res = Search(
                    cfg.search, vocab, evaluate, method=method, seed=seed, on_iteration=on_iteration
                ).run()
                if seconds is not None:
                    seconds[f"{method}.seed{seed}"] = round(time.perf_counter() - start, 3)
                bar.update(task, completed=total)
                results.append(res)
    return results


def run(cfg: RecurrenceSearchConfig, rundir: RunDir, tracker: Any) -> dict:
    cfg = resolve_names(cfg)
    tokenizer = load_tokenizer(cfg)
    pool = TargetPool(cfg.target, cfg.params)
    searches: dict[str, float] = {}
    try:
        results = run_searches(cfg, pool.generate, tokenizer, tracker, seconds=searches)
    finally:
        pool.close()
    # where the time went: the target pool (loaded once for every search) and each search's wall time
    timing = {"roles": {"target": pool.pool.stats.as_dict()}, "searches_s": searches}
    run_id = tracker.run_id or rundir.root.name
    rows: dict[str, list] = {"experiences": [], "best_records": [], "alg_log": []}
    for res in results:
        for name, part in result_rows(res, run_id).items():
            rows[name].extend(part)
    write_tables(rundir, rows)
    summary = summarize(results, cfg.search.max_evaluations) | {"timing": timing}
    tracker.log_metrics(
        {f"role/target/{k}": v for k, v in timing["roles"]["target"].items()}
        | {f"time/search/{k}": v for k, v in searches.items()}
    )
    for method, m in summary["methods"].items():
        if m["median_evaluations_to_first_hit"] is not None:
            tracker.log_metrics(
                {
                    f"{method}.median_evaluations_to_first_hit": m["median_evaluations_to_first_hit"],
                    f"{method}.found": m["found"],
                }
            )
    if "speedup_random_over_ga" in summary:
        tracker.log_metrics({"speedup_random_over_ga": summary["speedup_random_over_ga"]})
    tracker.log_figure(fitness_figure(results), "fitness.png")
    for name in ("experiences", "best_records", "alg_log"):
        tracker.log_artifact(rundir.path(f"{name}.parquet"), "tables")
        tracker.log_artifact(rundir.path(f"{name}.csv"), "csv")
    return summary
