"""The ``dpl`` job: the 1-D toy experiment, the evaluation of reward models, or both on the testbed.

forewarn dpl toy                 # Figure 1: three variants, plot + table + summary.json
forewarn dpl eval --set 'eval.models={mv: runs/rm-mv/model}'
forewarn dpl testbed             # train base / mean-and-variance / categorical on the testbed's
                                 # hidden-context preferences, then evaluate them all
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from forewarn.config import JobConfig
from forewarn.dpl.config import VARIANTS, EvalConfig, RewardConfig, ToyConfig, Variant
from forewarn.errors import ConfigError
from forewarn.pipeline.rundir import RunDir


class DPLJobConfig(JobConfig):
    mode: Literal["toy", "eval", "testbed"] = "toy"
    toy: ToyConfig = Field(default_factory=ToyConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    # mode=testbed: reward models trained here, then evaluated with ``eval``
    backbone: str = Field("testbed:target@small", description="HF causal LM whose body the reward models use")
    train_pairs: str = Field("testbed:preferences_train@small", description="(prompt, chosen, rejected) rows")
    variants: list[Variant] = Field(default_factory=lambda: list(VARIANTS))
    reward: RewardConfig = Field(default_factory=RewardConfig, description="shared by every variant")


CONFIG = DPLJobConfig


def run_toy_job(cfg: DPLJobConfig, rundir: RunDir, tracker: Any) -> dict[str, Any]:
    import pyarrow as pa

    # lazy: loads torch only when called
    from forewarn.dpl.toy import plot, run_toy, summarize, table_rows

    results = run_toy(cfg.toy, seed=cfg.seed)
    summary = summarize(results)
    rows = table_rows(results)
    rundir.write_table("toy_table", pa.Table.from_pylist(rows))
    fig = plot(results)
    fig.savefig(rundir.path("toy.png"), dpi=120)
    tracker.log_figure(fig, "toy.png")
    tracker.log_dict({"table": rows, "curves": results}, "toy_curves.json")
    tracker.log_metrics({k: float(v) for k, v in summary.items() if isinstance(v, (int, float))})
    tracker.log_metrics({f"heldout_nll.{k}": v for k, v in summary["heldout_nll"].items()})
    header = "| a | base û | MV μ̂ | MV σ̂ | categorical mean | categorical std |\n|---|---|---|---|---|---|\n"
    table_md = header + "".join(
        f"| {r['a']:.2f} | {r['base_utility']:.2f} | {r['mv_mean']:.2f} | {r['mv_std']:.3g} | "
        f"{r['categorical_mean']:.2f} | {r['categorical_std']:.3f} |\n"
        for r in rows
    )
    rundir.path("toy_table.md").write_text(table_md)
    print(table_md, flush=True)
    return {"mode": "toy", **summary, "plot": str(rundir.path("toy.png")), "table": rows}


def evaluate_models(models: dict[str, str], ecfg: EvalConfig, rundir: RunDir, tracker: Any) -> dict[str, Any]:
    """Score every model on the pairs (and jailbreak rows); per-pair tables land in the run dir."""
    # lazy: loads pandas, sklearn, torch, transformers only when called
    from forewarn.dpl.evaluate import evaluate_model

    # lazy: loads pandas, sklearn, torch, transformers only when called
    from forewarn.dpl.reward import RewardScorer

    # lazy: loads pandas, sklearn, torch, transformers only when called
    from forewarn.names import resolve_path

    # lazy: loads pandas only when called
    from forewarn.pipeline.stages import set_torch_threads

    # lazy: loads pandas, sklearn, torch, transformers only when called
    from forewarn.training.data import load_table

    set_torch_threads(ecfg.num_cpus)
    pairs = load_table(resolve_path(ecfg.pairs), "eval.pairs")
    jail = load_table(resolve_path(ecfg.jailbreak), "eval.jailbreak") if ecfg.jailbreak else None
    out: dict[str, Any] = {}
    for name, path in models.items():
        scorer = RewardScorer(path, ecfg.max_length, ecfg.max_prompt_length, ecfg.use_chat_template)
        tables, metrics = evaluate_model(scorer, pairs, jail, ecfg.alpha, ecfg.batch_size)
        for t, table in tables.items():
            rundir.write_table(f"eval_{name}_{t}", table)
        tracker.log_metrics({f"{name}.{k}": v for k, v in metrics.items() if isinstance(v, float)})
        out[name] = metrics
    return out


def run_testbed(cfg: DPLJobConfig, rundir: RunDir, tracker: Any) -> dict[str, Any]:
    # lazy: loads pandas, sklearn, torch, transformers only when called
    from forewarn.dpl.reward import train_reward

    # lazy: loads pandas, sklearn, torch, transformers only when called
    from forewarn.names import resolve_model, resolve_path

    backbone = resolve_model(cfg.backbone)
    models = {}
    for variant in cfg.variants:
        vcfg = cfg.reward.model_copy(update={"variant": variant})
        models[variant] = str(
            train_reward(
                vcfg,
                resolve_path(cfg.train_pairs),
                rundir.path(f"rm_{variant}"),
                tracker,
                model_path=backbone,
            )
        )
    return {"mode": "testbed", "models": models, "eval": evaluate_models(models, cfg.eval, rundir, tracker)}


def run(cfg: DPLJobConfig, rundir: RunDir, tracker: Any) -> dict[str, Any]:
    if cfg.mode == "toy":
        return run_toy_job(cfg, rundir, tracker)
    if cfg.mode == "testbed":
        return run_testbed(cfg, rundir, tracker)
    if not cfg.eval.models:
        raise ConfigError(
            "eval.models is empty: name the reward-model folders to evaluate, e.g. "
            "--set 'eval.models={mv: runs/rm/model}'"
        )
    return {"mode": "eval", "eval": evaluate_models(cfg.eval.models, cfg.eval, rundir, tracker)}
