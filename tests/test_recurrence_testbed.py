"""Recurrence against ground truth: the small testbed's target loops on a planted trigger.

One search run (GA and random search, 5 seeds, same reduced budget) feeds the detector, whose held-out
metrics and guard-side stopping are checked on the same world.
"""

from __future__ import annotations

import pytest
import torch

from forewarn.config import GenerationParams, ModelSpec, build_config
from forewarn.pipeline.rundir import RunDir
from forewarn.recurrence import detector_job
from forewarn.recurrence import job as search_job
from forewarn.recurrence.config import RecurrenceDetectorConfig, RecurrenceSearchConfig
from forewarn.tracking import NullTracker

pytestmark = pytest.mark.slow  # end-to-end runs on the testbed: not in the -m 'not slow' inner loop

MAX_NEW = 96
BUDGET = 1000  # target generations per (method, seed); the packaged default is 2000


@pytest.fixture(scope="module")
def search_run(ray_local, testbed, tmp_path_factory):
    cfg = build_config(
        RecurrenceSearchConfig,
        {
            "output_dir": str(tmp_path_factory.mktemp("search")),
            "tracking": {"enabled": False},
            "target": {
                "model": {"path": str(testbed.path("target"))},
                "resources": {"num_cpus": 1, "replicas": 2, "batch_size": 10},
            },
            "params": {"max_new_tokens": MAX_NEW},
            "search": {
                "pool_size": 20,
                "input_len": 8,
                "iterations": 100,
                "max_evaluations": BUDGET,
                "crossover": "uniform",
                "mutation_rate": 0.125,
                "swap_rate": 0.5,
                "immigrant_rate": 0.25,
            },
            "methods": ["ga", "random"],
            "seeds": [0, 1, 2, 3, 4],
        },
    )
    rd = RunDir(cfg.output_dir)
    summary = search_job.run(cfg, rd, NullTracker())
    rd.write_summary(summary)
    return summary, rd


def test_ga_finds_inputs_that_trigger_the_planted_loop(search_run, testbed):
    summary, rd = search_run
    ga = summary["methods"]["ga"]
    # measured on testbed v7: 5/5 seeds within 300 generations (3, 20, 29, 45, 235)
    assert ga["found"] >= 4, ga
    hits = [r for r in rd.read_table("experiences").to_pylist() if r["method"] == "ga" and r["hit"]]
    loop = testbed.loop_sentence
    assert all(r["response"].count(loop) >= 3 and r["tokens_generated"] >= MAX_NEW - 10 for r in hits)
    assert summary["triggers"] and summary["triggers"][0]["period"] > 0


def test_ga_median_generations_to_first_hit_is_3x_lower_than_random(search_run):
    summary, _ = search_run
    # the testbed's near miss (one trigger class) gives selection a slope and crossover joins the classes;
    # random search needs both classes at once (about 0.2 % of random 8-token inputs loop)
    m = summary["methods"]
    print(
        {k: (v["evaluations_to_first_hit"], v["median_evaluations_to_first_hit"]) for k, v in m.items()},
        summary["speedup_random_over_ga"],
    )
    assert summary["speedup_random_over_ga"] >= 3.0, m


@pytest.fixture(scope="module")
def detector_run(search_run, testbed, tmp_path_factory):
    _, search_rd = search_run
    cfg = build_config(
        RecurrenceDetectorConfig,
        {
            "output_dir": str(tmp_path_factory.mktemp("detector")),
            "tracking": {"enabled": False},
            "target": {
                "model": {"path": str(testbed.path("target"))},
                "resources": {"num_cpus": 1, "batch_size": 64},
            },
            "params": {"max_new_tokens": MAX_NEW},
            "features": {"kind": "mlp_activation", "detection_length": 48},
            "data": {
                "search_runs": [str(search_rd.root)],
                "prompt_files": [
                    str(testbed.path(n)) for n in ("heldout_benign", "heldout_planted", "trigger_prompts")
                ],
                "temperatures": [0.0, 1.0],
            },
        },
    )
    rd = RunDir(cfg.output_dir)
    return detector_job.run(cfg, rd, NullTracker()), rd


def test_detector_on_held_out_samples(detector_run):
    summary, rd = detector_run
    test = summary["classify_stats"]
    assert test["n"] >= 150 and test["tp"] + test["fn"] >= 40
    assert test["f1"] >= 0.95 and test["fpr"] <= 0.026, test
    assert summary["train_stats"]["f1"] >= 0.95
    assert rd.path("detector", "detector.yaml").is_file()


def test_guard_stop_detector_ends_a_looping_request_early(detector_run, testbed):
    from forewarn.serve.stop_detectors import build_stop_detector
    from forewarn.models.stopping import DetectorStoppingCriteria
    from forewarn.models.hf import HFGenerator
    from forewarn.recurrence.stopping import LoopDetectorSpec

    _, rd = detector_run
    torch.set_num_threads(1)
    gen = HFGenerator(ModelSpec(path=str(testbed.path("target"))))
    stop = build_stop_detector(LoopDetectorSpec(path=str(rd.path("detector")), check_every=8), gen)
    trigger = [r["prompt"] for r in testbed.read_jsonl("trigger_prompts")][:2]
    benign = [r["prompt"] for r in testbed.read_jsonl("heldout_benign")][:2]
    crit = DetectorStoppingCriteria([stop], [gen.tokenizer.eos_token_id, gen.tokenizer.pad_token_id])
    outs = gen.generate(trigger + benign, GenerationParams(max_new_tokens=256), stopping_criteria=[crit])
    assert set(crit.stopped) == {0, 1}  # both looping rows, neither benign one
    for row in (0, 1):
        assert crit.stopped[row].finish_reason == "recurrence"
        assert 48 <= crit.stopped[row].at_token < 256 and len(outs[row][0].token_ids) < 256
