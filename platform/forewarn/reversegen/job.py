"""The ReverseGen job: warm up the proposer, then iterate propose -> dedup -> respond -> judge -> pairs
-> DPO, and (optionally) enhance the target on what was found.

    python jobs/reversegen.py                         # the testbed, on a laptop
    ray job submit --working-dir . -- python jobs/reversegen.py --config configs/reversegen-llama2.yaml

Writes OUTPUT_DIR/iter{k}/*.parquet, checkpoints/proposer_{k}, summary.json
(``{"iterations": [{"iteration", "asr", "self_bleu", "n_instructions", "n_failures", ...}], ...}``) and
logs the same to MLflow with a plot of ASR and Self-BLEU by iteration.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from forewarn import pools as fp
from forewarn.config import RayConfig, TrackingConfig, config_hash
from forewarn.errors import ForewarnError
from forewarn.pipeline.rundir import RunDir
from forewarn.placement import JobLayout
from forewarn.reversegen.config import (
    EnhanceConfig,
    ReverseGenConfig,
    model_paths,
    reference_role,
    uses_reference,
)
from forewarn.reversegen.enhance import enhance_target
from forewarn.reversegen.loop import IterationContext, Roles, run_iteration
from forewarn.reversegen.proposer import build_prompt, completion_text, read_seeds

CONFIG = ReverseGenConfig
# Every inference role is a long-lived pool (forewarn.pools.RolePools), up for the whole run: the DPO steps,
# the warm-up and target enhancement train beside them, in the CPUs the pools' scaled asks leave
# (forewarn.pools.cpu_scale) and the GPUs they leave.
PLACEMENT = JobLayout(resident=("proposer", "embedder", "target", "judge", "reference"))


def resolve_names(cfg: ReverseGenConfig) -> tuple[ReverseGenConfig, Any]:
    """Testbed names -> local paths; returns the config and the testbed manifest (or None)."""
    # lazy: loads torch, transformers only when called
    from forewarn.names import resolve_model, resolve_path

    cfg = cfg.model_copy(deep=True)
    manifest = testbed_manifest(cfg.target.model.path)
    cfg.proposer.model.path = resolve_model(cfg.proposer.model.path)
    cfg.target.model.path = resolve_model(cfg.target.model.path)
    if cfg.reference is not None:
        cfg.reference.model.path = resolve_model(cfg.reference.model.path)
    if uses_reference(cfg) and cfg.judge.reference_model is not None:
        cfg.judge.reference_model.path = resolve_model(cfg.judge.reference_model.path)
    cfg.seeds = resolve_path(cfg.seeds)
    return cfg, manifest


def testbed_manifest(name: str) -> Any:
    """The manifest of the testbed world a ``testbed:<model>[@size]`` name points into, else None."""
    # lazy: loads torch, transformers only when called
    from forewarn.testbed import Manifest, resolve_path

    if not name.startswith("testbed:"):
        return None
    size = name.split("@", 1)[1] if "@" in name else None
    return Manifest.load(Path(resolve_path("testbed:manifest" + (f"@{size}" if size else ""))).parent)


def warmup(cfg: ReverseGenConfig, rundir: RunDir, seeds: list[dict], tracker: Any) -> str:
    """SFT the proposer on 3-shot prompts whose target is a 4th seed (ReverseGen step 1)."""
    # lazy: loads torch, transformers only when called
    from forewarn.training.api import train_sft

    out = rundir.path("checkpoints", "proposer_warmup")
    if rundir.is_done("warmup"):
        return str(out / "model")  # what training returned: its HF folder (OUTPUT_DIR/model)
    rng = random.Random(f"warmup-{cfg.seed}")
    rows = []
    for _ in range(cfg.warmup.examples):
        picked = rng.sample(seeds, cfg.propose.shots + 1)
        subject = picked[0].get("subject", "")
        rows.append(
            {
                "prompt": build_prompt(cfg.task, [p["instruction"] for p in picked[:-1]], subject),
                "target": completion_text(cfg.task, picked[-1]["instruction"]),
            }
        )
    path = train_sft(cfg.warmup.train, rows, out, tracker, model_path=cfg.proposer.model.path)
    rundir.mark_done("warmup", path=str(path))
    return str(path)


def dpo_round(cfg: ReverseGenConfig, rundir: RunDir, k: int, policy: str, pairs: Any, tracker: Any) -> str:
    """DPO of the proposer on iteration k's pairs; the reference is the proposer that sampled them."""
    # lazy: loads torch, transformers only when called
    from forewarn.training.api import train_dpo

    key = f"iter{k}/dpo"
    out = rundir.path("checkpoints", f"proposer_{k + 1}")
    if rundir.is_done(key):
        return str(out / "model")  # what train_dpo returned: its HF folder (OUTPUT_DIR/model)
    rows = [
        {
            "prompt": r.prompt,
            "chosen": completion_text(cfg.task, r.chosen),
            "rejected": completion_text(cfg.task, r.rejected),
        }
        for r in pairs.itertuples()
    ]
    path = train_dpo(cfg.dpo, rows, reference_model_path=policy, output_dir=out, tracker=tracker)
    rundir.mark_done(key, path=str(path), pairs=len(rows))
    return str(path)


