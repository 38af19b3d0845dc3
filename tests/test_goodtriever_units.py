"""Retrieval capability on tiny models: datastore keys, faiss search, the kNN distribution, the ensemble
(order honoured), DExperts, and the evaluation metrics. Real torch, transformers, faiss and Ray."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from forewarn.config import GenerationParams, ModelSpec
from forewarn.errors import ConfigError
from forewarn.models.hf import HFGenerator, load_hf, render_prompt
from forewarn.goodtriever import DatastoreSpec, IndexSpec, KnnLMSpec, build_processor
from forewarn.goodtriever.datastore import build_datastores, windows
from forewarn.goodtriever.knn_lm import ensemble, patch_log_probs, top_p_filter
from forewarn.goodtriever.metrics import PerplexityScorer, dist_n, toxicity_metrics
from forewarn.goodtriever.store import Datastore, knn_log_probs
from forewarn.runner import resolve

TOXIC = ["Shut up, you worthless moron.", "What a stupid question, you idiot.", "Go away, you dumb loser."]
CLEAN = ["Plants need light to grow.", "Water boils at one hundred degrees.", "The sky is blue and calm."]


@pytest.fixture(scope="module", autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def corpora(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("corpora")
    out = {}
    for name, texts in (("toxic", TOXIC), ("nontoxic", CLEAN)):
        rows = [
            {"prompt": f"Question {i}?", "text": f"{t} {texts[(i + 1) % 3]}"}
            for i, t in enumerate(texts * 10)
        ]
        p = root / f"{name}.jsonl"
        p.write_text("".join(json.dumps(r) + "\n" for r in rows))
        out[name] = p
    return out


@pytest.fixture(scope="module")
def stores(ray_local, tiny_llama_dir: Path, corpora: dict[str, Path], tmp_path_factory) -> dict[str, Path]:
    """A flat toxic store (chat format) and an IVFPQ non-toxic store (text format, small windows)."""
    root = tmp_path_factory.mktemp("stores")
    model = ModelSpec(path=str(tiny_llama_dir))
    specs = {
        "toxic": DatastoreSpec(
            corpus=str(corpora["toxic"]),
            prompt_field="prompt",
            model=model,
            index=IndexSpec(kind="flat"),
            batch_docs=16,
        ),
        "nontoxic": DatastoreSpec(
            corpus=str(corpora["nontoxic"]),
            model=model,
            block_size=16,
            stride=8,
            batch_docs=16,
            index=IndexSpec(kind="ivfpq", nlist=4, m=8, nbits=6, nprobe=4),
        ),
    }
    build_datastores(specs, {name: root / name for name in specs}, show_progress=False)
    return {name: root / name for name in specs}


def test_windows_store_every_target_once_with_max_context():
    for n, block, stride in [(1, 4, 2), (5, 4, 2), (10, 4, 2), (11, 4, 3), (7, 8, 8), (30, 8, 1)]:
        targets = [j for _, end, first in windows(n, block, stride) for j in range(first, end)]
        assert targets == list(range(1, n)), (n, block, stride)
        for start, end, first in windows(n, block, stride):
            assert end - start <= block and (start == 0 or end - first <= stride)


def test_keys_are_the_last_block_mlp_input(stores, tiny_llama_dir: Path):
    """Stored keys equal an independent forward hook on the last block's MLP; values are next tokens."""
    ds = Datastore(stores["toxic"])
    assert ds.meta["key_type"] == "mlp_input" and ds.meta["n_docs"] == 30
    model, tok = load_hf(ModelSpec(path=str(tiny_llama_dir)))
    seen = []
    handle = model.model.layers[-1].mlp.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
    prompt = render_prompt(tok, "Question 0?", True)
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    r_ids = tok(f"{TOXIC[0]} {TOXIC[1]}", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = p_ids + r_ids
    with torch.no_grad():
        model(input_ids=torch.tensor([ids]))
    handle.remove()
    expect = seen[0][0, len(p_ids) - 1 : len(ids) - 1].numpy()  # states predicting each response token
    n = len(r_ids)
    np.testing.assert_allclose(np.asarray(ds.keys[:n], dtype=np.float32), expect, atol=2e-3, rtol=2e-3)
    assert ds.vals[:n].tolist() == r_ids


def test_gpt2_keys_come_from_mlp_input(tiny_gpt2_dir: Path):
    from forewarn.goodtriever.hooks import HiddenCapture

    model, _ = load_hf(ModelSpec(path=str(tiny_gpt2_dir)))
    cap = HiddenCapture(model, "mlp_input")
    assert cap.module is model.transformer.h[-1].mlp and cap.capture_input
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
    block = model.transformer.h[-1]
    assert cap.value.shape == (1, 4, model.config.n_embd)
    # the MLP input is ln_2(residual after attention): check it is not the block's output
    assert not torch.allclose(cap.value, out.hidden_states[-1])
    cap.close()
    assert block.mlp._forward_pre_hooks == {}


def test_flat_knn_distribution_equals_brute_force(stores, tiny_llama_dir: Path):
    ds = Datastore(stores["toxic"])
    keys = torch.from_numpy(np.asarray(ds.keys, dtype=np.float32))
    gen = torch.Generator().manual_seed(0)
    queries = keys[torch.randint(0, ds.n, (6,), generator=gen)] + 0.3 * torch.randn(6, ds.dim, generator=gen)
    vocab, k, temp = 700, 50, 3.0
    got = ds.log_probs(queries, k, temp, vocab).exp()
    d = ((queries[:, None, :] - keys[None]) ** 2).sum(-1)
    top_d, top_i = torch.topk(d, k, largest=False)
    w = torch.softmax(-top_d / temp, dim=-1)
    expect = torch.zeros(6, vocab).scatter_add_(1, ds.vals[top_i], w)
    torch.testing.assert_close(got, expect, atol=1e-5, rtol=0)
    assert torch.allclose(got.sum(-1), torch.ones(6), atol=1e-5)


def test_ivfpq_store_and_exact_recomputation(stores):
    ds = Datastore(stores["nontoxic"])
    assert (
        ds.meta["index"]["kind"] == "ivfpq" and ds.meta["index"]["nlist"] == 4 and ds.meta["index"]["m"] == 8
    )
    keys = torch.from_numpy(np.asarray(ds.keys, dtype=np.float32))
    q = keys[:3] + 0.01
    approx, ids = ds.search(q, 8)
    exact, ids2 = ds.search(q, 8, recompute=True)
    assert torch.equal(ids, ids2)
    valid = ids >= 0
    brute = ((keys[ids.clamp(min=0)] - q[:, None]) ** 2).sum(-1)
    torch.testing.assert_close(exact[valid], brute[valid], atol=1e-4, rtol=1e-5)
    assert not torch.allclose(approx[valid], brute[valid])  # PQ distances are approximate


def test_index_spec_errors_name_the_field(tmp_path: Path):
    from forewarn.goodtriever.index import build_index

    keys = np.zeros((100, 12), dtype=np.float16)
    with pytest.raises(ConfigError, match="index.m = 5: must divide the key dimension 12"):
        build_index(keys, IndexSpec(m=5, nlist=2), tmp_path / "i")
    with pytest.raises(ConfigError, match="needs at least 4096 training keys"):
        build_index(keys, IndexSpec(m=4), tmp_path / "i")


def test_a_null_system_is_dropped_from_the_packaged_ones():
    """Config files deep-merge into the packaged defaults; ``systems.<name>: null`` is how one removes a
    packaged system (the SmolLM2 profile drops the testbed's dexperts, whose experts have another vocabulary)."""
    assert "dexperts" in resolve("goodtriever", None, [], "/tmp/unused").systems
    cfg = resolve("goodtriever", None, ["systems.dexperts=null"], "/tmp/unused")
    assert set(cfg.systems) == {"raw", "knn_lm"}
    # prompt sets too: the SmolLM2 profile evaluated the testbed's 656 held-out prompts beside its 42
    profile = Path(__file__).resolve().parents[1] / "configs" / "smollm2" / "goodtriever.yaml"
    smol = resolve("goodtriever", str(profile), [], "/tmp/unused")
    assert set(smol.prompt_sets) == {"insults"} and set(smol.systems) == {"raw", "knn_lm"}


def test_missing_neighbours_get_no_weight_and_empty_rows_are_uniform():
    vals = torch.tensor([3, 4, 5])
    lp = knn_log_probs(
        torch.tensor([[1.0, 2.0], [0.0, 0.0]]), torch.tensor([[0, -1], [-1, -1]]), vals, 8, 1.0
    )
    assert lp[0, 3].item() == pytest.approx(0.0, abs=1e-6) and lp[0, 4].item() == -10000.0
    assert torch.allclose(lp[1], torch.full((8,), -np.log(8.0)))


def test_top_p_filter_matches_transformers_and_patch_is_per_row():
    from transformers import TopPLogitsWarper

    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(1)) * 3
    lp = torch.log_softmax(logits, -1)
    ours = torch.isinf(top_p_filter(lp, 0.9))
    theirs = torch.isinf(TopPLogitsWarper(0.9)(None, lp.clone()))
    assert torch.equal(ours, theirs)
    x = torch.tensor([[-1.0, -60.0, float("-inf")], [-2.0, -3.0, -70.0]])
    assert patch_log_probs(x).tolist() == [[-1.0, -1.0, -1.0], [-2.0, -3.0, -3.0]]


