"""The contrastive decoder on two tiny models sharing one tokenizer: exact KL, masks, padding, modes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from forewarn.config import GenerationParams, ModelSpec
from forewarn.contrastive.config import DecoderConfig
from forewarn.contrastive.divergence import combine_logits
from forewarn.contrastive.decoder import ContrastiveDecoder, prompt_means, top_k
from forewarn.errors import ConfigError
from forewarn.models.hf import HFGenerator
from forewarn.models.tiny import build_tiny_model, new_model, train_tokenizer

PROMPTS = ["Why is the sky blue?", "Bake", "What is the capital of France and why is it there?"]


@pytest.fixture(scope="module")
def second_dir(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second tiny model (other weights, other depth) with the same tokenizer as ``tiny_llama_dir``."""
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    out = tmp_path_factory.mktemp("tiny-llama-b")
    new_model("llama", tok, seed=7, layers=1).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def pair(tiny_llama_dir: Path, second_dir: Path) -> tuple[HFGenerator, HFGenerator]:
    torch.set_num_threads(1)
    return (
        HFGenerator(ModelSpec(path=str(tiny_llama_dir), device="cpu")),
        HFGenerator(ModelSpec(path=str(second_dir), device="cpu")),
    )


def direct_logits(gen: HFGenerator, prompt: str, token_ids: list[int]) -> tuple[torch.Tensor, int]:
    """Unpadded, unbatched logits of prompt + continuation, straight from the model."""
    tok = gen.tokenizer
    text = tok.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    ids = tok(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = gen.model(torch.tensor([ids + token_ids])).logits[0].double()
    return logits, len(ids)


@pytest.mark.parametrize("w_s,w_c", [(1.0, -1.0), (-1.0, 1.0)])
def test_per_token_kl_matches_torch(pair, w_s, w_c):
    start, comp = pair
    cfg = DecoderConfig(
        start_weight=w_s,
        comparison_weight=w_c,
        temperature=1.0,
        top_p=1.0,
        max_new_tokens=10,
        generations_per_prompt=2,
        batch_size=3,
        seed=3,
    )
    samples = ContrastiveDecoder(start, comp, cfg).decode(PROMPTS)
    assert [(s.prompt_index, s.sample) for s in samples] == [(i, k) for i in range(3) for k in range(2)]
    for s in samples:
        z_s, p_len = direct_logits(start, s.prompt, s.token_ids)
        z_c, _ = direct_logits(comp, s.prompt, s.token_ids)
        ls, lc = z_s[p_len - 1 : -1].log_softmax(-1), z_c[p_len - 1 : -1].log_softmax(-1)
        # KL(P || Q) = F.kl_div(log Q, log P); the expectation is under the positively weighted model
        want = (
            F.kl_div(lc, ls, log_target=True, reduction="none")
            if w_s > 0
            else F.kl_div(ls, lc, log_target=True, reduction="none")
        ).sum(-1)
        assert len(s.token_divergences) == len(s.token_ids) == len(want) > 0
        torch.testing.assert_close(
            torch.tensor(s.token_divergences, dtype=torch.float64), want, atol=1e-5, rtol=0
        )
        assert s.divergence_mean == pytest.approx(float(want.mean()), abs=1e-5)
        assert s.divergence_max == pytest.approx(float(want.max()), abs=1e-5)
        nll = -ls.gather(-1, torch.tensor(s.token_ids)[:, None]).squeeze(-1)
        assert s.ppl_start == pytest.approx(float(nll.mean().exp()), rel=1e-4)
        nll_c = -lc.gather(-1, torch.tensor(s.token_ids)[:, None]).squeeze(-1)
        assert s.ppl_comparison == pytest.approx(float(nll_c.mean().exp()), rel=1e-4)


def test_greedy_matches_hf_generate_and_ignores_padding(pair):
    """The KV-cached loop with left padding gives what HF generate gives, batched or alone."""
    start, comp = pair
    dec = ContrastiveDecoder(start, comp, DecoderConfig(temperature=0.0, max_new_tokens=12))
    batched = dec.decode(PROMPTS)
    hf = start.generate(PROMPTS, GenerationParams(max_new_tokens=12, temperature=0.0))
    for s, h in zip(batched, hf):
        want = h[0].token_ids + ([start.tokenizer.eos_token_id] if h[0].finish_reason == "stop" else [])
        assert s.token_ids == want
    for i, p in enumerate(PROMPTS):
        alone = dec.decode([p])[0]
        assert alone.token_ids == batched[i].token_ids
        assert alone.divergence_mean == pytest.approx(batched[i].divergence_mean, abs=1e-5)


def test_score_mode_samples_from_comparison_and_teacher_forcing(pair):
    start, comp = pair
    dec = ContrastiveDecoder(
        start, comp, DecoderConfig(sample_from="comparison", temperature=0.0, max_new_tokens=8)
    )
    s = dec.decode(PROMPTS[:1])[0]
    hf = comp.generate(PROMPTS[:1], GenerationParams(max_new_tokens=8, temperature=0.0))[0][0]
    assert s.token_ids[: len(hf.token_ids)] == hf.token_ids
    text = " The sky is blue because of light."
    forced = dec.score([PROMPTS[0], PROMPTS[1]], [text, "ok"])[0]
    ids = start.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert forced.token_ids == ids and forced.text == text
    z_s, p_len = direct_logits(start, PROMPTS[0], ids)
    z_c, _ = direct_logits(comp, PROMPTS[0], ids)
    ls, lc = z_s[p_len - 1 : -1].log_softmax(-1), z_c[p_len - 1 : -1].log_softmax(-1)
    want = F.kl_div(lc, ls, log_target=True, reduction="none").sum(-1)
    torch.testing.assert_close(
        torch.tensor(forced.token_divergences, dtype=torch.float64), want, atol=1e-5, rtol=0
    )
    with_prompt = ContrastiveDecoder(start, comp, DecoderConfig(include_prompt=True)).score(
        [PROMPTS[0]], [text]
    )[0]
    assert with_prompt.n_prompt_tokens == p_len - 1  # every prompt token but the first is predicted
    assert with_prompt.token_divergences[with_prompt.n_prompt_tokens :] == pytest.approx(
        forced.token_divergences, abs=1e-5
    )


def test_combine_mode_prefers_tokens_the_positive_model_likes(pair):
    start, comp = pair
    cfg = DecoderConfig(
        mode="combine",
        start_weight=1.0,
        comparison_weight=-1.0,
        temperature=1.0,
        top_p=1.0,
        max_new_tokens=10,
        generations_per_prompt=4,
        seed=0,
    )
    combined = ContrastiveDecoder(start, comp, cfg).decode(PROMPTS)
    plain = ContrastiveDecoder(
        start,
        comp,
        DecoderConfig(temperature=1.0, top_p=1.0, max_new_tokens=10, generations_per_prompt=4, seed=0),
    ).decode(PROMPTS)
    # sampling from (p_start - p_comp)+ picks tokens the comparison model finds unlikely
    ratio = lambda ss: sum(s.ppl_comparison / s.ppl_start for s in ss) / len(ss)  # noqa: E731
    assert ratio(combined) > ratio(plain)
    # greedy combine: every token is the argmax of the combined distribution of the direct logits
    greedy = ContrastiveDecoder(start, comp, cfg.model_copy(update={"temperature": 0.0, "start_top_p": 0.9}))
    for s in greedy.decode(PROMPTS):
        z_s, p_len = direct_logits(start, s.prompt, s.token_ids)
        z_c, _ = direct_logits(comp, s.prompt, s.token_ids)
        want = combine_logits(z_s[p_len - 1 : -1], z_c[p_len - 1 : -1], 1.0, -1.0, start_top_p=0.9).argmax(-1)
        assert s.token_ids == want.tolist()
    assert len(prompt_means(combined)) == 3
    ranked = top_k(combined, 3)
    assert len(ranked) == 3 and ranked[0].divergence_mean >= ranked[-1].divergence_mean


def test_tokenizer_mismatch_fails_clearly(tiny_llama_dir: Path, tmp_path: Path):
    other_tok = train_tokenizer(["completely different words for another vocabulary"] * 3, vocab_size=300)
    other = build_tiny_model(tmp_path / "other", tokenizer=other_tok)
    with pytest.raises(ConfigError, match="does not share the tokenizer"):
        ContrastiveDecoder.from_specs(
            ModelSpec(path=str(tiny_llama_dir), device="cpu"), ModelSpec(path=str(other), device="cpu")
        )


def test_config_rejects_options_a_mode_would_ignore():
    with pytest.raises(ValueError, match="start_top_p.*only applies in mode 'combine'"):
        DecoderConfig(mode="score", start_top_p=0.9)
    with pytest.raises(ValueError, match="both 0"):
        DecoderConfig(start_weight=0.0, comparison_weight=0.0)
    with pytest.raises(ValueError, match="sample_from"):
        DecoderConfig(mode="combine", sample_from="comparison")
    assert DecoderConfig(mode="combine", start_top_p=0.9, similarity_gating=2.0).start_top_p == 0.9
