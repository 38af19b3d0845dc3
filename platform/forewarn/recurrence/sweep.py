"""A Ray Tune sweep over the trigger search's hyper-parameters; each trial is one GA run in its own actor.

Search space: population size, sequence length, mutation rate, crossover and fitness (``tune`` section).

Why Optuna (TPE) + ASHA, and not PBT: the space mixes categorical choices (crossover, fitness, population
size, sequence length) with a continuous mutation rate, and each trial is a whole GA run, so a model-based
searcher that learns from finished trials (TPE) spends the few trials a laptop affords better than a grid.
A GA run reports progress as it spends its budget, so ASHA can stop lagging configurations early; its time
axis is ``evaluations`` (target generations), which makes a 50-individual and a 16-individual run
comparable at a rung. PBT would clone and perturb running trials, but a sequence length or population size
cannot change mid-run without discarding the population, so its exploit step buys nothing here.

Every trial is logged to MLflow by Tune's ``MLflowLoggerCallback`` (one MLflow run per trial, params =
the trial config, metrics = each report).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from forewarn.errors import ConfigError, ForewarnError
from forewarn.recurrence.config import RecurrenceSweepConfig, SearchSection
from forewarn.recurrence.pool import TargetWorker, make_evaluator, search_vocab
from forewarn.recurrence.search import IterationLog, Search, SearchResult

METRIC, MODE = "score", "max"


def progress_score(res: SearchResult, budget: int, max_new_tokens: int) -> float:
    """One number comparable across fitness functions: above 1 once the goal is hit (higher = earlier), else
    half the best hit rate over contexts plus half the best length as a share of ``max_new_tokens`` (< 1)."""
    if res.found:
        return 1.0 + (1.0 - res.first_hit_evaluations / budget)
    evals = [e for _, _, e in res.evaluations]
    if not evals:
        return 0.0
    hit = max(e.hit_rate for e in evals)
    frac = max(e.recurrence.num_tokens for e in evals) / max_new_tokens
    return 0.5 * hit + 0.5 * min(frac, 1.0) * 0.999


def search_space(cfg: RecurrenceSweepConfig) -> dict[str, Any]:
    from ray import tune

    t = cfg.tune
    return {
        "pool_size": tune.choice(t.pool_size),
        "input_len": tune.choice(t.input_len),
        "mutation_rate": tune.uniform(*t.mutation_rate),
        "crossover": tune.choice(t.crossover),
        "fitness": tune.choice(t.fitness),
    }


def trial_search(base: SearchSection, params: dict[str, Any]) -> SearchSection:
    """The trial's search section: the base with the sampled values (validated like any config)."""
    return SearchSection.model_validate({**base.model_dump(), **params})


def make_trainable(cfg: RecurrenceSweepConfig, tokenizer_path: str) -> Any:
    """A Tune function trainable: the trial's own Ray actor (``trial_cpus`` CPUs) loads the target once and runs
    one GA. Generating in the trial actor, not in a second actor, halves the process and model start-ups that
    dominate short trials on a laptop."""

    def trainable(params: dict[str, Any]) -> None:
        from ray import tune
        from transformers import AutoTokenizer

        search = trial_search(cfg.search, params)
        budget = search.max_evaluations or search.iterations * search.pool_size * max(1, len(search.contexts))
        tok = AutoTokenizer.from_pretrained(tokenizer_path)
        worker = TargetWorker(cfg.target.model, cfg.params, cfg.tune.trial_cpus)  # torch threads = trial CPUs
        batch = cfg.target.resources.batch_size

        def generate(prompts: list[str]) -> list[tuple[str, list[int], str, float]]:
            return [
                row for i in range(0, len(prompts), batch) for row in worker.generate(prompts[i : i + batch])
            ]

        evaluate = make_evaluator(generate, tok, cfg.params, cfg.detect, search.contexts)

        def metrics(log: IterationLog, res: SearchResult) -> dict[str, Any]:
            return {
                METRIC: progress_score(res, budget, cfg.params.max_new_tokens),
                "evaluations": log.evaluations,
                "max_fitness": log.max_fitness,
                "max_tokens_generated": log.max_tokens_generated,
                "hits": log.hits,
                "found": float(res.found),
                "evaluations_to_first_hit": float(res.first_hit_evaluations or budget),
            }

        def report(log: IterationLog, res: SearchResult) -> None:
            tune.report(metrics(log, res))

        res = Search(
            search,
            search_vocab(tok, search.exclude_special_tokens),
            evaluate,
            method="ga",
            seed=cfg.seed,
            on_iteration=report,
        ).run()
        if res.iterations:  # a last report carries the triggers (a string: MLflow keeps only the numbers)
            triggers = [
                {"prompt": e.prompt, "token_ids": list(e.ids), "hit_rate": e.hit_rate}
                for e in res.triggers()[:10]
            ]
            tune.report({**metrics(res.iterations[-1], res), "triggers": json.dumps(triggers)})

    return trainable


