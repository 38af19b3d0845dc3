"""Recurrence mechanics without Ray: the cycle detector, the GA's operators and budget, features, the MLP."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from forewarn.config import ModelSpec
from forewarn.errors import ConfigError
from forewarn.recurrence.config import ClassifierSection, FeatureSection, SearchSection
from forewarn.recurrence.cycles import analyse, find_cycle, length_rule, repeated_ngrams
from forewarn.recurrence.loop_detector import LoopDetector, LoopMLP, classify_stats, train_and_evaluate
from forewarn.recurrence.features import features, response_feature
from forewarn.recurrence.search import Evaluation, Search, crossover, mutate
from forewarn.recurrence.stopping import DetectorCheck, GenerationWindows
from transformers import StoppingCriteria

# ------------------------------------------------------------------ the cycle detector


def test_cycle_found_with_period_start_and_smallest_period():
    ids = [9, 8, 7] + [1, 2, 3, 4] * 6
    c = find_cycle(ids)
    assert (c.period, c.start, c.covered) == (4, 3, 24)
    assert find_cycle([5, 5, 6, 5, 6, 5, 6, 5, 6]).period == 2  # not 4: ties go to the fundamental period


def test_partial_last_copy_still_counts_and_no_cycle_in_distinct_tokens():
    assert find_cycle([1, 2, 3] * 4 + [1, 2]).period == 3
    assert find_cycle(list(range(100))) is None
    assert find_cycle([1, 2, 3, 1, 2, 3]) is None  # two copies < min_repeats 3


def test_length_rule_and_cycle_rule_disagree_where_the_original_is_weak():
    long_answer = list(range(200))  # long, never repeats
    looped_then_stopped = [1, 2, 3, 4, 5] * 10  # a loop that ended with EOS well before the cap
    a = analyse(long_answer, max_new_tokens=200)
    b = analyse(looped_then_stopped, max_new_tokens=200)
    assert a.recurrent("length") and not a.recurrent("cycle") and not a.recurrent("both")
    assert not b.recurrent("length") and b.recurrent("cycle") and b.period == 5 and b.cycle_start == 0
    assert length_rule(1980, 2000) and not length_rule(1979, 2000)


def test_a_loop_with_slight_variation_is_still_a_loop():
    rng = random.Random(0)
    sentence = [10, 11, 12, 13, 14, 15, 16, 17]
    varied = []
    for k in range(12):  # sampled loops insert a stray word now and then, which breaks any exact period
        varied += sentence + ([rng.randrange(100, 200)] if k % 3 == 1 else [])
    varied += [50, 51]
    r = analyse(varied, max_new_tokens=len(varied))
    assert not r.cycled and r.loop_share > 0.7 and r.recurrent("cycle") and r.recurrent("both")
    normal = analyse(list(range(300, 360)), max_new_tokens=200)
    assert normal.loop_share == 0.0 and not normal.recurrent("cycle")


def test_repeated_ngrams_is_graded():
    sentence = [10, 11, 12, 13, 14, 15]
    assert repeated_ngrams(sentence) == 0
    assert repeated_ngrams(sentence * 2) == 3  # 4-grams starting in the second copy, boundary ones are new
    assert repeated_ngrams(sentence * 5) > repeated_ngrams(sentence * 2)


# ------------------------------------------------------------------ the GA on a synthetic target

TRIGGER = (101, 102, 103)


def synthetic_evaluate(max_new: int = 60):
    """A target that loops iff the three trigger tokens appear back to back; each trigger token present
    anywhere earns a few repeated words (partial credit, like a weak partial trigger)."""
    calls: list[int] = []

    def evaluate(batch):
        calls.append(len(batch))
        out = []
        for ids in batch:
            s = " ".join(map(str, ids))
            if " ".join(map(str, TRIGGER)) in s:
                resp = [7, 8, 9] * (max_new // 3)
            else:
                k = sum(t in ids for t in TRIGGER)
                resp = list(range(200, 210)) + [7, 8, 9] * (2 * k)
            out.append(
                Evaluation(
                    ids=tuple(ids),
                    prompt=s,
                    response="",
                    response_ids=resp,
                    finish_reason="stop",
                    seconds=0.0,
                    recurrence=analyse(resp, max_new),
                )
            )
        return out

    return evaluate, calls


def test_operators_keep_length_and_use_vocab():
    rng = random.Random(0)
    a, b = (1, 2, 3, 4, 5, 6), (7, 8, 9, 10, 11, 12)
    assert crossover(a, b, "half", rng) == (1, 2, 3, 10, 11, 12)
    for kind in ("one_point", "two_point", "uniform"):
        c = crossover(a, b, kind, rng)
        assert len(c) == 6 and all(x in (p, q) for x, p, q in zip(c, a, b))
    m = mutate(a, 0.1, [50, 51], rng)
    assert sum(x != y for x, y in zip(a, m)) == 1 and set(m) - set(a) <= {50, 51}


def test_ga_pool_is_filled_exactly_budget_respected_and_cache_saves_generations():
    evaluate, calls = synthetic_evaluate()
    cfg = SearchSection(
        pool_size=11,
        input_len=6,
        iterations=5,
        selection_rate=0.3,
        max_evaluations=40,
        terminate_if_found=False,
    )
    s = Search(cfg, list(range(100, 130)), evaluate, "ga", seed=0)
    res = s.run()
    assert res.total_evaluations <= 40 and sum(calls) == res.total_evaluations
    assert all(n <= 11 for n in calls)  # an odd deficit never overshoots the pool
    assert len({e.ids for _, _, e in res.evaluations}) == res.total_evaluations  # no sequence generated twice


def test_ga_finds_a_conjunctive_trigger_far_faster_than_random_search():
    vocab = list(range(100, 160))
    cfg = SearchSection(
        pool_size=20,
        input_len=6,
        iterations=200,
        max_evaluations=3000,
        crossover="uniform",
        mutation_rate=0.2,
        swap_rate=0.5,
    )
    ga, rnd = [], []
    for seed in range(5):
        for method, out in (("ga", ga), ("random", rnd)):
            res = Search(cfg, vocab, synthetic_evaluate()[0], method, seed).run()
            out.append(res.first_hit_evaluations or cfg.max_evaluations)
            # what a search reports as found is the planted trigger, never a near miss
            assert not res.found or " ".join(map(str, TRIGGER)) in res.triggers()[0].prompt
    # measured: the GA finds it within budget on 4 of these 5 seeds, random search on 0
    assert sum(n < cfg.max_evaluations for n in ga) >= 4, ga
    # partial credit gives the GA a slope; random search must draw 3 tokens in order (p ~ 4 x 60^-3)
    assert np.median(rnd) >= 3 * np.median(ga), (ga, rnd)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="keeps no parent"):
        SearchSection(pool_size=4, selection_rate=0.2)
    with pytest.raises(ValueError, match="trigger"):
        SearchSection(contexts=["no slot here"])
    from forewarn.config import build_config
    from forewarn.recurrence.config import RecurrenceSearchConfig

    with pytest.raises(ConfigError, match="search.crossover"):
        build_config(RecurrenceSearchConfig, {"search": {"crossover": "three_point"}})


# ------------------------------------------------------------------ features and the classifier


@pytest.fixture(scope="module")
def tiny_model(tiny_llama_dir):
    from forewarn.models.hf import load_hf

    torch.set_num_threads(1)
    model, tok = load_hf(ModelSpec(path=str(tiny_llama_dir)))
    return model, tok


def test_features_rank_a_loop_above_a_non_loop(tiny_model):
    from forewarn.models.hf import HFGenerator

    model, tok = tiny_model
    gen = HFGenerator(ModelSpec(path="tiny"), model, tok)
    rng = random.Random(0)
    loop = [30, 31, 32, 33, 34, 35] * 8
    noise = rng.sample(range(20, len(tok)), 48)
    for kind in ("mlp_activation", "hidden_state"):
        fc = FeatureSection(kind=kind, detection_length=64)
        x = features(gen, [("say it", loop), ("say it", noise), ("say it", loop[:5])], fc)
        assert x.shape == (3, 64)
        assert x[0, :40].mean() > x[1, :40].mean()  # repeated positions agree with their earlier copies
        assert x[0, 48:].sum() == 0 and x[2, 5:].sum() == 0  # zero padding past the response
        assert np.all(np.diff(x[0, :48]) <= 1e-6)  # sorted descending


class _Record(StoppingCriteria):
    """Records ``windows.profile(ids)`` of every row at every step from the third token on."""

    def __init__(self, windows: GenerationWindows):
        self.windows, self.prompt_len, self.seen = windows, None, {}

    def __call__(self, input_ids, scores, **kwargs):
        if self.prompt_len is None:
            self.prompt_len = input_ids.shape[1] - 1
        for row, ids in enumerate(input_ids[:, self.prompt_len :].tolist()):
            if len(ids) >= 3:
                self.seen[row] = (ids, self.windows.profile(ids).numpy().copy())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool)


@pytest.mark.parametrize("kind", ["mlp_activation", "hidden_state"])
def test_generation_features_equal_training_features(tiny_model, kind):
    """Run-time features (hooks during a batched, left-padded, sampled generate; window wraps at 12 tokens)
    equal the training features of the same tokens in the same context."""
    from forewarn.config import GenerationParams
    from forewarn.models.hf import HFGenerator

    model, tok = tiny_model
    gen = HFGenerator(ModelSpec(path="tiny"), model, tok)
    prompts = ["tell me a long story about the sea", "hi"]
    for length in (64, 12):
        with GenerationWindows(model, kind, length) as windows:
            rec = _Record(windows)
            gen.generate(
                prompts,
                GenerationParams(max_new_tokens=30, temperature=1.0, n=2, seed=3),
                stopping_criteria=[rec],
            )
        assert len(rec.seen) == 4
        for row, (ids, got) in rec.seen.items():
            prompt_ids = gen.encode([prompts[row // 2]])["input_ids"][0].tolist()
            fed = ids[:-1]  # the newest token has not been through the model yet
            start = max(0, len(fed) - length)
            want = response_feature(model, prompt_ids + fed[:start], fed[start:], length, kind)
            assert np.abs(got - want).max() < 1e-4, (length, row)


def test_detector_check_needs_its_generation(tiny_model):
    model, _ = tiny_model
    fc = FeatureSection(kind="mlp_activation", detection_length=16)
    clf = ClassifierSection()
    det = LoopDetector(
        fc, clf, LoopMLP(16, clf.hidden).eval(), np.zeros(16, np.float32), np.ones(16, np.float32)
    )
    check = DetectorCheck(det, model)
    try:
        assert check.min_tokens == 17
        with pytest.raises(RuntimeError, match="generation's own activations"):
            check([1, 2, 3])
    finally:
        check.close()
    assert not model._forward_pre_hooks and not model._forward_hooks  # close() unhooks


def test_stats_formulas():
    s = classify_stats(np.array([1, 1, 0, 0, 0]), np.array([1, 0, 1, 0, 0]))
    assert (s["tp"], s["fp"], s["fn"], s["tn"]) == (1, 1, 1, 2)
    assert s["recall"] == 0.5 and s["precision"] == 0.5 and s["fpr"] == pytest.approx(1 / 3)
    assert s["f1"] == 0.5 and s["accuracy"] == 0.6


def test_detector_trains_saves_and_loads(tmp_path):
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0.9, 0.05, (80, 16)), rng.normal(0.5, 0.1, (80, 16))]).astype(np.float32)
    y = np.array([1] * 80 + [0] * 80)
    fc = FeatureSection(kind="hidden_state", detection_length=16)
    det, rep = train_and_evaluate(x, y, fc, ClassifierSection(epochs=60), seed=0)
    assert rep["classify_stats"]["f1"] > 0.95 and rep["classify_stats"]["fpr"] == 0.0
    assert set(rep["train_index"]).isdisjoint(rep["test_index"])
    det.save(tmp_path / "det")
    again = LoopDetector.load(tmp_path / "det")
    assert np.allclose(again.probabilities(x), det.probabilities(x))
    assert again.features == fc and again.info["classify_stats"]["f1"] == rep["classify_stats"]["f1"]
    with pytest.raises(FileNotFoundError, match="recurrence detect"):
        LoopDetector.load(tmp_path / "nothing")
