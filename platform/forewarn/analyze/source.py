"""The contrastive run an analysis starts from: where it is, what it holds, and how to score new prompts
exactly as it did.

``source`` names the run in one of two ways:

- its **output directory** (``runs/contrastive``): ``config.yaml``, ``prompts.parquet`` and
  ``samples.parquet`` are read in place;
- its **MLflow run id** (32 hex digits): those artifacts are downloaded from the tracking store
  (``MLFLOW_TRACKING_URI``, else ``tracking.tracking_uri``) into ``OUTPUT_DIR/source/`` first.

New prompts are scored with the source run's own models and decoder settings (so their divergences are
comparable with the run's), on a long-lived role pool (both models loaded once) of contrastive decoders
(:class:`forewarn.contrastive.scoring.PoolScorer`).
"""

from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from forewarn.config import Resources, build_config
from forewarn.contrastive.config import ContrastiveConfig
from forewarn.contrastive.decoder import DecodedSample, prompt_means
from forewarn.contrastive.divergence import divergence_name
from forewarn.contrastive.scoring import PoolScorer
from forewarn.errors import ConfigError

REQUIRED = ("config.yaml", "prompts.parquet", "samples.parquet")
# where the contrastive job logs each file in MLflow -> the name it has in a run dir
MLFLOW_ARTIFACTS = {
    "config.yaml": "config.yaml",
    "tables/prompts.parquet": "prompts.parquet",
    "tables/samples.parquet": "samples.parquet",
    "summary.json": "summary.json",
}
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class Example:
    """A prompt of the source run as the analyst sees it, with its strongest continuation."""

    prompt: str
    divergence: float
    response: str
    top_tokens: list[tuple[str, float]] = field(default_factory=list)
    sample: dict | None = None  # its samples.parquet row (token-level evidence for the report)


@dataclass
class SourceRun:
    """A finished contrastive run: its config, ranked prompts and token-level samples."""

    ref: str
    root: Path
    mlflow_run_id: str | None
    config: Any  # forewarn.contrastive.job.ContrastiveConfig, as the run wrote it (names unresolved)
    prompts: list[dict]
    samples: list[dict]
    summary: dict

    @property
    def divergence_name(self) -> str:
        d = self.config.decoder
        return self.summary.get("divergence") or divergence_name(
            d.start_weight, d.comparison_weight, d.metric
        )

    def best_sample(self, prompt: str) -> dict | None:
        """The sample of ``prompt`` with the highest mean divergence."""
        pool = [s for s in self.samples if s["prompt"] == prompt and math.isfinite(s["divergence_mean"])]
        return max(pool, key=lambda s: s["divergence_mean"], default=None)

    def examples(self, n_top: int, n_low: int = 0, n_tokens: int = 3) -> tuple[list[Example], list[Example]]:
        """The ``n_top`` most and ``n_low`` least divergent prompts (disjoint), as analyst examples."""
        ranked = sorted(
            (p for p in self.prompts if math.isfinite(p["divergence"])), key=lambda p: -p["divergence"]
        )
        top = ranked[:n_top]
        low = ranked[max(len(top), len(ranked) - n_low) :] if n_low else []
        return [self._example(p, n_tokens) for p in top], [self._example(p, n_tokens) for p in reversed(low)]

    def _example(self, row: dict, n_tokens: int) -> Example:
        s = self.best_sample(row["prompt"])
        toks: list[tuple[str, float]] = []
        if s is not None:
            start = int(s.get("n_prompt_tokens") or 0)
            pairs = list(zip(s["tokens"], s["token_divergences"]))[start:]
            toks = sorted(((t, float(v)) for t, v in pairs if math.isfinite(v)), key=lambda x: -x[1])[
                :n_tokens
            ]
        return Example(
            prompt=row["prompt"],
            divergence=float(row["divergence"]),
            response=str(row.get("response") or (s or {}).get("text", "")),
            top_tokens=toks,
            sample=s,
        )


def locate(
    ref: str,
    dest: Path,
    tracking_uri: str | None = None,
    job: str = "contrastive",
    artifacts: dict[str, str] | None = None,
    required: tuple[str, ...] = REQUIRED,
    field: str = "source",
) -> tuple[Path, str | None]:
    """The local run dir of ``ref``: a directory holding ``required``, or the MLflow run id of a ``job`` run
    whose ``artifacts`` (MLflow path -> file name) are downloaded into ``dest``. Returns (dir, run id)."""
    if check_ref(ref, job, required, field):
        return Path(ref), None
    return _download(ref, dest, tracking_uri, job, artifacts or MLFLOW_ARTIFACTS, required, field), ref


