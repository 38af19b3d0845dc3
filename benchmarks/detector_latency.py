"""Cost of one loop check: the cycle check, the learned detector before (a forward pass over the window per
check) and now (features from the generation's own activations, updated incrementally), side by side.

    OMP_NUM_THREADS=1 python benchmarks/detector_latency.py [--size small] [--repeats 30] [--every 16]

On the testbed target, one CPU thread, one looping row (a trigger prompt, greedy), windows of 48 tokens (the
testbed setting) and 400 (the reference's):

- ``cycle (token ids)``: the exact-loop check on the generated ids;
- ``re-run forward (before)``: what every check cost before: a forward pass over the window's tokens, the
  similarity profile, the MLP;
- ``from generation (now)``: a real check inside ``generate`` (median over ``--repeats`` checks, every
  ``--every`` tokens): fold the tokens since the last check into the similarity matrix, max, sort, MLP;
- ``hooks, per token``: what the hooks add to each decoding step (the hook callbacks timed directly), and
  ``now, amortised`` = one check + ``--every`` tokens of hooks: the detector's whole cost per check.

Detector weights do not change the cost, so an untrained MLP of the right shape is used. Prints a table,
writes benchmarks/results/detector_latency.json; the reference (paper, second-hand) is 0.36 ms per check.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from transformers import StoppingCriteria


class TimedChecks(StoppingCriteria):
    """Calls ``check`` on row 0 every ``every`` tokens from ``first`` on and records each call's wall time."""

    def __init__(self, check, first: int, every: int):
        self.check, self.first, self.every = check, first, every
        self.prompt_len: int | None = None
        self.ms: list[float] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        if self.prompt_len is None:
            self.prompt_len = input_ids.shape[1] - 1
        n = input_ids.shape[1] - self.prompt_len
        if n >= self.first and (n - self.first) % self.every == 0:
            ids = input_ids[0, self.prompt_len :].tolist()
            t = time.perf_counter()
            self.check(ids)
            self.ms.append((time.perf_counter() - t) * 1000)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool)


def detector(length: int, kind: str):
    from forewarn.recurrence.config import ClassifierSection, FeatureSection
    from forewarn.recurrence.loop_detector import LoopDetector, LoopMLP

    clf = ClassifierSection()
    return LoopDetector(
        FeatureSection(kind=kind, detection_length=length),
        clf,
        LoopMLP(length, clf.hidden).eval(),
        np.zeros(length, np.float32),
        np.ones(length, np.float32),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="small")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--every", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(1)

    from forewarn.config import GenerationParams, ModelSpec
    from forewarn.models.hf import HFGenerator
    from forewarn.recurrence.features import response_feature
    from forewarn.serve.stop_detectors import CycleDetector
    from forewarn.recurrence.stopping import DetectorCheck
    from forewarn.testbed import build_testbed

    manifest = build_testbed(size=args.size, seed=0, progress=False)
    gen = HFGenerator(ModelSpec(path=str(manifest.path("target"))))
    prompt = min((r["prompt"] for r in manifest.read_jsonl("trigger_prompts")), key=len)
    room = int(gen.model.config.max_position_embeddings) - gen.encode([prompt])["input_ids"].shape[1]
    rows = []
    for length in (48, 400):
        checks_per_run = max(1, (room - length - 1) // args.every)
        max_new = length + 1 + (checks_per_run - 1) * args.every
        params = GenerationParams(max_new_tokens=max_new)
        ids = gen.generate([prompt], params)[0][0].token_ids
        if len(ids) < max_new:
            raise RuntimeError(
                f"the trigger prompt stopped after {len(ids)} tokens; the benchmark needs a loop"
            )
        cycle_window = ids[: length + 1]
        rows.append(
            {
                "check": "cycle (token ids)",
                "window": length,
                "ms": statistics.median(_time(lambda w=cycle_window: CycleDetector().check(w), args.repeats)),
            }
        )
        for kind in ("mlp_activation", "hidden_state"):
            det = detector(length, kind)

            def rerun(d=det, k=kind, window=ids[:length], n=length):
                x = response_feature(gen.model, [], window, n, k)
                return d.probabilities(x[None])

            rows.append(
                {
                    "check": f"{kind}: re-run forward (before)",
                    "window": length,
                    "ms": statistics.median(_time(rerun, args.repeats)),
                }
            )
            check = DetectorCheck(det, gen.model)
            timed: list[float] = []
            while len(timed) < args.repeats:
                crit = TimedChecks(check, length + 1, args.every)
                gen.generate([prompt], params, stopping_criteria=[crit])
                timed += crit.ms
            check.close()
            per_check = statistics.median(timed)
            hook_ms = hook_cost_ms(gen, prompt, ids, length, kind, args.repeats)
            rows.append(
                {
                    "check": f"{kind}: from generation (now)",
                    "window": length,
                    "ms": per_check,
                    "checks": len(timed),
                }
            )
            rows.append({"check": f"{kind}: hooks, per token", "window": length, "ms": hook_ms})
            rows.append(
                {"check": f"{kind}: now, amortised", "window": length, "ms": per_check + args.every * hook_ms}
            )
    print(f"\n{'check':38s} {'window':>6s} {'ms/check':>9s}")
    for r in rows:
        print(f"{r['check']:38s} {r['window']:6d} {r['ms']:9.3f}")
    for kind in ("mlp_activation", "hidden_state"):
        for length in (48, 400):
            get = {r["check"]: r["ms"] for r in rows if r["window"] == length}
            ratio = get[f"{kind}: re-run forward (before)"] / get[f"{kind}: from generation (now)"]
            print(f"{kind} @ {length}: before / now = {ratio:.1f}x per check")
    print(
        f"reference (paper, second-hand): 0.36 ms per detection call, hardware unknown; checks every {args.every} "
        "tokens, one row, one thread"
    )
    out = Path(__file__).parent / "results" / "detector_latency.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "rows": rows,
                "testbed": f"{args.size}/seed0",
                "threads": 1,
                "every": args.every,
                "machine": platform.processor() or platform.machine(),
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out}")


