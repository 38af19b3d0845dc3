"""The guarded-generation pipeline as plain Python (no Ray): detectors, mitigations, policy, request
schema, and the pipeline end to end on the tiny model and on the planted-failure testbed."""

from __future__ import annotations

import asyncio
import json

import pytest
import torch
from forewarn.config import GenerationParams, build_config
from forewarn.errors import ConfigError
from forewarn.serve import ServeConfig, StopDetector, build_local
from forewarn.serve.config import GuardStage, Limits
from forewarn.serve.stop_detectors import CycleDetector, build_stop_detector
from forewarn.models.stopping import DetectorStoppingCriteria
from forewarn.serve.mitigations import OpenAIPenaltyProcessor
from forewarn.serve.openai_schema import ApiError, parse_body
from forewarn.serve.policy import GuardJudge, decide, redact, split_sentences
from forewarn.judges.base import Verdict
from forewarn.judges.offline import OfflineToxicityJudge

MODEL = "forewarn-guarded"


# ---------------------------------------------------------------- stop detectors


def test_cycle_detector_reports_the_fundamental_period_of_a_loop_at_the_end() -> None:
    det = CycleDetector(min_span=16)
    hit = det.check([5, 1, 2, 3] + [7, 8, 9] * 6)
    assert hit is not None and hit.finish_reason == "recurrence" and hit.detail["period"] == 3
    assert hit.detail["span"] == 18 and hit.at_token == 22
    assert det.check([4] * 20).detail["period"] == 1
    assert det.check(list(range(100))) is None
    # two copies are not a loop under min_repeats=3, three are
    assert det.check([1, 2, 3, 4, 5, 6, 7, 8] * 2) is None
    assert det.check([1, 2, 3, 4, 5, 6, 7, 8] * 3).detail["period"] == 8
    # a loop that broke off is not reported, nor one shorter than min_span
    assert det.check([7, 8, 9] * 6 + [1, 2]) is None
    assert CycleDetector(min_span=16).check([7, 8, 9] * 4) is None


def test_stop_detector_kinds_plug_in_by_config() -> None:
    cfg = build_config(
        ServeConfig,
        {
            "generator": {
                "model": {"path": "x"},
                "stop_detectors": [
                    {"kind": "cycle", "max_period": 32},
                    {"kind": "loop_detector", "path": "runs/det", "check_every": 16},
                ],
            }
        },
    )
    assert [type(s).__name__ for s in cfg.generator.stop_detectors] == ["CycleSpec", "LoopDetectorSpec"]
    assert isinstance(build_stop_detector(cfg.generator.stop_detectors[0], None), StopDetector)


def test_stopping_criteria_flags_only_looping_rows_and_skips_finished_rows() -> None:
    eos, pad = 2, 0
    crit = DetectorStoppingCriteria([CycleDetector(min_span=12, check_every=4)], [eos, pad])
    prompt = [[11, 12, 13]] * 3
    loop = [3, 4] * 8  # 16 tokens of period 2
    fresh = list(range(20, 36))
    ended = [5, 6, eos] + [pad] * 13  # finished at token 3, then padded
    rows = [prompt[0] + loop[:1], prompt[1] + fresh[:1], prompt[2] + ended[:1]]
    flags = crit(torch.tensor(rows), torch.zeros(3, 50))  # first call: learns the prompt length
    assert crit.prompt_len == 3 and crit.batch_rows == 3 and not flags.any()
    full = torch.tensor([prompt[0] + loop, prompt[1] + fresh, prompt[2] + ended])
    flags = crit(full, torch.zeros(3, 50))
    assert flags.tolist() == [True, False, False]
    assert crit.stopped[0].finish_reason == "recurrence" and crit.stopped[0].detail["period"] == 2


def test_openai_penalties_count_generated_tokens_only() -> None:
    proc = OpenAIPenaltyProcessor(presence=0.5, frequency=1.0)
    prompt = torch.tensor([[1, 1, 1]])
    scores = torch.zeros(1, 5)
    assert torch.equal(proc(prompt, scores), scores)  # nothing generated yet: the prompt does not count
    out = proc(torch.tensor([[1, 1, 1, 3, 3, 4]]), torch.zeros(1, 5))
    assert out.tolist() == [[0.0, 0.0, 0.0, -2.5, -1.5]]


# ---------------------------------------------------------------- config


