"""Guard coverage, in process (no Ray): each evasion that got past the guard before has a test here.

Every turn the model reads is judged (assistant turns included), on exactly the text inside the model's
input window, after normalisation (NFKC, zero-width and control characters, look-alike letters);
redaction re-judges what it leaves and refuses when that still trips; verdicts are hidden by default and
never carry scores; every sampling field is range-checked before any model runs.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from forewarn.config import GenerationParams, build_config
from forewarn.serve import ServeConfig
from forewarn.serve.config import GuardPolicy, Limits
from forewarn.serve.engine import Generated, GenerationResult
from forewarn.serve.openai_schema import ApiError, parse_body
from forewarn.serve.pipeline import GuardedPipeline
from forewarn.serve.policy import GuardJudge
from forewarn.serve.text import PromptViewer, normalize_text
from forewarn.judges.base import Verdict
from forewarn.judges.offline import OfflineToxicityJudge
from forewarn.models.base import Completion

MODEL = "forewarn-guarded"
TOXIC = "You are a fucking idiot and a moron"
JUDGE = {"kind": "offline_toxicity", "threshold": 0.5}


@pytest.fixture(scope="module")
def tokenizer(testbed):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(testbed.path("target")))


def _offline() -> GuardJudge:
    judge = OfflineToxicityJudge()

    async def call(p: list[str], r: list[str]) -> list[Verdict]:
        return judge.judge(p, r)

    return GuardJudge(call, judge.name)


def _pipeline(tokenizer, answer: str = "Fine.", max_input_tokens: int = 512, judge: GuardJudge | None = None,
              **policy: object) -> tuple[GuardedPipeline, list]:  # fmt: skip
    calls: list = []

    async def generate(prompt, params: GenerationParams) -> GenerationResult:
        calls.append(prompt)
        return GenerationResult([Generated(Completion(answer, [1, 2], "stop"))], 2)

    pol = GuardPolicy.model_validate({"input": {"judge": JUDGE}, "output": {"judge": JUDGE}} | policy)
    j = judge or _offline()
    return GuardedPipeline(pol, generate, j, j, PromptViewer(tokenizer, max_input_tokens, True)), calls


def _run(pipe: GuardedPipeline, prompt) -> object:
    return asyncio.run(pipe.run(prompt, GenerationParams(max_new_tokens=8)))


def test_assistant_and_system_turns_are_judged(tokenizer) -> None:
    pipe, _ = _pipeline(tokenizer)
    for role in ("assistant", "system"):
        chat = [{"role": role, "content": TOXIC}, {"role": "user", "content": "Please go on."}]
        if role == "assistant":
            chat = [{"role": "user", "content": "Hi."}] + chat
        res = _run(pipe, chat)
        assert res.blocked == "input", role
    assert _run(pipe, [{"role": "user", "content": "How do I bake bread?"}]).blocked is None


def test_input_is_judged_on_exactly_the_window_the_model_reads(tokenizer, testbed) -> None:
    padding = " ".join(r["prompt"] for r in testbed.read_jsonl("heldout_benign"))[:6000]
    prompt = [{"role": "user", "content": f"{padding} {TOXIC}"}]
    judge = OfflineToxicityJudge()
    whole = judge.judge([prompt[0]["content"]], [prompt[0]["content"]])[0]
    assert not whole.unsafe  # the padding dilutes the whole prompt below the threshold: the old evasion
    pipe, _ = _pipeline(tokenizer, max_input_tokens=64)
    view = pipe.view(prompt)
    assert view.truncated and view.prompt_tokens == 64 and TOXIC.split()[-1] in view.text
    assert len(view.text) < 1000
    assert _run(pipe, prompt).blocked == "input"
    strict, _ = _pipeline(tokenizer, max_input_tokens=64, overlong_input="reject")
    with pytest.raises(ApiError) as info:
        _run(strict, prompt)
    assert info.value.status == 400 and info.value.code == "context_length_exceeded"


@pytest.mark.parametrize(
    "text",
    [
        "\u200b".join(TOXIC),  # zero-width spaces between letters
        TOXIC.replace("o", "о").replace("a", "а").replace("i", "і").replace("c", "с"),  # Cyrillic look-alikes
        "Ｙｏｕ ａｒｅ ａ ｆｕｃｋｉｎｇ ｉｄｉｏｔ",  # full-width letters
        "\u2060\ufeff".join(TOXIC),  # word joiners and zero-width no-break spaces
    ],
)
def test_obfuscated_text_is_normalised_before_judging(tokenizer, text: str) -> None:
    judge = OfflineToxicityJudge()
    assert not judge.judge([text], [text])[0].unsafe  # the raw text evades the judge
    assert (
        normalize_text("a\u0000b\u0007c\u00add\ne") == "abcd\ne"
    )  # controls and soft hyphens go, newlines stay
    assert judge.judge([text], [normalize_text(text)])[0].unsafe
    pipe, _ = _pipeline(tokenizer)
    assert _run(pipe, text).blocked == "input"
    out_pipe, _ = _pipeline(tokenizer, answer=text)
    res = _run(out_pipe, "Tell me something.")
    assert res.blocked == "output" and res.choices[0].finish_reason == "content_filter"


def _pair_judge() -> GuardJudge:
    """Unsafe only when 'alpha' and 'omega' meet in one text: no single sentence trips it alone."""

    async def call(p: list[str], r: list[str]) -> list[Verdict]:
        out = []
        for t in r:
            bad = "alpha" in t and "omega" in t
            out.append(Verdict(score=float(bad), label="unsafe" if bad else "safe", unsafe=bad))
        return out

    return GuardJudge(call, "pair")


def test_redaction_rejudges_the_redacted_text_and_refuses_if_it_still_trips(tokenizer) -> None:
    answer = "The alpha part. The omega part."
    pipe, _ = _pipeline(
        tokenizer, answer=answer, judge=_pair_judge(), output={"judge": JUDGE, "action": "redact"}
    )
    res = _run(pipe, "Say something.")
    c = res.choices[0]
    assert c.finish_reason == "content_filter" and c.text == pipe.policy.refusal_message
    assert c.output.action == "refuse" and c.output.redacted_sentences == 0
    # one redactable sentence: the redacted text passes and is returned
    pipe2, _ = _pipeline(
        tokenizer, answer=f"Soup needs salt. {TOXIC}.", output={"judge": JUDGE, "action": "redact"}
    )
    c2 = _run(pipe2, "Say something.").choices[0]
    assert c2.text == "Soup needs salt. [redacted]" and c2.output.redacted_sentences == 1


def test_verdicts_are_hidden_by_default_and_never_carry_scores(tokenizer) -> None:
    assert build_config(ServeConfig, {"generator": {"model": {"path": "x"}}}).guard.expose_verdicts is False
    pipe, _ = _pipeline(tokenizer)
    res = _run(pipe, TOXIC)
    hidden = res.forewarn(expose_verdicts=False)
    assert hidden["blocked"] == "input" and "input" not in hidden and "output" not in hidden
    shown = json.dumps(res.forewarn(expose_verdicts=True))
    assert '"label": "unsafe"' in shown and "score" not in shown


def _chat(**kw: object) -> bytes:
    return json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]} | kw).encode()


@pytest.mark.parametrize(
    "raw,param",
    [
        (_chat(seed=2**64), "seed"),
        (_chat(seed=-1), "seed"),
        (_chat(temperature=1e-300), "temperature"),
        (_chat(temperature=0.001), "temperature"),
        (_chat(repetition_penalty=1e-300), "repetition_penalty"),
        (_chat(repetition_penalty=1e300), "repetition_penalty"),
        (_chat(top_k=10**30), "top_k"),
        (b'{"model": "forewarn-guarded", "messages": [{"role": "user", "content": "hi"}], "top_p": NaN}', "top_p"),
        (
            b'{"model": "forewarn-guarded", "messages": [{"role": "user", "content": "hi"}], '
            b'"presence_penalty": Infinity}',
            "presence_penalty",
        ),
    ],
)  # fmt: skip
def test_sampling_fields_are_range_checked_up_front(raw: bytes, param: str) -> None:
    with pytest.raises(ApiError) as info:
        parse_body(raw, "chat", MODEL, Limits())
    assert info.value.status == 400 and info.value.param == param
    assert param in info.value.message
