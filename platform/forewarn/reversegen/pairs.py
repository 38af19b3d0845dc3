"""Preference pairs for DPO, built per proposer prompt (ReverseGen section 6, the correct construction).

chosen = an instruction that made the target fail, rejected = one that did not, both sampled from the
SAME 3-shot prompt. Groups with only failures or only passes give no pairs. Rows whose judge failed
(``failure`` is None) are never used. The original zipped independently shuffled lists, pairing items
of unrelated prompts; that is exactly what this module does not do.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Literal

from pydantic import Field

from forewarn.config import Section


class PairConfig(Section):
    rule: Literal["all", "matched"] = Field(
        "all",
        description="all: every failure x pass in a group (capped); matched: min(#fail, #pass) "
        "random one-to-one matches",
    )
    max_pairs_per_prompt: int = Field(4, ge=1)
    max_pairs: int | None = Field(None, ge=1, description="cap over the iteration (random subset)")
    seed: int = 0


def build_pairs(rows: list[dict], cfg: PairConfig) -> list[dict]:
    """``rows`` carry ``prompt_id``, ``prompt``, ``instruction``, ``failure`` (bool|None) and ``id``.

    Returns ``{prompt_id, prompt, chosen, rejected, chosen_id, rejected_id}`` dicts, deterministic under
    ``cfg.seed``.
    """
    rng = random.Random(cfg.seed)
    groups: dict[str, dict[str, list[dict]]] = defaultdict(lambda: {"fail": [], "pass": []})
    prompts: dict[str, str] = {}
    for r in sorted(rows, key=lambda r: r["id"]):
        if r["failure"] is None:
            continue
        groups[r["prompt_id"]]["fail" if r["failure"] else "pass"].append(r)
        prompts[r["prompt_id"]] = r["prompt"]
    pairs = []
    for pid in sorted(groups):
        fails, passes = groups[pid]["fail"], groups[pid]["pass"]
        if not fails or not passes:
            continue
        if cfg.rule == "matched":
            k = min(len(fails), len(passes))
            combos = list(zip(rng.sample(fails, k), rng.sample(passes, k)))
        else:
            combos = [(f, p) for f in fails for p in passes]
            rng.shuffle(combos)
        for f, p in combos[: cfg.max_pairs_per_prompt]:
            pairs.append(
                {
                    "prompt_id": pid,
                    "prompt": prompts[pid],
                    "chosen": f["instruction"],
                    "rejected": p["instruction"],
                    "chosen_id": f["id"],
                    "rejected_id": p["id"],
                }
            )
    if cfg.max_pairs is not None and len(pairs) > cfg.max_pairs:
        pairs = rng.sample(pairs, cfg.max_pairs)
    return pairs
