"""Divergence math, the biased subsample, diversity scores and the parsing of assistant answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from forewarn.contrastive.assistant_io import (
    chat_request,
    list_request,
    parse_prompts,
    parse_yes_no,
    PromptFile,
)
from forewarn.contrastive.bank import BankEntry, diversity_scores, subsample_weights, weighted_subsample
from forewarn.contrastive.divergence import (
    combine_logits,
    divergence_name,
    nucleus_mask,
    perplexity,
    scored_mask,
    token_divergence,
    token_nll,
)


@pytest.fixture
def logits() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, 5, 50, generator=g) * 3, torch.randn(3, 5, 50, generator=g) * 3


def test_kl_directions_match_torch(logits):
    z_s, z_c = logits
    ls, lc = z_s.log_softmax(-1), z_c.log_softmax(-1)
    kl_s_c = F.kl_div(lc, ls, log_target=True, reduction="none").sum(-1)  # KL(P_s || P_c)
    kl_c_s = F.kl_div(ls, lc, log_target=True, reduction="none").sum(-1)  # KL(P_c || P_s)
    torch.testing.assert_close(token_divergence(z_s, z_c, 1.0, -1.0), kl_s_c, atol=1e-5, rtol=0)
    torch.testing.assert_close(token_divergence(z_s, z_c, -1.0, 1.0), kl_c_s, atol=1e-5, rtol=0)
    assert not torch.allclose(kl_s_c, kl_c_s)  # the direction matters
    assert divergence_name(1.0, -1.0) == "KL(P_start || P_comparison)"
    assert divergence_name(-1.0, 1.0) == "KL(P_comparison || P_start)"


def test_other_weights_and_l1(logits):
    z_s, z_c = logits
    ls, lc = z_s.log_softmax(-1), z_c.log_softmax(-1)
    p = torch.softmax(2 * ls + 0.5 * lc, -1)
    want = (p * (2 * ls + 0.5 * lc)).sum(-1)
    torch.testing.assert_close(token_divergence(z_s, z_c, 2.0, 0.5), want, atol=1e-5, rtol=0)
    torch.testing.assert_close(token_divergence(z_s, z_c, metric="logit_l1"), (z_c - z_s).abs().mean(-1))
    # identical models diverge by zero; a padded comparison vocabulary is truncated
    assert token_divergence(z_s, z_s).abs().max() < 1e-6
    padded = torch.cat([z_s, torch.zeros(3, 5, 7)], -1)
    torch.testing.assert_close(token_divergence(padded, z_s), torch.zeros(3, 5), atol=1e-6, rtol=0)


def test_combine_logits_modes():
    z_s = torch.tensor([[2.0, 1.0, 0.0, -3.0]])
    z_c = torch.tensor([[0.0, 2.0, 1.0, -3.0]])
    p_s, p_c = z_s.softmax(-1), z_c.softmax(-1)
    out = combine_logits(z_s, z_c, -1.0, 1.0)
    torch.testing.assert_close(out, torch.log((p_c - p_s).clamp(min=0) + 1e-7))
    assert out.argmax().item() == int((p_c - p_s).argmax())  # tokens the comparison model likes more
    # the starting model's top-p nucleus limits the choice
    limited = combine_logits(z_s, z_c, -1.0, 1.0, start_top_p=0.5)
    assert torch.isinf(limited[0, 1:]).all() and torch.isfinite(limited[0, 0])
    # gating with identical distributions returns the starting model
    gated = combine_logits(z_s, z_s, -1.0, 1.0, similarity_gating=5.0)
    torch.testing.assert_close(gated.softmax(-1), p_s, atol=1e-5, rtol=0)
    assert nucleus_mask(torch.tensor([[0.5, 0.3, 0.2]]), 0.6).tolist() == [[True, True, False]]


def test_scored_mask_and_perplexity():
    # row 0: two left pads, prompt [a b], generated [c d end pad]; prompt block 4 wide
    am = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1, 1]])
    gen_only = scored_mask(am, prompt_len=4)
    assert gen_only.tolist()[0] == [False, False, False, True, True, True, False]
    assert gen_only.tolist()[1] == [False, False, False, True, True, True, True]
    with_prompt = scored_mask(am, prompt_len=4, include_prompt=True)
    assert with_prompt.tolist()[0] == [False, False, True, True, True, True, False]
    logits = torch.randn(2, 8, 11)
    ids = torch.randint(0, 11, (2, 8))
    nll = token_nll(logits, ids)
    want = torch.exp(-logits[0, 3:6].log_softmax(-1).gather(-1, ids[0, 4:7, None]).mean())
    torch.testing.assert_close(perplexity(nll, gen_only)[0], want)
    assert math.isnan(float(perplexity(nll, torch.zeros_like(gen_only))[0]))


def entries(divs: list[float]) -> list[BankEntry]:
    return [BankEntry(prompt=f"p{i}", divergence=d) for i, d in enumerate(divs)]


def test_weighted_subsample_bias_and_guards():
    bank = entries([0.0, 0.1, 0.2, 5.0, 9.0])
    rng = np.random.default_rng(0)
    picks = [weighted_subsample(bank, 1, 0.1, rng)[0].prompt for _ in range(300)]
    assert picks.count("p4") > 250  # cold temperature: almost always the top entry
    low = [weighted_subsample(bank, 1, 0.1, rng, prefer="low")[0].prompt for _ in range(300)]
    assert low.count("p4") == 0
    draw = weighted_subsample(bank, 10, 0.5, rng)
    assert len(draw) == 5 and [e.divergence for e in draw] == sorted(
        (e.divergence for e in bank), reverse=True
    )
    same = entries([1.0, 1.0, 1.0])
    assert np.allclose(subsample_weights(same), 0.0)  # zero range: no division by zero
    with pytest.raises(ValueError, match="temperature"):
        weighted_subsample(bank, 2, 0.0, rng)


def test_diversity_scores_harmonic_distance():
    e = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 10.0]])
    h = diversity_scores(e)
    d = np.array([[np.inf, 1, 10], [1, np.inf, math.sqrt(101)], [10, math.sqrt(101), np.inf]])
    np.testing.assert_allclose(h, 1 / np.mean(1 / (d + 1e-8), axis=1))
    assert h.argmax() == 2  # the outlier is the most diverse
    bank = entries([1.0, 1.0, 1.0])
    for b, v in zip(bank, h):
        b.diversity = float(v)
    assert subsample_weights(bank, diversity_weight=1.0).argmax() == 2


def test_parse_json_numbered_and_malformed():
    text = 'Sure! {"prompt 2": "b?", "prompt 10": "c?", "prompt 1": "a {x}?", "note": "x"} bye'
    assert parse_prompts(text) == (["a {x}?", "b?", "c?"], None)
    assert parse_prompts('["one", "two"]')[0] == ["one", "two"]
    assert parse_prompts('{"prompts": ["x", "y"]}')[0] == ["x", "y"]
    assert parse_prompts("Here:\n1. first one\n2) second one\nthanks")[0] == ["first one", "second one"]
    # the list format: the first line continues the open item, then numbered lines
    assert parse_prompts(" Tell me about tea.\n5. And coffee?\nAsk more", open_item=4)[0] == [
        "Tell me about tea.",
        "And coffee?",
    ]
    found, why = parse_prompts("{ not json at all")
    assert found == [] and "no JSON" in why
    assert parse_prompts("")[0] == []
    assert (
        parse_yes_no("Yes, it does") == 1.0 and parse_yes_no(" no.") == 0.0 and parse_yes_no("maybe") is None
    )


def test_requests_render_bank():
    shown = entries([2.0, 4.0])
    rng = np.random.default_rng(0)
    chat = chat_request(PromptFile.load(), shown, "scaled", rng)
    assert chat[0]["role"] == "system" and "divergence 1: 0.00, input text 1: p0" in chat[1]["content"]
    assert "divergence 2: 10.00" in chat[1]["content"] and "JSON" in chat[1]["content"]
    hidden = chat_request(PromptFile.load(), shown, "hidden", rng)[1]["content"]
    assert "divergence" not in hidden.split("Write")[0]
    text, item = list_request("Ask questions:", shown)
    assert text == "Ask questions:\n1. p0\n2. p1\n3." and item == 3