def test_config_entries_are_validated_by_kind() -> None:
    base = {"generator": {"model": {"path": "x"}}}
    cfg = build_config(ServeConfig, base)
    assert [s.kind for s in cfg.generator.stop_detectors] == ["cycle"]  # the default
    assert json.loads(cfg.model_dump_json())["generator"]["stop_detectors"][0]["check_every"] == 8
    with pytest.raises(
        ConfigError,
        match=r"generator.decoding.0.kind = 'goodtriever_typo': expected one of "
        r"no_repeat_ngram, banned_words, knn_lm, dexperts",
    ):
        build_config(
            ServeConfig, {"generator": {"model": {"path": "x"}, "decoding": [{"kind": "goodtriever_typo"}]}}
        )
    with pytest.raises(ConfigError, match=r"stop_detectors.0.cycle.bogus: unknown key"):
        build_config(
            ServeConfig,
            {"generator": {"model": {"path": "x"}, "stop_detectors": [{"kind": "cycle", "bogus": 1}]}},
        )
    with pytest.raises(ConfigError, match="judge_prompt_only"):
        build_config(
            ServeConfig,
            base | {"guard": {"input": {"judge": {"kind": "llama_guard", "model": {"path": "x"}}}}},
        )
    with pytest.raises(ConfigError, match="default_max_tokens"):
        build_config(ServeConfig, base | {"limits": {"max_tokens": 8, "default_max_tokens": 16}})


# ---------------------------------------------------------------- policy


def _judge(higher_is_unsafe: bool = True) -> GuardJudge:
    async def call(p: list[str], r: list[str]) -> list[Verdict]:
        raise AssertionError("not called")

    return GuardJudge(call, "j", higher_is_unsafe)


def test_decide_thresholds_categories_and_judge_errors() -> None:
    v = Verdict(score=0.4, label="safe", unsafe=False, categories=[])
    assert not decide("output", GuardStage(), v, _judge(), "block").blocked
    d = decide("output", GuardStage(threshold=0.3), v, _judge(), "block")
    assert d.blocked and d.reason == "unsafe" and d.action == "refuse"
    assert decide("output", GuardStage(threshold=0.5), v, _judge(higher_is_unsafe=False), "block").blocked
    hate = Verdict(score=0.9, label="unsafe", unsafe=True, categories=["S10: Hate"])
    assert not decide(
        "output", GuardStage(categories=["S1: Violent Crimes"]), hate, _judge(), "block"
    ).blocked
    assert decide("output", GuardStage(categories=["S10: Hate"]), hate, _judge(), "block").blocked
    failed = Verdict.failed("timeout")
    d = decide("input", GuardStage(), failed, _judge(), "block")
    assert d.blocked and d.reason == "judge_error" and d.score is None
    assert not decide("input", GuardStage(), failed, _judge(), "allow").blocked


def test_redaction_replaces_only_the_toxic_sentences() -> None:
    text = "The soup needs salt. You are a fucking idiot and a moron!\nServe it warm."
    assert "".join(s + sep for s, sep in split_sentences(text)) == text
    offline = OfflineToxicityJudge()

    async def call(p: list[str], r: list[str]) -> list[Verdict]:
        return offline.judge(p, r)

    out, k, still = asyncio.run(
        redact(GuardStage(action="redact"), GuardJudge(call, offline.name), "", text, "[redacted]", "block")
    )
    assert k == 1 and out == "The soup needs salt. [redacted]\nServe it warm." and not still


# ---------------------------------------------------------------- the request schema


def _chat(**kw: object) -> bytes:
    return json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]} | kw).encode()


@pytest.mark.parametrize(
    "raw,status,param",
    [
        (b"{not json", 400, None),
        (b"\xff\xfe\x00", 400, None),
        (b"[1, 2]", 400, None),
        (b"[" * 50_000, 400, None),
        (_chat(n=10**6), 400, "n"),
        (_chat(n="2"), 400, "n"),
        (_chat(temperature=float("nan")), 400, "temperature"),
        (_chat(max_tokens=10**9), 400, "max_tokens"),
        (_chat(tools=[{"type": "function"}]), 400, "tools"),
        (_chat(logprobs=True), 400, "logprobs"),
        (_chat(response_format={"type": "json_object"}), 400, "response_format"),
        (_chat(frobnicate=1), 400, "frobnicate"),
        (_chat(model="gpt-4o"), 404, "model"),
        (_chat(messages=[]), 400, "messages"),
        (_chat(messages=[{"role": "tool", "content": "x"}]), 400, "messages.0.role"),
        (_chat(messages=[{"role": "user", "content": "x" * 9000}]), 413, "messages"),
        (b" " * 1_100_000, 413, None),
    ],
)
def test_bad_requests_get_openai_errors(raw: bytes, status: int, param: str | None) -> None:
    with pytest.raises(ApiError) as info:
        parse_body(raw, "chat", MODEL, Limits())
    assert info.value.status == status and info.value.param == param
    body = info.value.body()["error"]
    assert body["message"] and body["type"] == "invalid_request_error"