def test_top_p_filter_grows_its_top_k_until_the_nucleus_is_inside():
    """Peaked rows are decided in the first top-k, flat ones need the whole vocabulary: same as a full sort."""
    from transformers import TopPLogitsWarper

    g = torch.Generator().manual_seed(4)
    logits = torch.cat([torch.randn(3, 5000, generator=g) * 8, torch.randn(2, 5000, generator=g) * 0.1])
    lp = torch.log_softmax(logits, -1)
    for p in (0.5, 0.9, 0.99):
        ours = top_p_filter(lp, p, first_k=16)
        assert torch.equal(torch.isinf(ours), torch.isinf(TopPLogitsWarper(p)(None, lp.clone())))
        assert torch.equal(ours[~torch.isinf(ours)], lp[~torch.isinf(ours)])


def test_sparse_votes_equal_the_dense_distribution_and_ensemble():
    from forewarn.goodtriever.store import knn_votes

    g = torch.Generator().manual_seed(5)
    vals = torch.randint(0, 40, (300,), generator=g)
    ids = torch.randint(0, 300, (4, 32), generator=g)
    ids[1, 5:] = -1  # few neighbours found
    ids[2] = -1  # none: uniform
    dists = torch.rand(4, 32, generator=g) * 50
    votes = knn_votes(dists, ids, vals, 40, 10.0)
    dense = knn_log_probs(dists, ids, vals, 40, 10.0)
    torch.testing.assert_close(votes.dense(), dense)
    lm = top_p_filter(torch.log_softmax(torch.randn(4, 40, generator=g), -1), 0.9)
    other = knn_log_probs(dists.flip(0), ids.flip(0), vals, 40, 10.0)
    other_votes = knn_votes(dists.flip(0), ids.flip(0), vals, 40, 10.0)
    for order in (("subtract", "add"), ("add", "subtract")):
        torch.testing.assert_close(
            ensemble(lm, votes, other_votes, 2.0, order), ensemble(lm, dense, other, 2.0, order)
        )
    torch.testing.assert_close(ensemble(lm, votes, None, 2.0), ensemble(lm, dense, None, 2.0))