def run_sweep(cfg: RecurrenceSweepConfig, storage: str | Path, tracking_uri: str) -> dict[str, Any]:
    """Run the sweep; returns the best config, its score and every trial's final metrics."""
    from ray import tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.basic_variant import BasicVariantGenerator

    t = cfg.tune
    for size in t.pool_size:  # fail before any Ray work, not inside a trial
        if int(size * cfg.search.selection_rate) < 1:
            raise ConfigError(
                f"tune.pool_size contains {size}: with search.selection_rate="
                f"{cfg.search.selection_rate} it keeps no parent; use sizes >= "
                f"{int(1 / cfg.search.selection_rate) + 1}"
            )
    budget = cfg.search.max_evaluations or cfg.search.iterations * max(t.pool_size)
    if t.searcher == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        searcher: Any = ConcurrencyLimiter(OptunaSearch(seed=cfg.seed), max_concurrent=t.max_concurrent)
    else:
        searcher = BasicVariantGenerator(random_state=cfg.seed, max_concurrent=t.max_concurrent)
    scheduler = (
        ASHAScheduler(
            time_attr="evaluations",
            max_t=budget,
            grace_period=t.grace_period * min(t.pool_size),
            reduction_factor=2,
        )
        if t.scheduler == "asha"
        else FIFOScheduler()
    )
    trainable = tune.with_resources(
        make_trainable(cfg, cfg.search.tokenizer or cfg.target.model.path),
        tune.PlacementGroupFactory([{"CPU": t.trial_cpus}]),
    )
    tuner = tune.Tuner(
        trainable,
        param_space=search_space(cfg),
        tune_config=tune.TuneConfig(
            metric=METRIC, mode=MODE, num_samples=t.num_samples, search_alg=searcher, scheduler=scheduler
        ),
        run_config=tune.RunConfig(
            name="trigger_sweep",
            storage_path=str(Path(storage).resolve()),
            verbose=1,
            callbacks=[
                MLflowLoggerCallback(
                    tracking_uri=tracking_uri,
                    experiment_name=t.experiment,
                    tags={"forewarn.job": "recurrence_sweep"},
                    save_artifact=False,
                )
            ],
        ),
    )
    grid = tuner.fit()
    errors = [str(r.error) for r in grid if r.error is not None]
    if errors and len(errors) == len(grid):
        raise ForewarnError(f"every sweep trial failed; first error: {errors[0]}")
    best = grid.get_best_result(metric=METRIC, mode=MODE, scope="all")
    trials = [
        {
            "config": r.config,
            **{k: r.metrics.get(k) for k in (METRIC, "evaluations", "found", "evaluations_to_first_hit")},
        }
        for r in grid
        if r.error is None
    ]
    return {
        "best_config": best.config,
        "best_triggers": json.loads(best.metrics.get("triggers") or "[]"),
        "best_score": best.metrics.get(METRIC),
        "best_found": bool(best.metrics.get("found")),
        "best_evaluations_to_first_hit": best.metrics.get("evaluations_to_first_hit"),
        "n_trials": len(grid),
        "n_errors": len(errors),
        "trials": trials,
    }
