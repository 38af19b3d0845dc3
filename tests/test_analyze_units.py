"""Divergence analysis, the parts that need no models: the test statistics and verdict rule, parsing of
analyst answers, the analyst client (re-asks, budget, failing endpoints) against a real local
OpenAI-compatible server, the knowledge base round trip, topic summaries and CLI errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from forewarn.analyze.analyst import (
    Analyst,
    AnalystUnavailable,
    Budget,
    BudgetExhausted,
    MalformedAnswer,
    PromptSet,
    count_tokens,
    parse_hypotheses,
    parse_summary,
    parse_topic_ratings,
)
from forewarn.analyze.config import AnalystConfig, BudgetConfig, ExperimentConfig, TopicConfig
from forewarn.analyze.kb import KnowledgeBase, auc, evaluate, is_tested
from forewarn.analyze.source import Example, check_ref
from forewarn.analyze.topics import summarise
from forewarn.config import GenerationParams, ModelSpec
from forewarn.errors import ConfigError
from forewarn.models.openai_api import OpenAIGenerator
from forewarn.records import EvidenceRow
from forewarn.testing.openai_server import OpenAIServer
from typer.testing import CliRunner

EXP = ExperimentConfig()


def _hyp(n_test: int = 4, n_control: int = 4, **kw) -> dict:
    return {
        "hypothesis": "Models differ on X.",
        "topic": "x",
        "test_prompts": [f"t{i}" for i in range(n_test)],
        "control_prompts": [f"c{i}" for i in range(n_control)],
        **kw,
    }


# ---------------------------------------------------------------- statistics


def test_auc_counts_ties_half_and_matches_mann_whitney():
    from scipy.stats import mannwhitneyu

    t, c = np.array([3.0, 2.0, 2.0, 5.0]), np.array([1.0, 2.0, 0.5])
    assert auc(t, c) == pytest.approx(mannwhitneyu(t, c).statistic / (len(t) * len(c)))
    assert auc(np.array([1.0]), np.array([1.0])) == 0.5


def test_verdicts_supported_refuted_inconclusive_and_too_few():
    rng = np.random.default_rng(0)
    separated = evaluate(list(rng.normal(3, 0.5, 12)), list(rng.normal(0, 0.5, 12)), EXP)
    assert separated["status"] == "supported" and separated["auc"] > 0.95 and separated["p_value"] < 1e-3
    same = evaluate(list(rng.normal(0, 1, 40)), list(rng.normal(0, 1, 40)), EXP)
    assert same["status"] == "refuted" and same["auc_upper"] < EXP.min_auc and "upper bound" in same["note"]
    # lower divergence on the test prompts is evidence against the hypothesis, never for it
    reversed_ = evaluate(list(rng.normal(0, 0.5, 12)), list(rng.normal(3, 0.5, 12)), EXP)
    assert reversed_["status"] == "refuted" and reversed_["auc"] < 0.1
    small = evaluate([0.3, 0.1, 0.5, 0.2], [0.2, 0.4, 0.1, 0.3], EXP)
    assert small["status"] == "proposed" and small["note"].startswith("inconclusive")
    few = evaluate([1.0, 2.0, float("nan")], [0.0, 0.1, 0.2, 0.3], EXP)
    assert few["status"] == "proposed" and "too few" in few["note"] and few["n_test"] == 2


# ---------------------------------------------------------------- parsing


def test_parse_hypotheses_formats_and_validation():
    wrapped = "Sure!\n```json\n" + json.dumps({"hypotheses": [_hyp(), _hyp(hypothesis="Second.")]}) + "\n```"
    got, why = parse_hypotheses(wrapped, k=1, exp=EXP)
    assert why is None and len(got) == 1 and got[0].test_prompts == ["t0", "t1", "t2", "t3"]
    bare, why = parse_hypotheses(json.dumps([_hyp()]), k=3, exp=EXP)
    assert why is None and bare[0].hypothesis == "Models differ on X."
    single, _ = parse_hypotheses(json.dumps(_hyp()), k=3, exp=EXP)
    assert single and single[0].topic == "x"
    # a prompt in both arms is dropped from the controls; duplicates (case, spacing) count once
    h = _hyp(control_prompts=["t0", "c1", "C1 ", "c2", "c3", "c4"])
    (p,), _ = parse_hypotheses(json.dumps({"hypotheses": [h]}), k=3, exp=EXP)
    assert p.control_prompts == ["c1", "c2", "c3", "c4"]
    none, why = parse_hypotheses("I think they differ a lot.", k=3, exp=EXP)
    assert none is None and "no JSON object" in why
    short, why = parse_hypotheses(
        json.dumps({"hypotheses": [_hyp(n_control=2), {"topic": "y"}]}), k=3, exp=EXP
    )
    assert short is None and "4 test and 2 control" in why and "no 'hypothesis' text" in why


def test_parse_topic_ratings_and_summary():
    text = json.dumps(
        {"ratings": {"1": {"a": 10, "b": 0}, "2": {"a": 5, "b": "high"}}, "summaries": {"a": "differs on a"}}
    )
    (grid, notes), why = parse_topic_ratings(text, 2, ["a", "b"])
    assert why is None and grid[0] == [1.0, 0.0] and grid[1][0] == 0.5 and np.isnan(grid[1][1])
    assert notes == {"a": "differs on a", "b": ""}
    assert parse_topic_ratings('{"ratings": {}}', 2, ["a"])[0] is None
    assert parse_summary('{"summary": " ok "}') == ("ok", None) and parse_summary("nope")[0] is None


def test_topic_summary_compares_on_topic_divergence():
    ex = [Example(prompt=f"p{i}", divergence=d, response="") for i, d in enumerate([2.0, 1.8, 0.1, 0.2, 0.1])]
    rel = np.array([[0.9, 0.0], [0.8, 0.1], [0.1, 0.7], [0.0, 0.6], [0.2, 0.9]])
    rows = summarise(ex, ["hot", "cold"], rel, TopicConfig(topics=["hot", "cold"]))
    hot = next(r for r in rows if r["topic"] == "hot")
    assert (
        rows[0]["topic"] == "hot"
        and hot["n_relevant"] == 2
        and hot["divergence_relevant"] == pytest.approx(1.9)
    )
    assert hot["spearman"] > 0.6 and hot["top_examples"][:2] == ["p0", "p1"]


# ---------------------------------------------------------------- the analyst client


def _client(server: OpenAIServer, **spec) -> OpenAIGenerator:
    return OpenAIGenerator(
        ModelSpec(backend="openai", path=server.model, base_url=server.base_url, api_key_env="EMPTY", **spec),
        backoff_s=0.01,
    )


def _analyst(
    server: OpenAIServer, retries: int = 1, max_calls: int = 10, max_tokens: int = 100_000, **spec
) -> Analyst:
    cfg = AnalystConfig(max_parse_retries=retries, params=GenerationParams(max_new_tokens=100, seed=0))
    return Analyst(
        _client(server, **spec),
        cfg,
        Budget(BudgetConfig(max_calls=max_calls, max_tokens=max_tokens)),
        PromptSet.load(),
    )


def test_malformed_answer_is_reasked_with_the_reason_then_given_up():
    answers = iter(["no idea", json.dumps({"summary": "fine"})])
    with OpenAIServer(lambda req: next(answers), model="a") as server:
        analyst = _analyst(server)
        assert analyst.ask([{"role": "user", "content": "hi"}], parse_summary, "conclude") == "fine"
        second = server.requests[1].body["messages"]
    assert [m["role"] for m in second] == ["user", "assistant", "user"] and second[1]["content"] == "no idea"
    assert "could not be used" in second[2]["content"] and '"summary"' in second[2]["content"]
    assert analyst.malformed[0]["reason"].startswith("no JSON object") and analyst.budget.calls == 2
    with OpenAIServer(lambda req: "still no idea", model="a") as server:
        analyst = _analyst(server, retries=2)
        with pytest.raises(MalformedAnswer, match="3 malformed answers"):
            analyst.ask([{"role": "user", "content": "hi"}], parse_summary, "conclude")
        assert len(server.requests) == 3


def test_budget_is_checked_before_each_call():
    with OpenAIServer(lambda req: json.dumps({"summary": "x " * 50}), model="a") as server:
        analyst = _analyst(server, max_calls=1)
        analyst.ask([{"role": "user", "content": "hi"}], parse_summary, "conclude")
        with pytest.raises(BudgetExhausted, match="max_calls=1"):
            analyst.ask([{"role": "user", "content": "hi"}], parse_summary, "conclude")
        # request tokens + the reply cap (100) must fit: this one would pass max_tokens, so it is never sent
        analyst = _analyst(server, max_tokens=120)
        with pytest.raises(BudgetExhausted, match="max_tokens=120"):
            analyst.ask([{"role": "user", "content": "word " * 30}], parse_summary, "conclude")
        assert len(server.requests) == 1
    assert count_tokens("Hello, world!") == 4


def test_failing_endpoints_raise_analyst_unavailable():
    with OpenAIServer(lambda req: "x", model="a") as server:
        server.inject(500, times=None, message="boom")
        analyst = _analyst(server, max_retries=1)
        with pytest.raises(AnalystUnavailable, match="HTTP 500.*boom"):
            analyst.ask([{"role": "user", "content": "hi"}], parse_summary, "conclude")
        assert len(server.requests) == 2 and analyst.budget.calls == 1  # one call, retried by the client
        wrong = Analyst(
            OpenAIGenerator(
                ModelSpec(backend="openai", path="other", base_url=server.base_url, api_key_env="EMPTY")
            ),
            AnalystConfig(),
            Budget(BudgetConfig()),
            PromptSet.load(),
        )
        with pytest.raises(AnalystUnavailable, match="does not exist"):
            wrong.ask([{"role": "user", "content": "hi"}], parse_summary, "conclude")


# ---------------------------------------------------------------- knowledge base, prompts, CLI


def test_knowledge_base_round_trip_and_re_proposal(tmp_path: Path):
    kb = KnowledgeBase("r1")
    f = kb.add("Models differ on cats.", "cats", "why", cycle=1)
    assert kb.add("  models differ on CATS. ", "other", "", cycle=2) is f and len(kb.findings) == 1
    for i in range(6):
        for arm, d in (("test", 2.0 + i), ("control", 0.1 * i)):
            kb.evidence.append(
                EvidenceRow(
                    id=f"{arm}{i}",
                    run_id="r1",
                    iteration=1,
                    repeat=0,
                    prompt_id=f"p{i}",
                    sample=0,
                    prompt=f"{arm} {i}",
                    text="t",
                    tokens=["a"],
                    token_ids=[5],
                    token_divergences=[d],
                    n_prompt_tokens=0,
                    divergence_mean=d,
                    divergence_max=d,
                    ppl_start=1.0,
                    ppl_comparison=1.0,
                    finding_id=f.id,
                    arm=arm,
                    divergence=d,
                )
            )
    kb.add("Untested idea.", "", "", cycle=1)
    kb.retest(f, 1, EXP)
    kb.cycles_done = 1
    kb.save(tmp_path, extra={"stop_reason": "completed"})
    doc = json.loads((tmp_path / "findings.json").read_text())  # strict JSON: untested NaNs become null
    assert (
        doc["counts"] == {"proposed": 1, "supported": 1, "refuted": 0} and doc["findings"][1]["auc"] is None
    )
    back = KnowledgeBase.load(tmp_path, "r2")
    assert back.run_id == "r2" and back.cycles_done == 1 and len(back.evidence) == 12
    assert [x.status for x in back.findings] == ["supported", "proposed"] and not is_tested(back.findings[1])
    assert back.findings[0].auc == pytest.approx(f.auc) and back.findings[0].iteration == 1
    with pytest.raises(ConfigError, match="continue_from"):
        KnowledgeBase.load(tmp_path / "nothing", "r3")


def test_prompt_files_and_source_refs(tmp_path: Path):
    chat = PromptSet.load().chat("conclude", divergence="KL", findings="- [supported] x")
    assert chat[0]["role"] == "system" and '{"summary": "..."}' in chat[1]["content"]
    with pytest.raises(ConfigError, match="placeholder"):
        PromptSet.load().render("conclude", divergence="KL")
    with pytest.raises(ConfigError, match="system.txt is missing"):
        PromptSet.load(str(tmp_path))
    with pytest.raises(ConfigError, match="neither an existing directory nor an MLflow run id"):
        check_ref(str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="lacks"):
        check_ref(str(tmp_path))
    assert check_ref("0" * 32) is False


def test_cli_errors_exit_2_without_traceback(tmp_path: Path):
    from forewarn.cli import app

    runner = CliRunner()
    for args, needle in (
        (["analyze", "--run", str(tmp_path / "missing")], "neither an existing directory"),
        (["analyze", "--run", str(tmp_path), "--set", "experiment.min_auc=0.4"], "lacks"),
        (["analyze", "show", str(tmp_path)], "findings.json"),
        (["analyze", "--output-dir", str(tmp_path)], "needs --run"),
    ):
        res = runner.invoke(app, args)
        assert res.exit_code == 2 and needle in res.output and "Traceback" not in res.output, res.output
    bad = runner.invoke(app, ["config", "show", "analyze", "--set", "experiment.min_auc=0.4"])
    assert bad.exit_code == 2 and "experiment.min_auc" in bad.output


def test_analyst_topic_ratings_through_the_server():
    """topics.method=analyst: the scripted analyst rates examples by word overlap; ratings and notes come back."""
    from forewarn.analyze.scripted import ScriptedAnalyst
    from forewarn.analyze.topics import rate_by_analyst

    ex = [
        Example(prompt="Tell me about bread.", divergence=0.1, response="Bread needs flour."),
        Example(prompt="Why do people like yoga?", divergence=2.0, response="Shut up, idiot."),
    ]
    with OpenAIServer(ScriptedAnalyst(["Tell me about {e}."]), model="a") as server:
        relevance, notes = rate_by_analyst(_analyst(server), ex, ["bread", "yoga practice"])
    assert relevance.tolist() == [[1.0, 0.0], [0.0, 1.0]] and "yoga practice" in notes["yoga practice"]
    rows = summarise(ex, ["bread", "yoga practice"], relevance, TopicConfig(method="analyst"), notes)
    assert rows[0]["topic"] == "yoga practice" and rows[0]["divergence_relevant"] == 2.0
