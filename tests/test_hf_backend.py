"""The HF backend on tiny Llama and GPT-2 models built locally: batching, n samples, seeds, stops, log-probs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from forewarn.config import GenerationParams, ModelSpec
from forewarn.models import load_generator
from forewarn.models.hf import HFGenerator, render_prompt

PROMPTS = ["Why is the sky blue?", "How do I bake bread?", "Numbers: 1 2 3", "A helpful assistant"]


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def gen(request: pytest.FixtureRequest, tiny_llama_dir: Path, tiny_gpt2_dir: Path) -> HFGenerator:
    path = tiny_llama_dir if request.param == "llama" else tiny_gpt2_dir
    return load_generator(ModelSpec(path=str(path)))


def test_n_samples_seeded_and_ordered(gen: HFGenerator) -> None:
    params = GenerationParams(max_new_tokens=12, temperature=1.0, top_p=0.95, n=3, seed=7)
    a = gen.generate(PROMPTS, params)
    b = gen.generate(PROMPTS, params)
    assert len(a) == len(PROMPTS) and all(len(row) == 3 for row in a)
    assert [[c.token_ids for c in row] for row in a] == [[c.token_ids for c in row] for row in b]
    assert len({tuple(c.token_ids) for row in a for c in row}) > len(PROMPTS)  # samples differ
    c = gen.generate(PROMPTS, params.model_copy(update={"seed": 8}))
    assert [[x.token_ids for x in row] for row in a] != [[x.token_ids for x in row] for row in c]


def test_batched_greedy_equals_one_by_one(gen: HFGenerator) -> None:
    params = GenerationParams(max_new_tokens=10)
    batched = gen.generate(PROMPTS, params)
    single = [gen.generate([p], params)[0] for p in PROMPTS]
    assert [r[0].token_ids for r in batched] == [r[0].token_ids for r in single]  # left padding is right
    for row in batched:
        c = row[0]
        assert c.finish_reason in {"stop", "length"} and len(c.token_ids) <= 10


def test_logprobs_match_forward_pass(gen: HFGenerator) -> None:
    params = GenerationParams(max_new_tokens=6, logprobs=True)
    c = gen.generate([PROMPTS[0]], params)[0][0]
    assert c.logprobs is not None and len(c.logprobs) == len(c.token_ids)
    enc = gen.encode([PROMPTS[0]])
    ids = torch.cat([enc["input_ids"], torch.tensor([c.token_ids])], dim=1)
    with torch.no_grad():
        logits = gen.model(ids).logits[0, enc["input_ids"].shape[1] - 1 : -1]
    ref = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(c.token_ids)[:, None]).squeeze(-1)
    assert all(math.isclose(a, b, abs_tol=1e-4) for a, b in zip(c.logprobs, ref.tolist()))


def test_stop_strings_cut_text(gen: HFGenerator) -> None:
    params = GenerationParams(max_new_tokens=16, temperature=1.0, seed=0)
    free = gen.generate([PROMPTS[1]], params)[0][0]
    assert len(free.text) > 3
    stop = free.text[2:4]
    cut = gen.generate([PROMPTS[1]], params.model_copy(update={"stop": [stop]}))[0][0]
    assert stop not in cut.text and free.text.startswith(cut.text) and cut.finish_reason == "stop"


def test_chat_template_rendering(tiny_llama_dir: Path) -> None:
    g = load_generator(ModelSpec(path=str(tiny_llama_dir)))
    text = render_prompt(
        g.tokenizer,
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        use_chat_template=True,
    )
    assert text == "<|system|>Be brief.<|end|>\n<|user|>hi<|end|>\n<|assistant|>"
    raw = load_generator(ModelSpec(path=str(tiny_llama_dir), use_chat_template=False))
    assert render_prompt(raw.tokenizer, "plain", use_chat_template=False) == "plain"


def test_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    from forewarn.errors import ModelNotFound

    with pytest.raises(ModelNotFound, match="not a local HF folder"):
        load_generator(ModelSpec(path="no-such-org/no-such-model"))


def test_seeded_row_same_alone_or_batched_with_63_others(gen: HFGenerator) -> None:
    """Per-row seeds: a row's n samples are a function of its seed only, not of the batch around it."""
    params = GenerationParams(max_new_tokens=10, temperature=1.0, top_p=0.9, top_k=50, n=4, logprobs=True)
    prompts = [f"{PROMPTS[i % 4]} {'and more ' * (i % 5)}{i}" for i in range(64)]
    seeds = [1000 + i for i in range(64)]
    batched = gen.generate(prompts, params, seeds=seeds)
    for i in (0, 17, 63):
        alone = gen.generate([prompts[i]], params, seeds=[seeds[i]])[0]
        assert [c.token_ids for c in alone] == [c.token_ids for c in batched[i]]
        assert all(
            math.isclose(a, b, abs_tol=1e-4)
            for x, y in zip(alone, batched[i])
            for a, b in zip(x.logprobs, y.logprobs)
        )
    moved = gen.generate(prompts[::-1], params, seeds=seeds[::-1])[::-1]  # another position in the batch
    assert [[c.token_ids for c in r] for r in moved] == [[c.token_ids for c in r] for r in batched]
    assert all(len({tuple(c.token_ids) for c in row}) > 1 for row in batched[:8])  # the n samples differ
    other = gen.generate(prompts[:4], params, seeds=[s + 1 for s in seeds[:4]])
    assert [[c.token_ids for c in r] for r in other] != [[c.token_ids for c in r] for r in batched[:4]]
    with pytest.raises(ValueError, match="one per prompt"):
        gen.generate(prompts[:2], params, seeds=[1])