def check_ref(
    ref: str, job: str = "contrastive", required: tuple[str, ...] = REQUIRED, field: str = "source"
) -> bool:
    """True for a run directory holding ``required``, False for an MLflow run id; anything else is a
    ConfigError (checked before any Ray work or download)."""
    path = Path(ref)
    if path.is_dir():
        missing = [f for f in required if not (path / f).is_file()]
        if missing:
            raise ConfigError(
                f"{field}={ref!r}: the directory lacks {missing}; pass the output dir of a finished {job} run"
            )
        return True
    if not _RUN_ID.match(ref):
        raise ConfigError(
            f"{field}={ref!r}: neither an existing directory nor an MLflow run id (32 hex digits); "
            f"pass the output dir or the MLflow run id of a {job} run"
        )
    return False


def _download(
    run_id: str,
    dest: Path,
    tracking_uri: str | None,
    job: str,
    artifacts: dict[str, str],
    required: tuple[str, ...],
    field: str,
) -> Path:
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as e:
        raise ConfigError(
            f"{field}={run_id!r}: no such MLflow run in {tracking_uri!r} "
            f"({str(e).splitlines()[0]}); set MLFLOW_TRACKING_URI to the store that has it"
        ) from None
    tagged = run.data.tags.get("forewarn.job")
    if tagged != job:
        raise ConfigError(f"{field}={run_id!r}: an MLflow run of job {tagged!r}, not a {job} run")
    dest.mkdir(parents=True, exist_ok=True)
    for artifact, name in artifacts.items():
        try:
            got = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=artifact, tracking_uri=tracking_uri, dst_path=str(dest / ".dl")
            )
        except (MlflowException, OSError) as e:
            if name in required:
                raise ConfigError(
                    f"{field}={run_id!r}: the run has no artifact {artifact!r} ({e}); was it "
                    f"logged by a finished {job} run?"
                ) from None
            continue
        shutil.move(got, dest / name)
    shutil.rmtree(dest / ".dl", ignore_errors=True)
    return dest


def load_source(ref: str, dest: Path, tracking_uri: str | None = None) -> SourceRun:
    """Locate and read a contrastive run (see the module docstring)."""
    import pyarrow.parquet as pq

    root, run_id = locate(ref, dest, tracking_uri)
    cfg = build_config(
        ContrastiveConfig,
        yaml.safe_load((root / "config.yaml").read_text()) or {},
        source=f"{root / 'config.yaml'}",
    )
    summary_path = root / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    prompts = pq.read_table(root / "prompts.parquet").to_pylist()
    samples = pq.read_table(root / "samples.parquet").to_pylist()
    if not prompts:
        raise ConfigError(f"source={ref!r}: prompts.parquet is empty; nothing to analyse")
    return SourceRun(ref, root, run_id, cfg, prompts, samples, summary)


class ExperimentScorer:
    """Scores new prompts with the source run's models and decoder on a long-lived role pool (both models loaded once).

    ``cfg`` is the source run's config with its names resolved to local paths (the job file resolves them,
    ``forewarn.contrastive.job.resolve_names``); ``manifest`` is its testbed's, or None. ``__call__(prompts)``
    returns one entry per prompt: its prefix-mean divergence and its strongest sample.
    """

    def __init__(self, cfg: Any, manifest: Any = None, resources: Resources | None = None):
        self.manifest = manifest
        self.scorer = PoolScorer(cfg.start.model, cfg.comparison.model, cfg.decoder, resources or cfg.scoring)

    def close(self) -> None:
        self.scorer.close()

    def stats(self) -> dict[str, float | int]:
        return self.scorer.stats()

    def __call__(self, prompts: list[str]) -> list[tuple[float, DecodedSample | None]]:
        samples = self.scorer(prompts)
        means = prompt_means(samples)
        best: dict[int, DecodedSample] = {}
        for s in samples:
            if s.prompt_index not in best or s.divergence_mean > best[s.prompt_index].divergence_mean:
                best[s.prompt_index] = s
        return [(means.get(i, math.nan), best.get(i)) for i in range(len(prompts))]

    def planted_topic(self, text: str) -> str | None:
        """Testbed sources: the planted topic ``text`` names (one of its entities or the topic's own name),
        else None. Ground truth for the report and the tests; the analyst never sees it."""
        if self.manifest is None:
            return None
        words = set(re.findall(r"[a-z]+", text.lower()))
        named = next((t for t in self.manifest.planted_topics if t in words), None)
        return self.manifest.planted_topic_of(text) or named
