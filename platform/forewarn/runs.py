"""Comparing runs in MLflow: the headline metrics of an experiment's recent runs, side by side.

    forewarn runs compare forewarn-reversegen            # or just: forewarn runs compare reversegen
    forewarn runs compare reversegen --metric 'final_*' --max-runs 20 --json

Each forewarn run is tagged (``forewarn.tracking`` and the jobs) with its job, config hash, git commit and,
where it has them, model and testbed names; :func:`compare` reads those tags and the last value of the
headline metrics of each job (or of the metric patterns given) into one table. The MLflow UI stays the
main view; this is the quick look from a terminal, e.g. on the head node of a cluster.
"""

from __future__ import annotations

import fnmatch
from typing import Any

import pandas as pd

from forewarn.config import TrackingConfig
from forewarn.errors import ConfigError
from forewarn.tracking import resolve_tracking_uri

# job -> metric name patterns (fnmatch) that summarise a run; other jobs show all their metrics.
HEADLINE: dict[str, list[str]] = {
    "reversegen": ["final_asr", "final_self_bleu", "planted_recall", "asr_ratio"],
    "goodtriever": ["*.planted.emt", "*.planted.toxicity_prob", "*.planted.ppl"],
    "contrastive": ["top10_planted_fraction", "proposed_planted"],
    "recurrence_detector": ["test.*"],
    "recurrence_sweep": ["best_score", "n_trials"],
    "generate": ["n_generations", "tokens"],
    "train": ["final_*", "eval_*"],
}
TAG_COLUMNS = {
    "job": "forewarn.job",
    "config_hash": "forewarn.config_hash",
    "git_commit": "forewarn.git_commit",
    "testbed": "forewarn.testbed",
}
MAX_METRIC_COLUMNS = 12


def _experiment(client: Any, name: str) -> Any:
    exp = client.get_experiment_by_name(name) or client.get_experiment_by_name(f"forewarn-{name}")
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise ConfigError(
            f"experiment {name!r} (or forewarn-{name}) does not exist in the tracking store; "
            f"experiments: {', '.join(names) or 'none'} (MLFLOW_TRACKING_URI / --tracking-uri "
            "picks the store)"
        )
    return exp


def _metric_columns(runs: list[Any], patterns: list[str] | None) -> list[str]:
    present: list[str] = []
    for r in runs:
        present += [m for m in sorted(r.data.metrics) if m not in present]
    if patterns is None:
        jobs = [r.data.tags.get("forewarn.job") for r in runs]
        by_count = sorted({j for j in jobs if j}, key=lambda j: (-jobs.count(j), j))  # the main job's first
        patterns = [p for j in by_count for p in HEADLINE.get(j, [])]
        if not patterns or not any(fnmatch.fnmatchcase(m, p) for m in present for p in patterns):
            return present[:MAX_METRIC_COLUMNS]
    return [m for p in patterns for m in present if fnmatch.fnmatchcase(m, p)]


def compare(
    experiment: str, tracking_uri: str | None = None, max_runs: int = 10, metrics: list[str] | None = None
) -> pd.DataFrame:
    """One row per recent run (newest first): identity tags, then the headline metric columns.

    ``experiment`` is an MLflow experiment name, or a job name (``reversegen`` -> ``forewarn-reversegen``).
    ``metrics`` are name patterns (``final_*``); by default the headline metrics of the runs' jobs.
    ``tracking_uri`` defaults to MLFLOW_TRACKING_URI, then the local ``sqlite:///mlflow.db``.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri or resolve_tracking_uri(TrackingConfig()))
    exp = _experiment(client, experiment)
    runs = client.search_runs(
        [exp.experiment_id], max_results=max_runs, order_by=["attributes.start_time DESC"]
    )
    columns = _metric_columns(runs, metrics)
    rows = []
    for r in runs:
        tags = r.data.tags
        row: dict[str, Any] = {
            "run_id": r.info.run_id,
            "run_name": r.info.run_name,
            "status": r.info.status,
            "start": pd.Timestamp(r.info.start_time, unit="ms").strftime("%Y-%m-%d %H:%M UTC"),
        }
        row.update({col: tags.get(tag) for col, tag in TAG_COLUMNS.items()})
        row["git_commit"] = (row["git_commit"] or "")[:10] or None
        models = {
            k.removeprefix("forewarn.model."): v for k, v in tags.items() if k.startswith("forewarn.model.")
        }
        row["models"] = ", ".join(f"{k}={_short(v)}" for k, v in sorted(models.items())) or None
        row.update({m: r.data.metrics.get(m) for m in columns})
        rows.append(row)
    return pd.DataFrame(
        rows, columns=["run_id", "run_name", "status", "start", *TAG_COLUMNS, "models", *columns]
    )


def _short(path: str) -> str:
    """A model path as it reads in a table: the last two path parts (``.../target`` of a testbed cache)."""
    parts = [p for p in str(path).replace("\\", "/").split("/") if p]
    return "/".join(parts[-2:]) if len(parts) > 2 else str(path)


def render(df: pd.DataFrame, title: str) -> str:
    """The comparison as a text table (rich), as wide as its cells: metrics with 4 significant digits."""
    from io import StringIO

    from rich.console import Console
    from rich.table import Table

    shown = [c for c in df.columns if c != "run_id"]
    rows = []
    for _, row in df.iterrows():
        cells = [str(row["run_id"])[:8]]
        for c in shown:
            v = row[c]
            cells.append(
                "-"
                if v is None or (isinstance(v, float) and pd.isna(v))
                else f"{v:.4g}"
                if isinstance(v, float)
                else str(v)
            )
        rows.append(cells)
    headers = ["run", *shown]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    table = Table(title=title, title_justify="left")
    for h in headers:
        table.add_column(
            h, no_wrap=True, justify="right" if h in shown and pd.api.types.is_float_dtype(df[h]) else "left"
        )
    for cells in rows:
        table.add_row(*cells)
    out = StringIO()
    Console(file=out, width=sum(widths) + 3 * len(widths) + 1, force_terminal=False, color_system=None).print(
        table
    )
    return out.getvalue()