def role_resources(cfg: ReverseGenConfig) -> tuple[dict[str, Any], float]:
    """The roles this run holds as long-lived pools, with their resources, and the CPUs its training steps
    need while the pools are up (the largest of warm-up, DPO and enhancement)."""
    res = {"proposer": cfg.proposer.resources, "target": cfg.target.resources, "judge": cfg.judge.resources}
    if cfg.dedup.semdedup:
        res["embedder"] = cfg.embedder
    if uses_reference(cfg):
        res["reference"] = reference_role(cfg).resources
    trains = (
        [cfg.dpo]
        + ([cfg.warmup.train] if cfg.warmup.enabled else [])
        + ([cfg.enhance_target.train] if cfg.enhance_target.enabled else [])
    )
    return res, max(t.num_workers * t.cpus_per_worker for t in trains)


def make_roles(cfg: ReverseGenConfig, pools: Any, policy: str) -> Roles:
    """This iteration's roles as plain functions over the run's pools; the proposer serves ``policy`` (its pool
    reloads the weights when the policy changed since its last call)."""

    proposer = cfg.proposer.model.model_copy(update={"path": policy})
    return Roles(
        propose=fp.generator(pools, "proposer", proposer),
        respond=fp.generator(pools, "target", cfg.target.model),
        judge=fp.judge(pools, "judge", cfg.judge),
        embed=fp.embedder(pools, "embedder", cfg.dedup.embedder) if cfg.dedup.semdedup else None,
        reference=fp.generator(pools, "reference", reference_role(cfg).model)
        if uses_reference(cfg)
        else None,
        clock=pools.seconds,
    )


def iterate(
    cfg: ReverseGenConfig,
    rundir: RunDir,
    tracker: Any,
    pools: Any,
    run_id: str,
    seeds: list[dict],
    policy: str,
    topic_of: Any,
    summary: dict[str, Any],
) -> tuple[str, str | None]:
    """The rounds of propose -> judge -> DPO; appends each round's metrics (with its stage timings) to
    ``summary["iterations"]``; returns the last policy and why the loop stopped early (or None)."""
    for k in range(cfg.iterations):
        ctx = IterationContext(cfg, rundir, run_id, k, seeds, make_roles(cfg, pools, policy), topic_of)
        metrics, judged, pairs = run_iteration(ctx)
        metrics["timing"] = ctx.timing
        summary["iterations"].append(metrics)
        tracker.log_metrics(
            {k2: v for k2, v in metrics.items() if isinstance(v, (int, float))}
            | {f"time/{st}/{kind}": v for st, t in ctx.timing.items() for kind, v in t.items()},
            step=k,
        )
        print(
            f"[reversegen] iteration {k}: asr={metrics['asr']:.3f} self_bleu={metrics['self_bleu']:.3f} "
            f"instructions={metrics['n_instructions']} failures={metrics['n_failures']} "
            f"pairs={metrics['n_pairs']} stage seconds: "
            + ", ".join(f"{st} {t['wall_s']:.1f}" for st, t in ctx.timing.items() if "wall_s" in t),
            flush=True,
        )
        rundir.write_summary(summary)  # partial summaries survive a crash
        if metrics["n_instructions"] == 0:
            return policy, (
                f"iteration {k}: none of the {metrics['n_proposals']} proposals was a well-formed "
                f"{cfg.task} item, so nothing was judged; the loop stops here. Warm the proposer up "
                f"on the task's format (warmup.enabled=true, more warmup.examples or epochs)."
            )
        if k == cfg.iterations - 1 and not cfg.train_last:
            break
        if len(pairs) == 0:
            return policy, (
                f"iteration {k} gave no preference pairs (no prompt had both a failing and a passing "
                f"instruction): the loop stops here. Sample more per prompt (propose.params.n) or "
                f"more prompts (propose.prompts_per_iteration)."
            )
        start = time.perf_counter()
        policy = dpo_round(cfg, rundir, k, policy, pairs, tracker)
        ctx.timing["dpo"] = {"wall_s": time.perf_counter() - start}
        tracker.log_metrics({"time/dpo/wall_s": ctx.timing["dpo"]["wall_s"]}, step=k)
    return policy, None


