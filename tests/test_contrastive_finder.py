"""The divergence finder: the openai assistant path against a local OpenAI-compatible server, Ray Data
scoring, the job end to end, and the testbed must-show (planted topics found by divergence)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from transformers import AutoTokenizer
from typer.testing import CliRunner

from forewarn.config import GenerationParams, ModelSpec
from forewarn.contrastive.config import DecoderConfig, FinderConfig
from forewarn.contrastive.decoder import ContrastiveDecoder
from forewarn.contrastive.finder import DivergenceFinder
from forewarn.contrastive.scoring import LocalScorer
from forewarn.contrastive.scripted import ScriptedRecombiner
from forewarn.models.openai_api import OpenAIGenerator
from forewarn.models.tiny import new_model
from forewarn.testing.openai_server import OpenAIServer, ServerRequest


@pytest.fixture(scope="module")
def tiny_pair(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelSpec, ModelSpec]:
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    out = tmp_path_factory.mktemp("tiny-llama-cmp")
    new_model("llama", tok, seed=11).save_pretrained(out)
    tok.save_pretrained(out)
    return ModelSpec(path=str(tiny_llama_dir), device="cpu"), ModelSpec(path=str(out), device="cpu")


def test_openai_assistant_path_with_malformed_answers_diversity_and_criterion(tiny_pair):
    import torch

    from forewarn.models.embed import Embedder

    torch.set_num_threads(1)
    templates = ["Tell me about {e}.", "Why do people like {e}?", "What is {e} made of?"]
    recombiner = ScriptedRecombiner(templates, malformed=1, k=5)

    def responder(req: ServerRequest) -> str:
        system = next((m["content"] for m in req.prompt if m["role"] == "system"), "")
        if system.startswith("Answer yes or no"):
            return "Yes." if "bread" in req.text else "No."
        return recombiner(req)

    decoder = ContrastiveDecoder.from_specs(*tiny_pair, DecoderConfig(temperature=0.0, max_new_tokens=6))
    cfg = FinderConfig(
        n_cycles=3,
        subsample_size=4,
        diversity_weight=1.0,
        criterion_in_subsample=True,
        criterion="Answer yes or no: is this prompt about food?",
        assistant_params=GenerationParams(max_new_tokens=200, temperature=1.0, seed=1),
    )
    seeds = [
        "Tell me about bread.",
        "Why do people like rivers?",
        "What is glass made of?",
        "Tell me about cats.",
    ]
    with OpenAIServer(responder, model="scripted-recombiner") as server:
        assistant = OpenAIGenerator(
            ModelSpec(
                backend="openai", path="scripted-recombiner", base_url=server.base_url, api_key_env="EMPTY"
            )
        )
        finder = DivergenceFinder(assistant, LocalScorer(decoder), cfg, embedder=Embedder(), progress=False)
        result = finder.run(seeds)
        logged = server.requests
    # the malformed first answer was logged and skipped; three counted cycles followed
    assert len(result.malformed) == 1 and "no JSON" in result.malformed[0]["reason"]
    assert [c["cycle"] for c in result.cycles] == [1, 2, 3] and result.cycles[0]["attempts"] == 2
    proposed = [e for e in result.entries if e.source == "assistant"]
    assert proposed and all(e.cycle in (1, 2, 3) for e in proposed)
    assert len({e.prompt for e in result.entries}) == len(result.entries)  # no duplicates enter the bank
    # the assistant saw system + user messages listing bank prompts with rescaled scores
    chat = [
        r for r in logged if r.path.endswith("/chat/completions") and "divergence 1:" in json.dumps(r.body)
    ]
    assert chat and chat[0].body["messages"][0]["role"] == "system"
    assert all(e.criterion in (0.0, 1.0) for e in proposed)
    assert any(e.criterion == 1.0 for e in proposed) == any("bread" in e.prompt for e in proposed)
    assert all(e.diversity is not None and e.diversity > 0 for e in result.entries)
    assert all(math.isfinite(e.divergence) and e.divergence >= 0 for e in result.entries)
    # every cycle row carries the bank statistics
    assert result.cycles[-1]["bank_size"] == len(seeds) + len(proposed)


# ---------------------------------------------------------------- the testbed


@pytest.fixture(scope="module")
def small_world():
    from forewarn.testbed import build_testbed

    return build_testbed(size="small")


@pytest.mark.usefixtures("ray_local")
@pytest.mark.slow
def test_finder_finds_planted_topics_on_testbed(small_world, tmp_path: Path, mlflow_uri: str):
    """Must-show: of the 10 proposed prompts ranked highest by KL(target || patched), >= 8 are on planted
    topics after 2 cycles (at most 5 allowed). Assistant: forewarn.contrastive.scripted.ScriptedRecombiner
    through the openai client."""
    from forewarn.contrastive.job import ContrastiveConfig
    from forewarn.runner import run_job
    from forewarn.testbed.world import HELDOUT_TEMPLATES, TRAIN_TEMPLATES

    m = small_world
    rows = m.read_jsonl("heldout_benign") + m.read_jsonl("heldout_planted")
    seeds = {}
    for r in rows:  # one seed per topic of the world: 2 of the 10 topics are planted
        seeds.setdefault(r["topic"], r["prompt"])
    seed_file = tmp_path / "seeds.jsonl"
    seed_file.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in seeds.values()))
    recombiner = ScriptedRecombiner(TRAIN_TEMPLATES + HELDOUT_TEMPLATES, malformed=1)
    with OpenAIServer(recombiner, model="recombiner") as server:
        cfg = ContrastiveConfig.model_validate(
            {
                "output_dir": str(tmp_path / "run"),
                "mode": "find",
                "prompts": str(seed_file),
                "start": {"model": {"path": "testbed:target@small"}},
                "comparison": {"model": {"path": "testbed:patched_target@small"}},
                "scoring": {"num_cpus": 1, "replicas": 2, "batch_size": 8},
                "decoder": {"temperature": 0.0, "max_new_tokens": 20},
                "assistant": {
                    "model": {
                        "backend": "openai",
                        "path": "recombiner",
                        "base_url": server.base_url,
                        "api_key_env": "EMPTY",
                    }
                },
                "finder": {
                    "n_cycles": 2,
                    "subsample_size": 10,
                    "requests_per_cycle": 2,
                    "assistant_params": {"temperature": 1.0, "max_new_tokens": 400, "seed": 0},
                },
            }
        )
        summary = run_job("contrastive", cfg, quiet=True)
    out = tmp_path / "run"
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["top10_planted"] == summary["top10_planted"]
    assert summary["top10_planted"] >= 8, summary["top"][:10]
    assert len(summary["per_cycle"]) == 2 and summary["n_malformed"] == 1
    # the scoring pool's 2 actors loaded both models once each, for the seeds and both cycles (three scorings)
    scoring = summary["timing"]["roles"]["scoring"]
    assert scoring["loads"] == 2 and scoring["calls"] >= 3, scoring
    assert summary["divergence"] == "KL(P_start || P_comparison)"
    for name in ("prompts", "samples", "cycles"):
        assert (out / f"{name}.parquet").is_file()
    html = (out / "report.html").read_text()
    assert html.count('class="tok"') > 100 and "KL(P_start || P_comparison)" in html
    assert summary.get("mlflow_run_id")
    # the Ray Data actor pool (2 actors, batches of 8) scored exactly what one local decoder scores
    import pyarrow.parquet as pq

    ranked = pq.read_table(out / "prompts.parquet").to_pylist()
    picks = [ranked[0], ranked[len(ranked) // 2], ranked[-1]]
    local = ContrastiveDecoder.from_specs(
        ModelSpec(path=str(m.path("target"))),
        ModelSpec(path=str(m.path("patched_target"))),
        DecoderConfig(temperature=0.0, max_new_tokens=20),
    ).decode([r["prompt"] for r in picks])
    for row, s in zip(picks, local):
        assert row["divergence"] == pytest.approx(s.divergence_mean, abs=1e-5)
    assert ranked[0]["divergence"] >= ranked[-1]["divergence"] and ranked[0]["rank"] == 1
    shown = CliRunner().invoke(
        __import__("forewarn.cli", fromlist=["app"]).app, ["contrastive", "show", str(out), "--top", "3"]
    )
    assert shown.exit_code == 0, shown.output
    assert "top 3 continuations" in shown.output and "top10_planted" in shown.output


def test_cli_config_errors_exit_2(tmp_path: Path):
    from forewarn.cli import app

    bad = CliRunner().invoke(
        app,
        ["contrastive", "decode", "--set", "decoder.start_top_p=0.9", "--output-dir", str(tmp_path / "x")],
    )
    assert bad.exit_code == 2 and "start_top_p" in bad.output and "Traceback" not in bad.output
    missing = CliRunner().invoke(app, ["contrastive", "show", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "samples.parquet" in missing.output
