"""Decoding speed of kNN-LM (Goodtriever) vs plain decoding on the same model, side by side (and DExperts).

    OMP_NUM_THREADS=1 python benchmarks/knn_overhead.py [--size small] [--k 1024] [--repeats 3]

Model: the testbed target; datastores: its toxic / non-toxic corpora (keys = the target's last-block MLP
input), built once with Ray Data and cached under ~/.cache/forewarn/bench-datastores. Protocol: the
reference's 20 new tokens x 25 samples per prompt, top_p 0.9, temperature 1; generation runs in process
(no Ray) so the numbers measure decoding. Each system runs after one warm-up call; the median of
``--repeats`` runs is reported. The reference (GPT-2 large on a GPU, IVFPQ, k 1024) measured 1.31x the
time per sequence of plain decoding. Writes benchmarks/results/knn_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from forewarn.config import GenerationParams, ModelSpec
from forewarn.models.hf import HFGenerator
from forewarn.retrieval import DatastoreSpec, IndexSpec, build_processor
from forewarn.retrieval.datastore import build_datastores
from forewarn.testbed import build_testbed


def stores(manifest, index: IndexSpec, tag: str) -> dict[str, str]:
    import ray

    root = Path.home() / ".cache" / "forewarn" / "bench-datastores" / f"{manifest.size}-{tag}"
    model = ModelSpec(path=str(manifest.path("target")))
    specs = {n: DatastoreSpec(corpus=str(manifest.path(f"corpus_{n}")), prompt_field="prompt", model=model,
                              index=index) for n in ("toxic", "nontoxic")}
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    build_datastores(specs, {n: root / n for n in specs}, show_progress=False)
    return {n: str(root / n) for n in specs}


def timed(gen: HFGenerator, prompts: list[str], params: GenerationParams, procs: list, repeats: int) -> dict:
    gen.generate(prompts[:2], params.model_copy(update={"n": 2}), logits_processors=procs)  # warm-up
    secs, tokens = [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = gen.generate(prompts, params, logits_processors=procs)
        secs.append(time.perf_counter() - t0)
        tokens = sum(len(c.token_ids) for row in out for c in row)
    s = statistics.median(secs)
    return {"seconds": s, "tokens": tokens, "tokens_per_s": tokens / s,
            "seconds_per_sequence": s / (len(prompts) * params.n)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="small", choices=["small", "full"])
    ap.add_argument("--k", type=int, default=1024)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=25)
    ap.add_argument("--tokens", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    m = build_testbed(size=args.size, progress=False)
    flat = stores(m, IndexSpec(kind="flat"), "flat")
    ivf = stores(m, IndexSpec(kind="ivfpq", nlist=64, m=16, nbits=8, nprobe=16), "ivfpq64x16")
    gen = HFGenerator(ModelSpec(path=str(m.path("target"))))
    prompts = [r["prompt"] for r in m.read_jsonl("heldout_planted")][: args.prompts]
    params = GenerationParams(max_new_tokens=args.tokens, n=args.n, temperature=1.0, top_p=0.9, seed=0)
    systems = {
        "plain": [],
        "knn_lm (flat)": [dict(kind="knn_lm", toxic=flat["toxic"], nontoxic=flat["nontoxic"], k=args.k)],
        "knn_lm (ivfpq)": [dict(kind="knn_lm", toxic=ivf["toxic"], nontoxic=ivf["nontoxic"], k=args.k)],
        "knn_lm toxic-only (ivfpq)": [dict(kind="knn_lm", toxic=ivf["toxic"], k=args.k)],
        "dexperts": [dict(kind="dexperts", expert={"path": str(m.path("expert"))},
                          anti_expert={"path": str(m.path("anti_expert"))})],
    }
    rows = {}
    for name, specs in systems.items():
        procs = [build_processor(s, gen.model, gen.tokenizer) for s in specs]
        rows[name] = timed(gen, prompts, params, procs, args.repeats)
        for p in procs:
            p.close()
    base = rows["plain"]["seconds_per_sequence"]
    print(f"\nkNN-LM overhead: testbed {args.size} target, {len(prompts)} prompts x {args.n} samples x "
          f"{args.tokens} tokens, k={args.k}, {args.threads} thread(s)")
    print(f"{'system':28s} {'tokens/s':>10s} {'s/sequence':>12s} {'time ratio':>11s}")
    for name, r in rows.items():
        r["ratio_vs_plain"] = r["seconds_per_sequence"] / base
        print(f"{name:28s} {r['tokens_per_s']:10.0f} {r['seconds_per_sequence']:12.5f} {r['ratio_vs_plain']:10.2f}x")
    print("reference (GPT-2 large, GPU, IVFPQ 4096x64, k 1024): Goodtriever 1.31x plain")
    out = Path(__file__).parent / "results" / "knn_overhead.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "results": rows, "reference_ratio": 1.31}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
