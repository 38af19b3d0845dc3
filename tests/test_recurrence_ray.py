"""Recurrence on a real local Ray (2 CPUs): the target actor pool, the search job's outputs, the Tune sweep."""

from __future__ import annotations

import csv
import json

import pytest

from forewarn.config import build_config
from forewarn.pipeline.rundir import RunDir
from forewarn.recurrence import job as search_job
from forewarn.recurrence.config import RecurrenceSearchConfig, RecurrenceSweepConfig
from forewarn.recurrence.sweep import run_sweep
from forewarn.tracking import NullTracker


@pytest.fixture(scope="module")
def ray2(ray_local):
    return None


def search_cfg(model_dir, out, **search) -> RecurrenceSearchConfig:
    return build_config(
        RecurrenceSearchConfig,
        {
            "output_dir": str(out),
            "tracking": {"enabled": False},
            "target": {
                "model": {"path": str(model_dir)},
                "resources": {"num_cpus": 1, "replicas": 2, "batch_size": 4},
            },
            "params": {"max_new_tokens": 16},
            "search": {
                "pool_size": 6,
                "input_len": 4,
                "iterations": 3,
                "selection_rate": 0.5,
                "terminate_if_found": False,
                **search,
            },
            "methods": ["ga", "random"],
            "seeds": [0, 1],
        },
    )


def test_search_job_writes_tables_csvs_and_summary(ray2, tiny_llama_dir, tmp_path):
    cfg = search_cfg(tiny_llama_dir, tmp_path / "run", max_evaluations=12)
    rd = RunDir(cfg.output_dir)
    summary = search_job.run(cfg, rd, NullTracker())
    exp = rd.read_table("experiences").to_pylist()
    # two methods x two seeds, each within its 12-generation budget
    for method in ("ga", "random"):
        for seed in (0, 1):
            rows = [r for r in exp if r["method"] == method and r["seed"] == seed]
            assert 0 < len(rows) <= 12 and [r["evaluation"] for r in rows] == list(range(1, len(rows) + 1))
    r = exp[0]
    assert r["tokens_generated"] == len(r["response_token_ids"]) <= 16 and len(r["token_ids"]) == 4
    # goal 'both': a hit is exactly a loop that ran to the cap
    assert all(
        x["hit"]
        == (x["hit_cap"] and (x["cycled"] or (x["tokens_generated"] >= 24 and x["loop_share"] >= 0.7)))
        for x in exp
    )
    with open(rd.path("experiences.csv")) as f:
        header = next(csv.reader(f))
    assert header[:7] == [
        "iteration",
        "prompt",
        "response",
        "fitness",
        "tokens_generated",
        "time_taken",
        "time_per_token",
    ]
    with open(rd.path("best_records.csv")) as f:
        assert next(csv.reader(f))[:4] == [
            "iteration",
            "best_results",
            "average_fitness",
            "max_tokens_generated",
        ]
    alg = rd.read_table("alg_log").to_pylist()
    assert len(alg) == 4 and {a["method"] for a in alg} == {"ga", "random"}
    assert set(summary["methods"]) == {"ga", "random"} and summary["budget_evaluations"] == 12
    for m in summary["methods"].values():
        assert len(m["evaluations_to_first_hit"]) == 2
    # one target pool for all four searches: its actors loaded the model once each; every search timed
    timing = summary["timing"]
    assert timing["roles"]["target"]["loads"] == cfg.target.resources.replicas, timing
    assert set(timing["searches_s"]) == {f"{m}.seed{s}" for m in ("ga", "random") for s in (0, 1)}
    json.dumps(summary)  # summary.json must serialise


def test_contexts_cost_one_generation_each(ray2, tiny_llama_dir, tmp_path):
    cfg = search_cfg(
        tiny_llama_dir,
        tmp_path / "ctx",
        max_evaluations=24,
        contexts=["Tell me about {trigger}.", "{trigger} is what?"],
        hit_fraction=0.5,
    )
    cfg = cfg.model_copy(update={"methods": ["ga"], "seeds": [0]})
    rd = RunDir(cfg.output_dir)
    search_job.run(cfg, rd, NullTracker())
    exp = rd.read_table("experiences").to_pylist()
    assert len(exp) == 12 and exp[-1]["evaluation"] == 24  # 12 individuals x 2 contexts
    assert exp[0]["prompt"].startswith("Tell me about ")


@pytest.mark.slow
def test_tune_sweep_runs_four_trials_and_logs_each_to_mlflow(ray2, tiny_llama_dir, tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = build_config(
        RecurrenceSweepConfig,
        {
            "target": {"model": {"path": str(tiny_llama_dir)}},
            "params": {"max_new_tokens": 12},
            "search": {"iterations": 3, "max_evaluations": 24, "terminate_if_found": False},
            "tune": {
                "num_samples": 4,
                "max_concurrent": 2,
                "pool_size": [6, 8],
                "input_len": [4],
                "experiment": "sweep-test",
                "grace_period": 1,
            },
        },
    )
    out = run_sweep(cfg, tmp_path / "tune", uri)
    assert out["n_trials"] == 4 and out["n_errors"] == 0
    assert set(out["best_config"]) == {"pool_size", "input_len", "mutation_rate", "crossover", "fitness"}
    assert isinstance(out["best_triggers"], list)
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["sweep-test"])
    assert len(runs) == 4 and set(runs["status"]) == {"FINISHED"}
    assert runs["metrics.score"].notna().all() and runs["params.crossover"].notna().all()


def test_sweep_rejects_a_pool_size_that_keeps_no_parent(tiny_llama_dir, tmp_path):
    from forewarn.errors import ConfigError

    cfg = build_config(
        RecurrenceSweepConfig,
        {"target": {"model": {"path": str(tiny_llama_dir)}}, "tune": {"pool_size": [4, 8]}},
    )
    with pytest.raises(ConfigError, match="tune.pool_size contains 4"):
        run_sweep(cfg, tmp_path / "tune", f"sqlite:///{tmp_path / 'm.db'}")
