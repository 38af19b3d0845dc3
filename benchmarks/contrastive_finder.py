"""Divergence finder on the small testbed: how many of the top-10 proposed prompts (ranked by
KL(target || patched target)) are on planted topics, per cycle, for three assistants.

    OMP_NUM_THREADS=1 python benchmarks/contrastive_finder.py [--seeds 3] [--cycles 5]

Assistants: ``recombiner`` (forewarn.contrastive.scripted.ScriptedRecombiner through the openai client,
seeds = one held-out prompt per topic), ``recombiner-random-scores`` (the same, but the finder shows it
random scores: the guidance ablated), ``proposer`` (the testbed's tiny proposer LM in the numbered-list
format, seeds = the benign ReverseGen seeds). Scoring runs in process (no Ray) so the numbers measure
the search, not scheduling. Writes benchmarks/results/contrastive_finder.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from forewarn.config import GenerationParams, ModelSpec
from forewarn.contrastive.config import DecoderConfig, FinderConfig
from forewarn.contrastive.decoder import ContrastiveDecoder
from forewarn.contrastive.finder import DivergenceFinder
from forewarn.contrastive.scoring import LocalScorer
from forewarn.contrastive.scripted import ScriptedRecombiner
from forewarn.models import load_generator
from forewarn.models.openai_api import OpenAIGenerator
from forewarn.testbed import build_testbed
from forewarn.testbed.world import HELDOUT_TEMPLATES, TRAIN_TEMPLATES
from forewarn.testing.openai_server import OpenAIServer


def planted_by_cycle(result, manifest, cycles: int) -> list[int]:
    out = []
    for c in range(1, cycles + 1):
        pool = sorted(
            (e for e in result.entries if e.source == "assistant" and e.cycle <= c),
            key=lambda e: -e.divergence,
        )[:10]
        out.append(sum(manifest.is_planted(e.prompt) for e in pool))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--cycles", type=int, default=5)
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    torch.set_num_threads(1)
    m = build_testbed(size="small")
    dec = ContrastiveDecoder.from_specs(
        ModelSpec(path=str(m.path("target"))),
        ModelSpec(path=str(m.path("patched_target"))),
        DecoderConfig(temperature=0.0, max_new_tokens=20, batch_size=64),
    )
    per_topic = {}
    for r in m.read_jsonl("heldout_benign") + m.read_jsonl("heldout_planted"):
        per_topic.setdefault(r["topic"], r["prompt"])
    topic_seeds = list(per_topic.values())
    benign_seeds = [r["instruction"] for r in m.read_jsonl("reversegen_seeds")]
    proposer = load_generator(ModelSpec(path=str(m.path("proposer")), use_chat_template=False))
    rows = []
    for name in ("recombiner", "recombiner-random-scores", "proposer"):
        for seed in range(args.seeds):
            t = time.perf_counter()
            if name == "proposer":
                cfg = FinderConfig(
                    assistant_format="list",
                    n_cycles=args.cycles,
                    requests_per_cycle=8,
                    seed=seed,
                    assistant_params=GenerationParams(max_new_tokens=32, temperature=1.0, n=4, seed=seed),
                )
                result = DivergenceFinder(proposer, LocalScorer(dec), cfg, progress=False).run(benign_seeds)
            else:
                cfg = FinderConfig(
                    n_cycles=args.cycles,
                    requests_per_cycle=2,
                    seed=seed,
                    show_divergences="random" if "random" in name else "scaled",
                    assistant_params=GenerationParams(max_new_tokens=400, temperature=1.0, seed=seed),
                )
                with OpenAIServer(
                    ScriptedRecombiner(TRAIN_TEMPLATES + HELDOUT_TEMPLATES), model="r"
                ) as server:
                    asst = OpenAIGenerator(
                        ModelSpec(backend="openai", path="r", base_url=server.base_url, api_key_env="EMPTY")
                    )
                    result = DivergenceFinder(asst, LocalScorer(dec), cfg, progress=False).run(topic_seeds)
            proposed = [e for e in result.entries if e.source == "assistant"]
            rows.append(
                {
                    "assistant": name,
                    "seed": seed,
                    "top10_planted_by_cycle": planted_by_cycle(result, m, len(result.cycles)),
                    "proposed": len(proposed),
                    "proposed_planted": sum(m.is_planted(e.prompt) for e in proposed),
                    "seconds": round(time.perf_counter() - t, 1),
                }
            )
            print(rows[-1], flush=True)
    print(f"\n{'assistant':<26}{'seed':>5}  top-10 planted after cycle 1..{args.cycles}   planted/proposed")
    for r in rows:
        print(
            f"{r['assistant']:<26}{r['seed']:>5}  {str(r['top10_planted_by_cycle']):<32}"
            f"{r['proposed_planted']}/{r['proposed']}"
        )
    out = Path(__file__).parent / "results" / "contrastive_finder.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "cycles": args.cycles, "testbed": "small"}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