def hook_cost_ms(gen, prompt: str, ids: list[int], length: int, kind: str, repeats: int) -> float:
    """What the hooks add to one decoding step with a full window: the hook callbacks themselves (top-level
    pre/post hooks, the per-layer hooks and the push into the windows), called as a one-token forward pass
    calls them, timed directly (a forward pass with vs without hooks differs by less than this machine's noise).
    """
    from transformers import DynamicCache

    from forewarn.recurrence.features import activation_modules
    from forewarn.recurrence.stopping import GenerationWindows

    model = gen.model
    cache = DynamicCache(config=model.config)
    seen: dict[str, list] = {"act": [], "norm": None}
    grab = [
        m.register_forward_pre_hook(lambda _m, a: seen["act"].append(a[0].clone()))
        for m in activation_modules(model)
    ]
    with torch.inference_mode():
        model(input_ids=torch.tensor([ids[:length]]), past_key_values=cache, use_cache=True)
        seen["act"].clear()
        out = model(
            input_ids=torch.tensor([[ids[length]]]),
            past_key_values=cache,
            use_cache=True,
            output_hidden_states=True,
        )
    for h in grab:
        h.remove()
    acts, norm_out = seen["act"], out.hidden_states[-1]
    tok = torch.tensor([[ids[length]]])
    with GenerationWindows(model, kind, length) as windows, torch.inference_mode():
        hooks = windows.hooks
        hooks._top_pre(None, (), {"input_ids": torch.tensor([ids[:1]]), "past_key_values": None})  # prefill
        hooks._top_pre(None, (), {"input_ids": torch.tensor([ids[1 : length + 1]]), "past_key_values": cache})
        hooks.take(
            torch.randn(
                1, length, len(acts) * acts[0].shape[-1] if kind == "mlp_activation" else norm_out.shape[-1]
            )
        )  # a full window
        hooks._local.parts = None

        def step() -> None:
            hooks._top_pre(None, (), {"input_ids": tok, "past_key_values": cache})
            if kind == "mlp_activation":
                for a in acts:
                    hooks._act_pre(None, (a,))
            else:
                hooks._norm_post(None, (), norm_out)
            hooks._top_post(None, (), None)

        return statistics.median(_time(step, repeats * 10))


def _time(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


if __name__ == "__main__":
    main()
