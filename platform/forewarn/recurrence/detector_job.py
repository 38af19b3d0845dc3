"""The ``recurrence_detector`` job: collect samples, extract features, train and evaluate the loop detector.

    python jobs/recurrence_detector.py --set data.search_runs=[runs/search] --set features.kind=hidden_state

Samples come from trigger-search runs (their ``experiences`` tables) and from prompt files generated through
a target actor pool (greedy and, per ``data.temperatures``, sampled). Each response is labelled by
``data.label_rule`` (the explicit cycle test by default; ``length`` reproduces the original), exact
duplicates are dropped, and at most ``max_per_class`` per class are kept (seeded). The detector is saved
under ``OUTPUT_DIR/detector`` with its config; ``samples.parquet`` keeps every sample with its split and
probability; the summary carries ``classify_stats`` (held-out) and ``train_stats``, plus the held-out stats
restricted to responses at least ``detection_length`` tokens long -- the only ones a deployed check sees.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from forewarn.config import GenerationParams
from forewarn.errors import ConfigError
from forewarn.pipeline.prompt_files import read_prompts
from forewarn.pipeline.rundir import RunDir
from forewarn.recurrence.config import RecurrenceDetectorConfig
from forewarn.recurrence.cycles import analyse
from forewarn.recurrence.features import features
from forewarn.recurrence.loop_detector import classify_stats, train_and_evaluate
from forewarn.recurrence.pool import TargetPool

CONFIG = RecurrenceDetectorConfig


def resolve_names(cfg: RecurrenceDetectorConfig) -> RecurrenceDetectorConfig:
    # lazy: loads pandas, sklearn, transformers only when called
    from forewarn.names import resolve_model, resolve_path

    cfg = cfg.model_copy(deep=True)
    cfg.target.model.path = resolve_model(cfg.target.model.path)
    cfg.data.prompt_files = [resolve_path(p) for p in cfg.data.prompt_files]
    return cfg


def read_prompt_file(path: str) -> list[str]:
    return read_prompts(path)


def search_samples(run_dirs: list[str]) -> list[tuple[str, list[int], str]]:
    """(prompt, response ids, source) of every evaluated individual in the given search runs."""
    out = []
    for d in run_dirs:
        rd = RunDir(d)
        if not rd.has_table("experiences"):
            raise ConfigError(
                f"data.search_runs: {d!r} has no experiences.parquet; run recurrence_search there "
                "first or remove it from the list"
            )
        t = rd.read_table("experiences").select(["prompt", "response_token_ids"]).to_pylist()
        out += [(r["prompt"], list(r["response_token_ids"]), f"search:{Path(d).name}") for r in t]
    return out


def generated_samples(cfg: RecurrenceDetectorConfig) -> list[tuple[str, list[int], str]]:
    """Responses of the target to every prompt file, once per temperature (greedy when 0)."""
    prompts = [(p, Path(f).stem) for f in cfg.data.prompt_files for p in read_prompt_file(f)]
    if not prompts:
        return []
    out = []
    for temp in cfg.data.temperatures:
        params = GenerationParams(**{**cfg.params.model_dump(), "temperature": temp, "seed": cfg.seed})
        pool = TargetPool(cfg.target, params)
        try:
            gens = pool.generate([p for p, _ in prompts])
        finally:
            pool.close()
        out += [(p, ids, f"{src}@t{temp}") for (p, src), (_, ids, _, _) in zip(prompts, gens)]
    return out


def label_and_balance(
    samples: list[tuple[str, list[int], str]], cfg: RecurrenceDetectorConfig
) -> list[dict[str, Any]]:
    """Label each distinct response, then keep at most ``max_per_class`` per class (seeded sample)."""
    seen, rows = set(), []
    for prompt, ids, source in samples:
        key = (prompt, tuple(ids))
        if key in seen:
            continue
        seen.add(key)
        d = cfg.detect
        rec = analyse(
            ids,
            cfg.params.max_new_tokens,
            d.cap_margin,
            d.max_period,
            d.min_repeats,
            d.ngram,
            d.min_loop_share,
            d.min_loop_tokens,
        )
        rows.append(
            {
                "prompt": prompt,
                "response_token_ids": ids,
                "source": source,
                "num_tokens": len(ids),
                "label": int(rec.recurrent(cfg.data.label_rule)),
                "length_rule": rec.hit_cap,
                "cycled": rec.cycled,
                "loop_share": rec.loop_share,
            }
        )
    rng = random.Random(cfg.seed)
    kept = []
    for label in (0, 1):
        cls = [r for r in rows if r["label"] == label]
        kept += rng.sample(cls, min(len(cls), cfg.data.max_per_class))
    return kept


def run(cfg: RecurrenceDetectorConfig, rundir: RunDir, tracker: Any) -> dict:
    # lazy: loads pandas, sklearn, transformers only when called
    from forewarn.models.hf import HFGenerator

    # lazy: loads pandas only when called
    from forewarn.pipeline.stages import set_torch_threads

    cfg = resolve_names(cfg)
    rows = label_and_balance(search_samples(cfg.data.search_runs) + generated_samples(cfg), cfg)
    y = np.array([r["label"] for r in rows])
    if len(rows) < 8 or y.min() == y.max():
        raise ConfigError(
            f"only {int(y.sum())} recurrent and {int((1 - y).sum())} non-recurrent samples: add "
            "data.search_runs or data.prompt_files that make the target loop and not loop"
        )
    set_torch_threads(cfg.target.resources.num_cpus)
    gen = HFGenerator(cfg.target.model)  # its encode renders prompts exactly as the generation did
    x = features(gen, [(r["prompt"], r["response_token_ids"]) for r in rows], cfg.features, progress=True)
    det, report = train_and_evaluate(x, y, cfg.features, cfg.classifier, cfg.seed)
    det.info["target"] = cfg.target.model.path
    det.save(rundir.path("detector"))
    test = np.array(report["test_index"])
    prob = det.probabilities(x)
    split = np.array(["train"] * len(rows), dtype=object)
    split[test] = "test"
    for r, p, s in zip(rows, prob, split):
        r.update(probability=float(p), split=s)
    rundir.write_table("samples", pa.Table.from_pylist(rows))
    long_test = test[[rows[i]["num_tokens"] >= cfg.features.detection_length for i in test]]
    summary = {
        "n_samples": len(rows),
        "n_recurrent": int(y.sum()),
        "feature": cfg.features.kind,
        "detection_length": cfg.features.detection_length,
        "label_rule": cfg.data.label_rule,
        "classify_stats": report["classify_stats"],
        "train_stats": report["train_stats"],
        "classify_stats_long_only": classify_stats(y[long_test], prob[long_test] >= cfg.classifier.threshold),
        "length_rule_vs_label": classify_stats(y, np.array([r["length_rule"] for r in rows])),
        "detector_dir": str(rundir.path("detector")),
    }
    tracker.log_metrics({f"test.{k}": v for k, v in report["classify_stats"].items()})
    tracker.log_metrics({f"train.{k}": v for k, v in report["train_stats"].items()})
    tracker.log_artifact(rundir.path("detector"), "detector")
    return summary