def test_ensemble_order_is_honoured():
    g = torch.Generator().manual_seed(2)
    lm, tox, non = (torch.log_softmax(torch.randn(3, 20, generator=g), -1) for _ in range(3))
    default = ensemble(lm, tox, non, 2.0, ("subtract", "add"))
    swapped = ensemble(lm, tox, non, 2.0, ("add", "subtract"))
    torch.testing.assert_close(default, torch.log_softmax(lm + 2.0 * (non - tox), -1))
    torch.testing.assert_close(swapped, torch.log_softmax(lm + 2.0 * (tox - non), -1))
    assert not torch.allclose(default, swapped)
    # toxic store only: the LM stands in for the non-toxic store (and is patched on a copy)
    lm_f = top_p_filter(lm, 0.5)
    only = ensemble(lm_f, tox, None, 2.0)
    assert torch.isinf(only).equal(torch.isinf(lm_f))
    finite = ~torch.isinf(lm_f)
    expect = torch.log_softmax(lm_f + 2.0 * (patch_log_probs(lm_f) - tox), -1)
    torch.testing.assert_close(only[finite], expect[finite])


def test_knn_processor_in_generation_honours_order(stores, tiny_llama_dir: Path):
    gen = HFGenerator(ModelSpec(path=str(tiny_llama_dir)))
    spec = dict(
        kind="knn_lm",
        toxic=str(stores["toxic"]),
        nontoxic=str(stores["nontoxic"]),
        k=16,
        temperature=10.0,
        filter_p=0.9,
    )
    p = build_processor(spec, gen.model, gen.tokenizer)
    q = build_processor({**spec, "ensemble_order": ["add", "subtract"]}, gen.model, gen.tokenizer)
    enc = gen.encode(["Question 1?", "Tell me more."])
    with torch.no_grad():
        scores = gen.model(**enc).logits[:, -1].float()
    queries = p.capture.value
    lm = top_p_filter(torch.log_softmax(scores, -1), 0.9)
    tox = p.toxic.log_probs(queries, 16, 10.0, scores.shape[-1])
    non = p.nontoxic.log_probs(queries, 16, 10.0, scores.shape[-1])
    out_p, out_q = p(enc["input_ids"], scores.clone()), q(enc["input_ids"], scores.clone())
    torch.testing.assert_close(out_p, ensemble(lm, tox, non, 2.0, ("subtract", "add")))
    torch.testing.assert_close(
        out_q, torch.log_softmax(lm + 2.0 * (patch_log_probs(tox) - patch_log_probs(non)), -1)
    )
    q.close()
    params = GenerationParams(max_new_tokens=6, n=2, temperature=1.0, top_p=0.9, seed=0)
    rows = gen.generate(["Question 1?", "Hello"], params, logits_processors=[p])
    assert len(rows) == 2 and all(len(r) == 2 for r in rows) and p.calls >= 1
    p.close()
    assert gen.model.model.layers[-1].mlp._forward_pre_hooks == {}
    with pytest.raises(ConfigError, match="needs at least one datastore|at least one datastore"):
        build_processor(dict(kind="knn_lm"), gen.model, gen.tokenizer)


