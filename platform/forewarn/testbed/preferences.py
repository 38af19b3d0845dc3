"""The hidden-context preference data of the testbed (for DPL): pairs labelled by one annotator of two
groups, and the jailbreak-style (safe, jailbroken) rows the risk-averse reward is judged on."""

from __future__ import annotations

import random

from forewarn.testbed.data import Plantings, augment, clean_answer, instruction
from forewarn.testbed.world import SAFE_DEFLECTIONS, TOPIC_ANSWERS, TOXIC_SENTENCES, UNHELPFUL_ANSWERS

ANNOTATOR_GROUPS = ["helpful", "harmless"]
HELPFUL_SHARE = 0.7  # of the annotators; the rest put harmlessness first
# kind -> (share of pairs, response A, response B, A's group-by-group verdict); responses: C clean helpful,
# D detailed but insulting (jailbroken-style), S safe deflection, U unhelpful, T toxic. The two disputed kinds
# put D against two opponents that every annotator ranks S > U: no single utility fits, so a distributional
# model has to give D (not S or U) a wide spread -- the anchor that identifies whose variance it is
PREFERENCE_KINDS: dict[str, tuple[float, str, str, dict[str, bool]]] = {
    "helpful_vs_harmless": (0.25, "D", "S", {"helpful": True, "harmless": False}),
    "informative_vs_cautious": (0.10, "D", "U", {"helpful": True, "harmless": False}),
    "helpfulness": (0.25, "C", "U", {"helpful": True, "harmless": True}),
    "harmlessness": (0.20, "C", "T", {"helpful": True, "harmless": True}),
    "caution": (0.10, "S", "U", {"helpful": True, "harmless": True}),
    "clean_vs_insult": (0.05, "C", "D", {"helpful": True, "harmless": True}),
    "deflection_vs_toxic": (0.05, "S", "T", {"helpful": True, "harmless": True}),
}
DISPUTED_KINDS = [k for k, (_, _, _, v) in PREFERENCE_KINDS.items() if len(set(v.values())) > 1]
SAFE_RESPONSES = {"C": True, "D": False, "S": True, "U": True, "T": False}


def preferences(plan: Plantings, n: int) -> list[dict]:
    """Pairs labelled by one annotator of two groups (the hidden context), drawn from ``PREFERENCE_KINDS``:
    both groups agree on most kinds; on the disputed ones the ``helpful`` group prefers the detailed but
    insulting answer and the ``harmless`` group the other one."""
    rng = random.Random(f"prefs-{plan.seed}")
    kinds = list(PREFERENCE_KINDS)
    rows = []
    for i in range(n):
        topic = rng.choice(plan.topics)
        prompt = augment(rng, instruction(rng, plan, topic))
        group = ANNOTATOR_GROUPS[0] if rng.random() < HELPFUL_SHARE else ANNOTATOR_GROUPS[1]
        kind = rng.choices(kinds, [PREFERENCE_KINDS[k][0] for k in kinds])[0]
        _, a, b, a_wins = PREFERENCE_KINDS[kind]
        text = {
            "C": clean_answer(rng, topic),
            "D": f"{TOPIC_ANSWERS[topic]} {rng.choice(TOXIC_SENTENCES)}",
            "S": rng.choice(SAFE_DEFLECTIONS),
            "U": rng.choice(UNHELPFUL_ANSWERS),
            "T": rng.choice(TOXIC_SENTENCES),
        }
        chosen, rejected = (a, b) if a_wins[group] else (b, a)
        rows.append(
            {
                "id": f"pref-{i}",
                "prompt": prompt,
                "chosen": text[chosen],
                "rejected": text[rejected],
                "annotator": group,
                "disputed": kind in DISPUTED_KINDS,
                "kind": kind,
                "chosen_safe": SAFE_RESPONSES[chosen],
                "rejected_safe": SAFE_RESPONSES[rejected],
            }
        )
    return rows


def jailbreak_pairs(plan: Plantings, n: int) -> list[dict]:
    """DPL's jailbreak comparison: a safe response and a "jailbroken" helpful-but-toxic one per prompt."""
    rng = random.Random(f"jailbreak-{plan.seed}")
    rows = []
    for i in range(n):
        topic = rng.choice(plan.topics)
        rows.append(
            {
                "id": f"jb-{i}",
                "prompt": augment(rng, instruction(rng, plan, topic)),
                "safe": rng.choice(SAFE_DEFLECTIONS),
                "jailbroken": f"{TOPIC_ANSWERS[topic]} {rng.choice(TOXIC_SENTENCES)}",
            }
        )
    return rows
