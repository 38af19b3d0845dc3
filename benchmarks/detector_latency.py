"""Cost of one loop check: the token-id cycle check, and the learned detector with each feature kind.

    OMP_NUM_THREADS=1 python benchmarks/detector_latency.py [--size small] [--repeats 30]

Times, on the testbed target and one CPU thread, a ``check(token_ids)`` call over a looping window of
``detection_length`` tokens (48, the testbed setting, and 400, the reference's): the cycle detector on ids;
the detector's forward pass + similarity profile + MLP for ``mlp_activation`` and ``hidden_state``; and the
MLP alone (what the reference's 0.36 ms per detection most likely covers). Detector weights do not change the
cost, so an untrained MLP of the right shape is used. Prints a table, writes benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="small")
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(1)

    from forewarn.config import ModelSpec
    from forewarn.models.hf import load_hf
    from forewarn.recurrence.config import ClassifierSection, FeatureSection
    from forewarn.recurrence.detector import LoopDetector, LoopMLP
    from forewarn.recurrence.stopping import CycleCheck, DetectorCheck, check_cost_ms
    from forewarn.testbed import build_testbed

    manifest = build_testbed(size=args.size, seed=0, progress=False)
    model, tok = load_hf(ModelSpec(path=str(manifest.path("target"))))
    loop_ids = tok(" " + manifest.loop_sentence, add_special_tokens=False)["input_ids"]
    rows = []
    for length in (48, 400):
        window = (loop_ids * (length // len(loop_ids) + 1))[:length]
        rows.append({"check": "cycle (token ids)", "window": length,
                     "ms": check_cost_ms(CycleCheck(), window, args.repeats)})
        for kind in ("mlp_activation", "hidden_state"):
            fc = FeatureSection(kind=kind, detection_length=length)
            clf = ClassifierSection()
            det = LoopDetector(fc, clf, LoopMLP(length, clf.hidden).eval(), np.zeros(length, np.float32),
                               np.ones(length, np.float32))
            rows.append({"check": f"detector ({kind})", "window": length,
                         "ms": check_cost_ms(DetectorCheck(det, model), window, args.repeats)})
        x = np.random.default_rng(0).random((1, length), dtype=np.float32)
        rows.append({"check": "MLP only", "window": length,
                     "ms": check_cost_ms(lambda _ids, d=det, x=x: d.probabilities(x), window, args.repeats)})
    base = {r["window"]: r["ms"] for r in rows if r["check"] == "cycle (token ids)"}
    print(f"{'check':28s} {'window':>6s} {'ms/check':>9s} {'x cycle':>8s}")
    for r in rows:
        r["ratio_to_cycle"] = r["ms"] / base[r["window"]]
        print(f"{r['check']:28s} {r['window']:6d} {r['ms']:9.3f} {r['ratio_to_cycle']:8.1f}")
    print("reference (paper, second-hand): 0.36 ms per detection call, hardware unknown")
    out = Path(__file__).parent / "results" / "detector_latency.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "testbed": f"{args.size}/seed0", "threads": 1,
                               "machine": platform.processor() or platform.machine()}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
