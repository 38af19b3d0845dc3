"""Decoding speed of kNN-LM (Goodtriever) vs plain decoding on the same model, side by side: the testbed's
tiny target and, with ``--smollm2 PATH``, SmolLM2-135M-Instruct (a plain HF folder).

    OMP_NUM_THREADS=1 python benchmarks/knn_overhead.py [--size small] [--k 1024] [--repeats 3] \\
        [--smollm2 /path/to/SmolLM2-135M-Instruct]

Datastores: the testbed's toxic / non-toxic corpora, keys = each model's own last-block MLP input, built
once with Ray Data and cached under ~/.cache/forewarn/bench-datastores (flat and IVFPQ indexes). Protocol:
the reference's 20 new tokens x 25 samples per prompt, top_p 0.9, temperature 1; generation runs in process
(no Ray) so the numbers measure decoding. Systems are timed round-robin (one run of each per round, after a
warm-up call each), so a busy machine slows them alike; the median of ``--repeats`` rounds is reported. The
reference (GPT-2 large on a GPU, IVFPQ, k 1024) measured 1.31x the time per sequence of plain decoding.
Writes benchmarks/results/knn_overhead.json.
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
from forewarn.goodtriever import DatastoreSpec, IndexSpec, build_processor
from forewarn.goodtriever.datastore import INDEX, META, build_datastores, build_hash
from forewarn.testbed import build_testbed

IVFPQ = IndexSpec(kind="ivfpq", nlist=64, m=16, nbits=8, nprobe=16)


def stores(manifest, model_path: str, tag: str, index: IndexSpec, limit: int | None = None) -> dict[str, str]:
    """The toxic and non-toxic datastores of ``model_path`` (built once, then reused from the cache), from the
    first ``limit`` documents of each corpus (all by default)."""
    import ray

    root = Path.home() / ".cache" / "forewarn" / "bench-datastores" / f"{manifest.size}-{tag}"
    model = ModelSpec(path=model_path)
    specs = {
        n: DatastoreSpec(
            corpus=str(manifest.path(f"corpus_{n}")),
            prompt_field="prompt",
            model=model,
            index=index,
            limit=limit,
        )
        for n in ("toxic", "nontoxic")
    }
    built = all(
        (root / n / INDEX).is_file()
        and (root / n / META).is_file()
        and json.loads((root / n / META).read_text()).get("build_hash") == build_hash(s)
        for n, s in specs.items()
    )
    if not built:  # Ray only when something is left to build
        if not ray.is_initialized():
            ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        build_datastores(specs, {n: root / n for n in specs}, show_progress=False)
    return {n: str(root / n) for n in specs}


def measure(
    gen: HFGenerator,
    systems: dict[str, list[dict]],
    prompts: list[str],
    params: GenerationParams,
    repeats: int,
) -> dict[str, dict]:
    """Median seconds per sequence of every system, timed round-robin."""
    procs = {
        name: [build_processor(s, gen.model, gen.tokenizer) for s in specs] for name, specs in systems.items()
    }
    secs: dict[str, list[float]] = {name: [] for name in systems}
    tokens: dict[str, int] = {}
    for p in procs.values():
        gen.generate(prompts[:2], params.model_copy(update={"n": 2}), logits_processors=p)  # warm-up
    for _ in range(repeats):
        for name, p in procs.items():
            t0 = time.perf_counter()
            out = gen.generate(prompts, params, logits_processors=p)
            secs[name].append(time.perf_counter() - t0)
            tokens[name] = sum(len(c.token_ids) for row in out for c in row)
    for p in procs.values():
        for x in p:
            x.close()
    rows = {}
    for name in systems:
        s = statistics.median(secs[name])
        rows[name] = {
            "seconds": s,
            "runs": secs[name],
            "tokens": tokens[name],
            "tokens_per_s": tokens[name] / s,
            "seconds_per_sequence": s / (len(prompts) * params.n),
        }
    base = rows["plain"]["seconds_per_sequence"]
    for r in rows.values():
        r["ratio_vs_plain"] = r["seconds_per_sequence"] / base
    return rows


def knn_systems(flat: dict[str, str], ivf: dict[str, str], k: int, extra: bool) -> dict[str, list[dict]]:
    both = dict(kind="knn_lm", k=k)
    systems = {
        "plain": [],
        "knn_lm (flat)": [dict(both, toxic=flat["toxic"], nontoxic=flat["nontoxic"])],
        "knn_lm (ivfpq)": [dict(both, toxic=ivf["toxic"], nontoxic=ivf["nontoxic"])],
    }
    if extra:
        systems["knn_lm (ivfpq, exact dists)"] = [
            dict(both, toxic=ivf["toxic"], nontoxic=ivf["nontoxic"], recompute_dists=True)
        ]
    return systems


def table(title: str, rows: dict[str, dict]) -> None:
    print(f"\n{title}")
    print(f"{'system':30s} {'tokens/s':>10s} {'s/sequence':>12s} {'time ratio':>11s}")
    for name, r in rows.items():
        print(
            f"{name:30s} {r['tokens_per_s']:10.0f} {r['seconds_per_sequence']:12.5f} {r['ratio_vs_plain']:10.2f}x"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="small", choices=["small", "full"])
    ap.add_argument("--k", type=int, default=1024)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=25)
    ap.add_argument("--tokens", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--smollm2", default=None, help="a HF folder of SmolLM2-135M-Instruct (also measured)")
    ap.add_argument("--smollm2-prompts", type=int, default=2, help="prompts for SmolLM2 (x --n samples)")
    ap.add_argument(
        "--smollm2-docs",
        type=int,
        default=None,
        help="SmolLM2 datastores from the first N documents of each corpus (default: all)",
    )
    ap.add_argument(
        "--extra",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time exact distances, the toxic store alone and DExperts",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    m = build_testbed(size=args.size, progress=False)
    prompts = [r["prompt"] for r in m.read_jsonl("heldout_planted")]
    params = GenerationParams(max_new_tokens=args.tokens, n=args.n, temperature=1.0, top_p=0.9, seed=0)
    target = str(m.path("target"))
    systems = knn_systems(
        stores(m, target, "flat", IndexSpec(kind="flat")),
        stores(m, target, "ivfpq64x16", IVFPQ),
        args.k,
        args.extra,
    )
    if args.extra:
        ivf_tiny = systems["knn_lm (ivfpq)"][0]
        systems["knn_lm toxic-only (ivfpq)"] = [dict(kind="knn_lm", toxic=ivf_tiny["toxic"], k=args.k)]
        systems["dexperts"] = [
            dict(
                kind="dexperts",
                expert={"path": str(m.path("expert"))},
                anti_expert={"path": str(m.path("anti_expert"))},
            )
        ]
    shape = f"{args.n} samples x {args.tokens} tokens, k={args.k}, {args.threads} thread(s)"
    results = {
        "tiny": measure(
            HFGenerator(ModelSpec(path=target)), systems, prompts[: args.prompts], params, args.repeats
        )
    }
    table(f"testbed {args.size} target, {args.prompts} prompts x {shape}", results["tiny"])
    if args.smollm2:
        tag, docs = "smollm2" + (f"-{args.smollm2_docs}docs" if args.smollm2_docs else ""), args.smollm2_docs
        smol = knn_systems(
            stores(m, args.smollm2, f"{tag}-flat", IndexSpec(kind="flat"), docs),
            stores(m, args.smollm2, f"{tag}-ivfpq64x16", IVFPQ, docs),
            args.k,
            args.extra,
        )
        results["smollm2"] = measure(
            HFGenerator(ModelSpec(path=args.smollm2)),
            smol,
            prompts[: args.smollm2_prompts],
            params,
            args.repeats,
        )
        table(f"SmolLM2-135M-Instruct, {args.smollm2_prompts} prompts x {shape}", results["smollm2"])
        print(f"\n{'kNN-LM time ratio vs plain':30s} {'tiny target':>12s} {'SmolLM2-135M':>13s}")
        for name in results["smollm2"]:
            if name != "plain":
                print(
                    f"{name:30s} {results['tiny'][name]['ratio_vs_plain']:11.2f}x "
                    f"{results['smollm2'][name]['ratio_vs_plain']:12.2f}x"
                )
    print("reference (GPT-2 large, GPU, IVFPQ 4096x64, k 1024): Goodtriever 1.31x plain")
    out = Path(__file__).parent / "results" / "knn_overhead.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps({"args": vars(args), "results": results, "reference_ratio": 1.31}, indent=2) + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