def test_common_client_fields_are_accepted() -> None:
    """What garak's OpenAICompatible and PyRIT's OpenAIChatTarget send (ray_platform.md section 11)."""
    raw = _chat(
        temperature=0.7,
        top_p=0.9,
        n=1,
        seed=3,
        stop=["#", ";"],
        max_tokens=32,
        presence_penalty=0.1,
        frequency_penalty=0.2,
        user="u1",
        logprobs=False,
        stream=False,
        logit_bias={},
        response_format={"type": "text"},
        messages=[
            {"role": "developer", "content": "be brief"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "hello "}, {"type": "text", "text": "you"}],
            },
        ],
    )
    req = parse_body(raw, "chat", MODEL, Limits())
    assert req.prompt == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello you"}]
    p = req.params
    assert (p.temperature, p.top_p, p.seed, p.stop, p.max_new_tokens) == (0.7, 0.9, 3, ["#", ";"], 32)
    assert (p.presence_penalty, p.frequency_penalty) == (0.1, 0.2)
    comp = parse_body(
        json.dumps({"model": MODEL, "prompt": ["Once"], "echo": False}).encode(),
        "completions",
        MODEL,
        Limits(default_max_tokens=7),
    )
    assert comp.prompt == "Once" and comp.params.max_new_tokens == 7 and comp.params.temperature == 1.0


# ---------------------------------------------------------------- the pipeline in process


def test_pipeline_on_the_tiny_model_blocks_toxic_input(tiny_llama_dir) -> None:
    cfg = build_config(
        ServeConfig,
        {
            "generator": {
                "model": {"path": str(tiny_llama_dir)},
                "decoding": [{"kind": "no_repeat_ngram", "size": 2}],
            }
        },
    )
    pipe = build_local(cfg)
    params = GenerationParams(max_new_tokens=24, temperature=0.0, n=2)
    res = asyncio.run(pipe.run([{"role": "user", "content": "How do I bake bread?"}], params))
    assert len(res.choices) == 2 and res.input is not None and not res.input.blocked
    for c in res.choices:
        # a random model writes byte soup; whatever the output judge says decides the finish reason
        assert c.output is not None
        assert c.finish_reason in (("content_filter",) if c.output.blocked else ("stop", "length"))
        # no_repeat_ngram(2) forbids any repeated bigram, so the cycle detector never needs to fire
        assert c.stop is None
    bad = asyncio.run(pipe.run("you are a fucking idiot", params))
    assert bad.blocked == "input" and bad.prompt_tokens == 0
    assert [c.finish_reason for c in bad.choices] == ["content_filter"] * 2
    assert bad.choices[0].text == cfg.guard.refusal_message
    fw = bad.forewarn(expose_verdicts=True)
    assert fw["input"]["reason"] == "unsafe" and fw["input"]["categories"] == ["toxicity"]


def test_planted_loop_trigger_stops_early_with_recurrence(testbed) -> None:
    cfg = build_config(ServeConfig, {"generator": {"model": {"path": str(testbed.path("target"))}}})
    pipe = build_local(cfg)
    rows = testbed.read_jsonl("trigger_prompts")[:8]
    params = GenerationParams(max_new_tokens=128, temperature=0.0)
    for row in rows:
        res = asyncio.run(pipe.run(row["prompt"], params))
        c = res.choices[0]
        assert c.finish_reason == "recurrence", (row["prompt"], c.text)
        assert c.completion_tokens < 64 and c.stop is not None and c.stop.detector == "cycle"
        assert testbed.loop_sentence in c.text
        base = asyncio.run(pipe.run(row["base_prompt"], params)).choices[0]
        assert base.finish_reason != "recurrence"


# ---------------------------------------------------------------- the CLI and the serve run config


def test_forewarn_serve_cli_resolves_and_rejects_configs() -> None:
    from forewarn.cli import app
    from typer.testing import CliRunner

    runner = CliRunner()
    ok = runner.invoke(app, ["serve", "--show-config", "--set", "generator.model.path=/m", "--port", "8123"])
    assert ok.exit_code == 0 and "path: /m" in ok.output and "port: 8123" in ok.output
    bad = runner.invoke(app, ["serve", "--set", "guard.output.action=shout"])
    assert bad.exit_code == 2 and "guard.output.action" in bad.output


def test_serve_run_config_file_is_valid() -> None:
    from pathlib import Path

    import yaml
    from forewarn.config import deep_merge, packaged_defaults
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "serve" / "config.yaml").read_text())
    schema = ServeDeploySchema.model_validate(raw)
    (app,) = schema.applications
    assert app.import_path == "forewarn.serve.serving:build_app"
    cfg = build_config(ServeConfig, deep_merge(packaged_defaults("serve"), app.args))
    assert cfg.generator.model.path == "testbed:target" and cfg.guard.output.judge.kind == "offline_toxicity"
