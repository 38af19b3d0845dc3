"""Model divergence and DPL on a real model: the packaged SmolLM2-135M-Instruct profiles
(``configs/smollm2/contrastive*.yaml``, ``configs/smollm2/dpl.yaml``) at a reduced size, each asserting its
finding beside a baseline measured in the same run.

- contrastive: a copy of SmolLM2 fine-tuned (``forewarn train sft``) to answer cooking questions as a pirate and
  other questions as before; the contrastive job must rank held-out cooking questions above the others (AUC
  over the two topics, whose chance level is 0.5, and the top half of the ranking against the 50 % base rate);
- dpl: a mean-and-variance reward model on SmolLM2 learns the testbed's hidden-context preferences: it ranks the
  agreed pairs right, and its r² of the hidden context is lower on the disputed pairs (where the two annotator
  groups disagree) than on the agreed ones, the baseline. The jailbreak comparison is reported, not asserted:
  on SmolLM2 the risk-averse reward did not prefer the jailbroken answers less often than the same model's
  mean reward (README).

The finder (an assistant proposing new prompts) and the three-variant comparison are full-size claims
(README, "On a real model"); at this size the tests score the seeds (``mode=decode``) and train one variant.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from forewarn.runner import resolve, run_job

# slow, and past CI's budget (about 6 min together on 2 cores): `pytest -m extended` runs them
pytestmark = [pytest.mark.usefixtures("ray_local", "smollm2_dir"), pytest.mark.slow, pytest.mark.extended]

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ROOT / "configs" / "smollm2"
SMOLLM2 = "imported:smollm2-135m-instruct"


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _interleave(rows: list[dict], per_topic: int) -> list[dict]:
    """The first ``per_topic`` rows of each topic, alternating cooking / other."""
    cooking = [r for r in rows if r["topic"] == "cooking"][:per_topic]
    other = [r for r in rows if r["topic"] != "cooking"][:per_topic]
    return [r for pair in zip(cooking, other) for r in pair]


def auc(scores: list[float], positive: list[bool]) -> float:
    """P(a positive outscores a negative), ties counting half (0.5: the ranking ignores the topic)."""
    pos = [s for s, p in zip(scores, positive) if p]
    neg = [s for s, p in zip(scores, positive) if not p]
    wins = sum((a > b) + 0.5 * (a == b) for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


# ---------------------------------------------------------------- contrastive decoding


def test_divergence_ranks_the_fine_tuned_topic_first(tmp_path: Path) -> None:
    """Reduced: SFT for 4 steps of 8 rows (16 cooking + 16 other, lr 2e-4, 64 tokens; the profile: 20 steps over
    80 rows at 5e-5), then 16 held-out questions (8 per topic) scored over 8 generated tokens (the profile: 48
    seeds, 20 tokens, and 5 finder cycles). Measured at this size: AUC 0.98, 7 of the top 8 on cooking; with
    SmolLM2 as its own comparison every divergence is 0 and the AUC 0.5."""
    sft_rows = _interleave(_rows(PROFILES / "contrastive_sft.jsonl"), 16)
    sft = resolve(
        "train",
        str(PROFILES / "contrastive-sft.yaml"),
        [
            f"data.train={_write(tmp_path / 'sft.jsonl', sft_rows)}",
            "sft.max_steps=4",
            "sft.lr=2.0e-4",
            "sft.max_length=64",
            "sft.max_prompt_length=32",
            "tracking.enabled=false",
        ],
        str(tmp_path / "sft"),
    )
    assert sft.model == SMOLLM2 and sft.task == "sft"
    run_job("train", sft, quiet=True)

    seeds = _interleave(_rows(PROFILES / "contrastive_prompts.jsonl"), 8)
    cfg = resolve(
        "contrastive",
        str(PROFILES / "contrastive.yaml"),
        [
            "mode=decode",
            f"prompts={_write(tmp_path / 'seeds.jsonl', seeds)}",
            f"comparison.model.path={tmp_path / 'sft' / 'model'}",
            "decoder.max_new_tokens=8",
            "tracking.enabled=false",
        ],
        str(tmp_path / "cd"),
    )
    assert cfg.start.model.path == SMOLLM2
    summary = run_job("contrastive", cfg, quiet=True)
    ranked = pd.read_parquet(tmp_path / "cd" / "prompts.parquet").sort_values("rank")
    topic = {r["prompt"]: r["topic"] == "cooking" for r in seeds}
    cooking = [topic[p] for p in ranked["prompt"]]
    score = auc(list(ranked["divergence"]), cooking)
    top = sum(cooking[: len(cooking) // 2]) / (len(cooking) // 2)
    print(
        f"AUC {score:.3f} (chance 0.5); top half cooking {top:.2f} (base rate 0.5); {summary['divergence']}"
    )
    print(ranked[["divergence", "prompt", "response"]].to_string(max_colwidth=60))
    assert len(ranked) == 16, summary
    assert score >= 0.9, (score, ranked[["divergence", "prompt"]].to_dict("records"))
    assert top >= 0.75, (top, ranked[["divergence", "prompt"]].to_dict("records"))


# ---------------------------------------------------------------- DPL


@pytest.mark.usefixtures("testbed")
def test_dpl_on_smollm2_sees_the_hidden_context(tmp_path: Path) -> None:
    """Reduced: the mean-and-variance variant only (the profile: three variants), 40 steps of 4 pairs as in the
    profile but without the chat template (SmolLM2's template doubles each sequence with its system prompt);
    the held-out sets are the profile's (80 pairs, 60 jailbreak pairs). Measured at this size: agreed accuracy
    0.96, r² 0.20 on disputed vs 0.41 on agreed pairs (the full profile: 0.09 vs 0.38). Fewer steps do not
    separate: 16 steps at 1e-4 gave 0.25 vs 0.32, 20 steps at 1e-4 with the template 0.32 vs 0.37. Trained on
    the agreed pairs alone (no hidden context) it measured 0.69 vs 0.71 and failed."""
    cfg = resolve(
        "dpl",
        str(PROFILES / "dpl.yaml"),
        [
            "variants=[mean_and_variance]",
            "reward.use_chat_template=false",
            "eval.use_chat_template=false",
            "tracking.enabled=false",
        ],
        str(tmp_path / "dpl"),
    )
    assert cfg.backbone == SMOLLM2 and cfg.mode == "testbed"
    summary = run_job("dpl", cfg, quiet=True)
    mv = summary["eval"]["mean_and_variance"]
    print({k: round(v, 3) for k, v in mv.items() if isinstance(v, float)})
    assert mv["accuracy_agreed"] >= 0.9, mv
    assert mv["r2_disputed"] <= mv["r2_agreed"] - 0.1, mv
