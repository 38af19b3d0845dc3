"""The real-model profiles (``configs/smollm2/*.yaml``) on SmolLM2-135M-Instruct, at reduced size.

Each test loads a packaged profile exactly as ``python jobs/<job>.py --config configs/smollm2/<job>.yaml``
does, shrinks it with ``--set``-style overrides, runs the job and asserts what the profile is for -- not only
that it ran. The full-size figures (README, "On a real model") come from the same files without overrides.
What the reduced size cannot show is said at each test, which then asserts the strongest claim that can fail.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from forewarn.names import resolve_path
from forewarn.pipeline.prompt_files import read_prompts
from forewarn.pipeline.rundir import RunDir
from forewarn.runner import resolve, run_job

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ROOT / "configs" / "smollm2"
SMOLLM2 = "imported:smollm2-135m-instruct"
pytestmark = pytest.mark.slow  # each runs SmolLM2 for real on 2 cores (still part of the CI suite)


def profile(job: str, tmp: Path, *sets: str):
    """The packaged profile of ``job``, shrunk by ``sets``, writing under ``tmp`` with tracking off."""
    path = PROFILES / f"{job}.yaml"
    assert path.read_text().startswith(f"# forewarn-job: {job}\n")
    cfg = resolve(job, str(path), [*sets, "tracking.enabled=false"], str(tmp / "run"))
    assert cfg.target.model.path == SMOLLM2
    return cfg


def prompt_file(tmp: Path, name: str, prompts: list[str]) -> str:
    path = tmp / name
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return str(path)


def test_profiles_validate_and_name_their_job() -> None:
    """Every profile starts with its job line and resolves (prompt files present, names known)."""
    for path in sorted(PROFILES.glob("*.yaml")):
        first = path.read_text().splitlines()[0]
        assert first.startswith("# forewarn-job: "), path.name
        job = first.split(": ", 1)[1]
        if job == "serve":
            continue  # validated in tests/test_real_guard.py (a ServeConfig, not a job)
        resolve(job, str(path))
    for name in ("random_token_prompts.jsonl", "toxic_prompts.jsonl"):
        assert len(read_prompts(resolve_path(str(PROFILES / name)))) >= 40


# ---------------------------------------------------------------- loop search and detector


def test_loop_search_goal_is_rare_for_random_inputs(ray_local: str, tmp_path: Path) -> None:
    """Reduced: one seed, 20 individuals per method (the profile: 50). Too few to compare the arms (at full size
    on one seed the GA's first hit came at 22 generations, random search's at 32: one hit each in 30
    individuals, README), so the claim asserted is the calibration: random inputs rarely reach the goal
    (unlike the testbed goal's 35 %), and the GA spent the same budget on distinct individuals."""
    cfg = profile("recurrence_search", tmp_path, "search.max_evaluations=40")
    assert len(cfg.search.contexts) == 2 and cfg.search.hit_fraction == 1.0 and cfg.search.goal == "both"
    summary = run_job("recurrence_search", cfg, quiet=True)
    rows = RunDir(cfg.output_dir).read_table("experiences").to_pylist()
    random_rows = [r for r in rows if r["method"] == "random"]
    ga_rows = [r for r in rows if r["method"] == "ga"]
    assert len(random_rows) >= 10 and len(ga_rows) >= 10, summary  # budget in generations: 2 per individual
    assert sum(r["hit"] for r in random_rows) / len(random_rows) <= 0.15, summary
    assert len({tuple(r["token_ids"]) for r in ga_rows}) == len(ga_rows), (
        summary
    )  # the cache: no paid repeats


def test_detector_on_smollm2_generations(ray_local: str, tmp_path: Path) -> None:
    """Reduced: 60 prompts (the profile: 192), so the held-out split has ~15 answers; the floor is F1 0.6 and
    FPR at most 0.25 there (the full-size figures beside the paper's 0.87 / 2.59 % are in the README)."""
    prompts = read_prompts(str(PROFILES / "random_token_prompts.jsonl"))[:48]
    toxic = read_prompts(str(PROFILES / "toxic_prompts.jsonl"))[:12]
    cfg = profile(
        "recurrence_detector",
        tmp_path,
        f"data.prompt_files=[{prompt_file(tmp_path, 'random.jsonl', prompts)},"
        f"{prompt_file(tmp_path, 'toxic.jsonl', toxic)}]",
    )
    summary = run_job("recurrence_detector", cfg, quiet=True)
    assert 8 <= summary["n_recurrent"] <= summary["n_samples"] - 8, summary  # SmolLM2 both loops and does not
    stats = summary["classify_stats"]
    assert stats["f1"] >= 0.6 and stats["fpr"] <= 0.25, stats
