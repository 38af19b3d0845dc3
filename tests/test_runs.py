"""`forewarn runs compare`: the headline metrics of an experiment's recent runs, read back from a real MLflow
store that forewarn's own tracker wrote (tags: job, config hash, git commit, models, testbed)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from forewarn.cli import app
from forewarn.config import TrackingConfig, config_hash
from forewarn.errors import ConfigError
from forewarn.runner import resolve
from forewarn.runs import compare, render
from forewarn.tracking import make_tracker


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[dict]]:
    """Three reversegen runs and one generate run, logged the way jobs log them."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('runs') / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:  # whatever an earlier test left in the env, log to this store
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        return uri, _log_runs(uri)


def _log_runs(uri: str) -> list[dict]:
    logged = []
    for i, asr in enumerate([0.10, 0.25, 0.40]):
        cfg = resolve("reversegen", None, [f"iterations={i + 1}"])
        tracking = TrackingConfig(tracking_uri=uri, run_name=f"rg-{i}")
        with make_tracker(tracking, "reversegen", cfg) as t:
            t.set_tags(
                {
                    "forewarn.model.target": "/cache/forewarn/testbed/v1-small-seed0/target",
                    "forewarn.model.proposer": "openlm-research/open_llama_3b_v2",
                    "forewarn.testbed": "1/small/seed0",
                }
            )
            for k in range(i + 1):
                t.log_metrics({"asr": asr * (k + 1) / (i + 1)}, step=k)
            t.log_metrics(
                {
                    "final_asr": asr,
                    "final_self_bleu": 0.3 - 0.05 * i,
                    "planted_recall": i / 2,
                    "n_instructions_total": 100.0,
                }
            )
        logged.append({"run_id": t.run_id, "config_hash": config_hash(cfg), "final_asr": asr})
    gen = resolve("generate")
    with make_tracker(
        TrackingConfig(tracking_uri=uri, experiment="forewarn-reversegen"), "generate", gen
    ) as t:
        t.log_metrics({"n_generations": 12.0, "tokens": 340.0})
    logged.append({"run_id": t.run_id})
    return logged


def test_compare_lists_recent_runs_newest_first_with_headline_metrics(store) -> None:
    uri, logged = store
    df = compare("reversegen", tracking_uri=uri)  # a job name finds forewarn-reversegen
    assert list(df["run_id"]) == [r["run_id"] for r in reversed(logged)]
    rg = df[df["job"] == "reversegen"].set_index("run_id")
    for r in logged[:3]:
        assert rg.loc[r["run_id"], "final_asr"] == pytest.approx(r["final_asr"])
        assert rg.loc[r["run_id"], "config_hash"] == r["config_hash"]
    assert rg["testbed"].tolist() == ["1/small/seed0"] * 3
    assert rg["models"].iloc[0] == "proposer=openlm-research/open_llama_3b_v2, target=v1-small-seed0/target"
    assert rg["git_commit"].str.len().max() <= 10
    assert "n_instructions_total" not in df.columns  # headline metrics only, not every metric
    metrics = [
        c
        for c in df.columns
        if c in ("final_asr", "final_self_bleu", "planted_recall", "n_generations", "tokens")
    ]
    assert metrics == [
        "final_asr",
        "final_self_bleu",
        "planted_recall",
        "n_generations",
        "tokens",
    ]  # main job first
    gen_row = df[df["job"] == "generate"].iloc[0]
    assert gen_row["n_generations"] == 12.0 and pd.isna(gen_row["final_asr"])  # a generate run has no ASR


def test_compare_takes_metric_patterns_and_a_limit(store) -> None:
    uri, logged = store
    df = compare("forewarn-reversegen", tracking_uri=uri, max_runs=2, metrics=["final_*", "asr"])
    assert len(df) == 2 and list(df["run_id"]) == [logged[3]["run_id"], logged[2]["run_id"]]
    assert [c for c in df.columns if c.startswith("final_") or c == "asr"] == [
        "final_asr",
        "final_self_bleu",
        "asr",
    ]
    assert df.iloc[1]["asr"] == pytest.approx(0.40)  # the last logged value of a per-step metric


def test_unknown_experiment_names_the_ones_that_exist(store) -> None:
    uri, _ = store
    with pytest.raises(
        ConfigError, match="experiment 'nope' .* does not exist .* experiments: .*forewarn-reversegen"
    ):
        compare("nope", tracking_uri=uri)


def test_cli_prints_a_table_and_json(store) -> None:
    uri, logged = store
    out = CliRunner().invoke(app, ["runs", "compare", "reversegen", "--tracking-uri", uri])
    assert out.exit_code == 0, out.output
    assert "4 most recent runs" in out.output and "final_asr" in out.output
    assert all(r["run_id"][:8] in out.output for r in logged) and "0.4" in out.output
    js = CliRunner().invoke(
        app, ["runs", "compare", "reversegen", "--tracking-uri", uri, "--json", "-m", "final_asr"]
    )
    rows = json.loads(js.output)
    assert [r["final_asr"] for r in rows if r["job"] == "reversegen"] == [0.4, 0.25, 0.1]
    bad = CliRunner().invoke(app, ["runs", "compare", "nope", "--tracking-uri", uri])
    assert bad.exit_code == 2 and "does not exist" in bad.output


def test_render_shows_missing_values_as_dashes(store) -> None:
    uri, _ = store
    text = render(compare("reversegen", tracking_uri=uri), "t")
    generate_line = next(line for line in text.splitlines() if "generate" in line)
    assert "-" in generate_line and "12" in generate_line