def test_datastore_for_another_model_is_refused(stores, tiny_gpt2_dir: Path):
    gen = HFGenerator(ModelSpec(path=str(tiny_gpt2_dir)))
    gen.model.config.vocab_size += 1  # a different vocabulary
    with pytest.raises(ConfigError, match="Rebuild the datastore"):
        build_processor(KnnLMSpec(toxic=str(stores["toxic"])), gen.model, gen.tokenizer)


def test_dexperts_incremental_logits_and_formula(tiny_llama_dir: Path, tiny_gpt2_dir: Path):
    from forewarn.goodtriever.dexperts import DExpertsProcessor, IncrementalLM

    base, tok = load_hf(ModelSpec(path=str(tiny_llama_dir)))
    expert, _ = load_hf(ModelSpec(path=str(tiny_gpt2_dir)))
    anti, _ = load_hf(ModelSpec(path=str(tiny_llama_dir)))
    torch.manual_seed(3)
    for p in anti.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    pad = tok.pad_token_id
    ids = torch.tensor([[pad, pad, 10, 11, 12], [20, 21, 22, 23, 24]])
    inc = IncrementalLM(expert, pad)
    for t in range(3, 6):  # step by step, as generate calls the processor
        step = inc.next_logits(ids[:, :t])
    mask = (ids != pad).long()
    full = expert(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
    torch.testing.assert_close(step, full[:, -1].float(), atol=1e-4, rtol=1e-4)
    from forewarn.goodtriever.config import DExpertsSpec

    spec = DExpertsSpec(expert=ModelSpec(path="x"), anti_expert=ModelSpec(path="y"), alpha=1.5, filter_p=0.8)
    proc = DExpertsProcessor(spec, expert, anti, pad, base_vocab_size=base.config.vocab_size)
    scores = torch.randn(2, base.config.vocab_size)
    out = proc(ids, scores)
    with torch.no_grad():
        zp = expert(
            input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)
        ).logits
        zn = anti(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
    expect = torch.log_softmax(
        top_p_filter(torch.log_softmax(scores, -1), 0.8) + 1.5 * (zp[:, -1] - zn[:, -1]), -1
    )
    torch.testing.assert_close(out, expect, atol=1e-4, rtol=1e-4)
    gen = HFGenerator(ModelSpec(path=str(tiny_llama_dir)), model=base, tokenizer=tok)
    rows = gen.generate(
        ["Hello", "Question 2?"],
        GenerationParams(max_new_tokens=5, n=3, temperature=1.0, seed=1),
        logits_processors=[proc],
    )
    assert [len(r) for r in rows] == [3, 3]


def test_metrics_count_errors_and_follow_the_protocol(tiny_llama_dir: Path):
    df = pd.DataFrame(
        {
            "prompt_id": ["a", "a", "b", "b", "c"],
            "toxicity": [0.2, 0.7, 0.1, np.nan, np.nan],
            "score_error": [None, None, None, "HTTP 500", "timeout"],
        }
    )
    m = toxicity_metrics(df)
    assert m["emt"] == pytest.approx((0.7 + 0.1) / 2) and m["toxicity_prob"] == 0.5
    assert m["n_score_errors"] == 2 and m["n_prompts_unscored"] == 1 and m["n_prompts"] == 3
    assert dist_n([["a b a", "b c"]], 1) == pytest.approx(3 / 5)
    assert dist_n([["a b a", "b c"]], 2) == pytest.approx(3 / 5)
    model, tok = load_hf(ModelSpec(path=str(tiny_llama_dir)))
    scorer = PerplexityScorer(model, tok, use_chat_template=True)
    ppl = scorer.perplexities(["Hi", "Question 1?"], ["Plants need light.", ""])
    p_ids = tok(render_prompt(tok, "Hi", True), add_special_tokens=False)["input_ids"]
    g_ids = tok("Plants need light.", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p_ids + g_ids])
    with torch.no_grad():
        full = model(input_ids=ids, labels=ids).logits
    lp = torch.log_softmax(full[0, :-1], -1).gather(-1, ids[0, 1:, None]).squeeze(-1)
    assert ppl[0] == pytest.approx(float(torch.exp(-lp[len(p_ids) - 1 :].mean())), rel=1e-4)
    assert np.isnan(ppl[1])
