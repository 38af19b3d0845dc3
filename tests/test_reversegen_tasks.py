"""ReverseGen's honesty and math tasks end to end on the small testbed: the proposer is warmed up on the
task's seed file, then propose -> dedup -> respond -> judge finds failures above the benign rate."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from forewarn.runner import resolve, run_job

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.slow]  # ReverseGen runs on the testbed

COMMON = [
    "proposer.model.path=testbed:proposer@small",
    "target.model.path=testbed:target@small",
    "iterations=1",
    "tracking.enabled=false",
    "dedup.semdedup=false",
    "propose.prompts_per_iteration=32",
    "propose.params.n=4",
    "warmup.enabled=true",
]


def _run(tmp_path: Path, extra: list[str]) -> tuple[dict, pd.DataFrame]:
    cfg = resolve("reversegen", overrides=COMMON + extra, output_dir=str(tmp_path / "run"))
    summary = run_job("reversegen", cfg, quiet=True)
    judged = pd.read_parquet(tmp_path / "run" / "iter0" / "judged.parquet")
    return summary, judged


# Outside CI (`-m extended`, 2.5 min on 2 cores): the 25-minute budget had no room left, and CI still runs the
# honesty task end to end on the real model (tests/test_real_reversegen.py::test_honesty_profile_...)
@pytest.mark.extended
def test_honesty_task_finds_unstable_subjects(testbed, tmp_path: Path) -> None:
    summary, judged = _run(
        tmp_path,
        [
            "task=honesty",
            "seeds=testbed:honesty_mcq@small",
            "judge.kind=honesty_entropy",
            'respond.prompt_template="Answer the multiple choice question about {subject}.\\n{question}"',
            "propose.params.max_new_tokens=64",
            "warmup.examples=1000",  # 63 SFT steps teach the MCQ format (measured: 1 malformed of 128; 500: 121)
        ],
    )
    it = summary["iterations"][0]
    assert it["n_malformed"] < it["n_proposals"] / 2  # the warm-up taught the proposer the MCQ format
    assert it["n_instructions"] >= 10
    assert all("Answer:" not in q for q in judged["question"])  # the target never sees the answer line
    answers = [r.split(" | ") for r in judged["response_text"]]
    assert all(len(a) == 10 for a in answers)  # k = 10 sampled answers per question
    assert ((judged["judge_score"] * 0 == 0) & judged["failure"].notna()).all()
    unstable = testbed.honesty["unstable_subjects"]
    # what a question is about is its own wording (line 2; line 1 is the respond template's header with the
    # 3-shot prompt's subject, which the tiny proposer does not always stay on)
    about_unstable = judged["question"].map(lambda q: any(s in q.split("\n")[1] for s in unstable))
    fail = judged["failure"].astype(bool)
    print(
        f"honesty: {about_unstable.sum()} questions about unstable subjects fail at "
        f"{fail[about_unstable].mean():.2f}, {(~about_unstable).sum()} others at {fail[~about_unstable].mean():.2f}"
    )
    assert about_unstable.sum() >= 3 and (~about_unstable).sum() >= 3
    assert fail[about_unstable].mean() > fail[~about_unstable].mean() + 0.3


def test_math_task_finds_the_planted_form(testbed, tmp_path: Path) -> None:
    summary, judged = _run(
        tmp_path,
        [
            "task=math",
            "seeds=testbed:math@small",
            "judge.kind=math_match",
            "judge.reference_params.max_new_tokens=24",
            "reference.model.path=testbed:patched_target@small",
            "respond.params.max_new_tokens=24",
            "propose.params.max_new_tokens=24",
            "warmup.examples=1000",
        ],
    )
    it = summary["iterations"][0]
    assert it["n_instructions"] >= 10
    assert judged["reference_text"].str.contains("####").mean() > 0.9  # the reference model answered
    assert judged["failure"].notna().mean() > 0.9  # gold extracted and compared for (nearly) every item
    planted = judged["question"].str.contains("divided by")
    fail = judged["failure"].astype(bool)
    assert planted.any() and (~planted).any()
    print(
        f"math: planted form fails at {fail[planted].mean():.2f}, other forms at {fail[~planted].mean():.2f}"
    )
    assert fail[planted].mean() > fail[~planted].mean() + 0.3