def stage_totals(iterations: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Seconds per stage and kind, summed over iterations (stages read back on resume count nothing)."""
    out: dict[str, dict[str, float]] = {}
    for m in iterations:
        for stage, t in m.get("timing", {}).items():
            for kind, v in t.items():
                if kind != "resumed":
                    out.setdefault(stage, {}).setdefault(kind, 0.0)
                    out[stage][kind] = round(out[stage][kind] + v, 3)
    return out


def plot_iterations(iterations: list[dict], tracker: Any, rundir: RunDir) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [m["iteration"] for m in iterations]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(ks, [m["asr"] for m in iterations], "o-", color="tab:red", label="ASR")
    ax.set_xlabel("iteration")
    ax.set_ylabel("attack success rate", color="tab:red")
    ax.set_xticks(ks)
    ax2 = ax.twinx()
    ax2.plot(ks, [m["self_bleu"] for m in iterations], "s--", color="tab:blue", label="Self-BLEU")
    ax2.set_ylabel("Self-BLEU (lower = more diverse)", color="tab:blue")
    fig.tight_layout()
    fig.savefig(rundir.path("asr_self_bleu.png"), dpi=120)
    tracker.log_figure(fig, "plots/asr_self_bleu.png")
    plt.close(fig)


def run(cfg: ReverseGenConfig, rundir: RunDir, tracker: Any) -> dict[str, Any]:
    cfg, manifest = resolve_names(cfg)
    tracker.set_tags(
        {f"forewarn.model.{k}": str(v) for k, v in model_paths(cfg).items()}
        | (
            {"forewarn.testbed": f"{manifest.version}/{manifest.size}/seed{manifest.seed}"}
            if manifest
            else {}
        )
    )
    seeds = read_seeds(cfg.seeds, cfg.task)
    # Row ids (and the per-row sampling seeds derived from them) hang on the experiment, not on where it
    # is written: the same config reproduces the same rows in any output dir, resumed or not.
    # Target enhancement runs after the loop and changes none of its rows, so it is not part of the key.
    run_id = config_hash(
        cfg.model_copy(
            update={
                "output_dir": "",
                "tracking": TrackingConfig(),
                "ray": RayConfig(),
                "enhance_target": EnhanceConfig(),
            }
        )
    )
    previous = rundir.read_summary().get("run_key")
    if previous is not None and previous != run_id:
        raise ForewarnError(
            f"output dir {str(rundir.root)!r} holds a run of a different config (run key "
            f"{previous}, this config {run_id}); resuming would mix them. Use a new --output-dir."
        )

    start = time.perf_counter()
    policy = warmup(cfg, rundir, seeds, tracker) if cfg.warmup.enabled else cfg.proposer.model.path
    warmup_s = time.perf_counter() - start
    topic_of = manifest.planted_topic_of if manifest is not None and cfg.task == "safety" else None
    summary: dict[str, Any] = {"run_key": run_id, "task": cfg.task, "iterations": []}
    resources, train_cpus = role_resources(cfg)
    with fp.RolePools(resources, reserve_cpus=train_cpus) as pools:
        policy, stop_reason = iterate(cfg, rundir, tracker, pools, run_id, seeds, policy, topic_of, summary)
        if stop_reason:
            print(f"[reversegen] {stop_reason}", flush=True)
        pools.release(
            "proposer", "embedder", "reference"
        )  # the loop is over; enhancement needs target and judge
        first, last = summary["iterations"][0], summary["iterations"][-1]
        summary.update(
            final_asr=last["asr"],
            final_self_bleu=last["self_bleu"],
            final_proposer=policy,
            asr_ratio=(last["asr"] / first["asr"]) if first["asr"] else None,
            stop_reason=stop_reason,
        )
        if manifest is not None and cfg.task == "safety":
            found = {t for m in summary["iterations"] for t in m.get("planted_topics_found", [])}
            summary["planted_topics"] = sorted(manifest.planted_topics)
            summary["planted_topics_found"] = sorted(found)
            summary["planted_recall"] = len(found) / len(manifest.planted_topics)
        if cfg.enhance_target.enabled:

            def respond_with(path: str) -> Any:  # the run's target pool, reloaded for the enhanced weights
                return fp.generator(pools, "target", cfg.target.model.model_copy(update={"path": path}))

            start = time.perf_counter()
            summary["enhance_target"] = enhance_target(
                cfg, rundir, tracker, respond_with, fp.judge(pools, "judge", cfg.judge)
            )
            summary["enhance_target"]["wall_s"] = round(time.perf_counter() - start, 3)
        roles = pools.stats()
    summary["model_loads"] = {role: r["loads"] for role, r in roles.items()}
    summary["timing"] = {
        "warmup_s": round(warmup_s, 3),
        "stages": stage_totals(summary["iterations"]),
        "roles": roles,
    }
    tracker.log_metrics(
        {f"loads/{role}": n for role, n in summary["model_loads"].items()}
        | {f"role/{role}/{k}": v for role, r in roles.items() for k, v in r.items()}
    )
    tracker.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float)) and v is not None})
    plot_iterations(summary["iterations"], tracker, rundir)
    for k in range(len(summary["iterations"])):
        tracker.log_artifact(rundir.path(f"iter{k}"), f"tables/iter{k}")
    return summary
