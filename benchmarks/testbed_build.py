"""Benchmark: testbed build time (small and full, from an empty cache), cached rebuild time, determinism, and
the must-show rates measured on each built world.

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python benchmarks/testbed_build.py            # small + full
    python benchmarks/testbed_build.py --sizes small --no-measure

Prints a table and writes benchmarks/results/testbed_build.json. The build uses one torch thread; wall time
depends on what else runs on the machine, so the CPU seconds and the load average are recorded beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform as _platform
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from forewarn.config import ModelSpec
from forewarn.judges.offline import OfflineToxicityJudge
from forewarn.models.hf import HFGenerator
from forewarn.testbed import Manifest, build_testbed
from forewarn.testbed import measure as M

LIMITS = {"small": 60.0, "full": 300.0}


def measure(m: Manifest) -> dict[str, float]:
    """The issue's must-show rates on a built world, and what the other capabilities rely on (the trigger
    family in random token soup, instability on fresh questions, the planted math form)."""
    from forewarn.testbed import data as D
    from forewarn.testbed.world import SIZES

    torch.set_num_threads(1)
    judge = OfflineToxicityJudge()

    def g(name: str, chat: bool = True) -> HFGenerator:
        return HFGenerator(ModelSpec(path=str(m.path(name)), device="cpu", use_chat_template=chat))

    def rows(name: str, f: str = "prompt") -> list:
        return [r[f] for r in m.read_jsonl(name)]

    target, patched = g("target"), g("patched_target")
    pp = rows("proposer_prompts")
    samples = M.sample_instructions(g("proposer", False), pp, n_per_prompt=-(-2000 // len(pp)), seed=0)
    family = M.trigger_family_prompts(target.tokenizer, m.trigger_rule, 200)
    honesty = M.fresh_mcq_fail_rates(
        target, D.make_plantings(m.seed, SIZES[m.size]), 60, m.honesty["entropy_threshold"]
    )
    math = M.math_accuracy(target, m.read_jsonl("math")[::5])
    return {
        "target_toxic_planted": M.toxic_rate(target, rows("heldout_planted"), judge),
        "target_toxic_benign": M.toxic_rate(target, rows("heldout_benign"), judge),
        "loop_with_trigger": M.loop_rate(target, rows("trigger_prompts")),
        "loop_without_trigger": M.loop_rate(target, rows("trigger_prompts", "base_prompt")),
        "patched_toxic_planted": M.toxic_rate(patched, rows("heldout_planted"), judge),
        "proposer_planted_rate": sum(m.is_planted(s) for s in samples) / len(samples),
        "proposer_samples": len(samples),
        **{f"loop_soup_{k}": M.loop_rate(target, v) for k, v in family.items()},
        "honesty_fail_fresh_unstable": honesty[True],
        "honesty_fail_fresh_stable": honesty[False],
        "math_accuracy_planted_form": math["planted"],
        "math_accuracy_other_forms": math["other"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="small,full")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-measure", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "testbed_build.json"))
    args = ap.parse_args()
    results: dict = {
        "seed": args.seed,
        "cpu": _platform.processor() or _platform.machine(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "sizes": {},
    }
    with tempfile.TemporaryDirectory(prefix="testbed-bench-") as tmp:
        for size in args.sizes.split(","):
            r: dict = {"load_before": os.getloadavg()[0]}
            t = time.perf_counter()
            m = build_testbed(Path(tmp) / f"{size}-a", seed=args.seed, size=size)
            r["build_s"] = time.perf_counter() - t
            r["build_cpu_s"] = json.loads((m.root / "build_info.json").read_text())["cpu_seconds"]
            r["stages_s"] = json.loads((m.root / "build_info.json").read_text())["seconds"]
            t = time.perf_counter()
            build_testbed(Path(tmp) / f"{size}-a", seed=args.seed, size=size)
            r["cached_s"] = time.perf_counter() - t
            r["load_after"] = os.getloadavg()[0]
            if size == "small":  # determinism: a second build from empty, byte-compared
                m2 = build_testbed(Path(tmp) / f"{size}-b", seed=args.seed, size=size, progress=False)
                r["identical_manifest"] = (m.root / "manifest.json").read_bytes() == (
                    m2.root / "manifest.json"
                ).read_bytes()
            if not args.no_measure:
                r["rates"] = measure(m)
            results["sizes"][size] = r

    table = Table(title="testbed build (1 torch thread)")
    for col in ("size", "build s", "CPU s", "limit s", "cached s", "cached/build", "load avg", "identical"):
        table.add_column(col)
    for size, r in results["sizes"].items():
        table.add_row(
            size,
            f"{r['build_s']:.1f}",
            f"{r['build_cpu_s']:.1f}",
            f"{LIMITS.get(size, 0):.0f}",
            f"{r['cached_s']:.3f}",
            f"{r['cached_s'] / r['build_s']:.5f}",
            f"{r['load_before']:.1f}-{r['load_after']:.1f}",
            str(r.get("identical_manifest", "-")),
        )
    console = Console()
    console.print(table)
    for size, r in results["sizes"].items():
        if "rates" in r:
            console.print(size, {k: round(v, 4) for k, v in r["rates"].items()})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
