"""Running a job: resolve the config, start (or join) Ray, open the run dir and the tracker, call the job.

Job files (``jobs/*.py``) and the CLI both go through :func:`job_main` / :func:`run_job`, so a bad config
exits 2 with one message and no traceback everywhere. A job is a module with ``CONFIG`` (its pydantic
class) and ``run(cfg, rundir, tracker) -> dict`` (the summary); :data:`JOBS` maps job names to modules.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
from types import ModuleType
from typing import Any

from forewarn.config import JobConfig, RayConfig, load_config, to_yaml
from forewarn.errors import ConfigError, ForewarnError
from forewarn.pipeline.rundir import RunDir, unwritable, write_text
from forewarn.tracking import make_tracker

# job name -> module with CONFIG and run(); capabilities add their line when they land.
JOBS: dict[str, str] = {
    "train": "forewarn.training.job",
    "dpl": "forewarn.dpl.job",
    "contrastive": "forewarn.contrastive.job",
    "analyze": "forewarn.analyze.job",
    "goodtriever": "forewarn.goodtriever.job",
    "generate": "forewarn.pipeline.generate_job",
    "recurrence_search": "forewarn.recurrence.job",
    "recurrence_sweep": "forewarn.recurrence.sweep_job",
    "recurrence_detector": "forewarn.recurrence.detector_job",
    "reversegen": "forewarn.reversegen.job",
}


DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def job_module(job: str) -> ModuleType:
    if job not in JOBS:
        raise ConfigError(f"unknown job {job!r}; valid jobs: {', '.join(sorted(JOBS))}")
    return importlib.import_module(JOBS[job])


def resolve(
    job: str, config: str | None = None, overrides: list[str] | None = None, output_dir: str | None = None
) -> JobConfig:
    """The job's resolved config (defaults < packaged < file < --set < --output-dir)."""
    sets = list(overrides or [])
    if output_dir is not None:
        sets.append(f"output_dir={output_dir}")
    return load_config(job_module(job).CONFIG, job=job, path=config, overrides=sets)


def init_ray(cfg: RayConfig) -> None:
    """Join the cluster named by ``ray.address`` / RAY_ADDRESS (``ray job submit`` sets it), else start a
    local Ray with the configured CPUs/GPUs."""
    import ray

    if ray.is_initialized():
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        # address="local": always a new Ray of our own; without it ray.init joins any `ray start` head it
        # finds on this machine (and then refuses num_cpus)
        ray.init(address="local", num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus, log_to_driver=True)


def open_rundir(path: str) -> RunDir:
    """The run directory, created and probed for writing before any Ray work (raises OutputDirError)."""
    from pathlib import Path

    try:
        rundir = RunDir(path)
    except OSError as e:
        raise unwritable(Path(path), e) from None
    rundir.check_writable()
    return rundir


def run_job(job: str, cfg: JobConfig, quiet: bool = False) -> dict[str, Any]:
    """Run a resolved job config end to end and return its summary (also in OUTPUT_DIR/summary.json)."""
    module = job_module(job)
    if not quiet:
        print(f"# forewarn {job}: resolved config\n{to_yaml(cfg)}", flush=True)
    rundir = open_rundir(cfg.output_dir)
    config_path = rundir.path("config.yaml")
    previous = config_path.read_text() if config_path.is_file() else None
    before = outputs_state(rundir)
    rundir.write_config(cfg)
    try:
        summary = _run(job, module, cfg, rundir, quiet)
    except BaseException:
        # a run that stops before writing any output (e.g. refused: the dir holds a run of another config)
        # leaves the dir as it found it, config.yaml included: it still describes the outputs beside it
        if previous is not None and outputs_state(rundir) == before:
            write_text(config_path, previous)
        raise
    return summary


def outputs_state(rundir: RunDir) -> tuple:
    """What a run has written so far: table writes, and the summary and stage markers' modification times."""
    stamp = [
        p.stat().st_mtime_ns if p.is_file() else None
        for p in (rundir.path("summary.json"), rundir.path("stages.json"))
    ]
    return len(rundir.table_writes()), *stamp


def _run(job: str, module: ModuleType, cfg: JobConfig, rundir: RunDir, quiet: bool) -> dict[str, Any]:
    init_ray(cfg.ray)
    from forewarn.placement import reserved  # colocation groups live as long as the run

    layout = getattr(module, "PLACEMENT", None)  # how the job holds its roles over time (JobLayout)
    with reserved(cfg, job, layout, echo=not quiet) as cfg, make_tracker(cfg.tracking, job, cfg) as tracker:
        summary = module.run(cfg, rundir, tracker)
        summary.setdefault("output_dir", str(rundir.root.resolve()))
        if tracker.run_id:
            summary.setdefault("mlflow_run_id", tracker.run_id)
        tracker.log_dict(summary, "summary.json")
        if tracker.gap is not None:  # the tracking server went away mid-run: say what MLflow lacks
            summary["tracking_gap"] = tracker.gap
        rundir.write_summary(summary)
    return summary


def fail(message: str) -> None:
    """Print one paragraph to stderr and exit 2 (config and usage errors)."""
    print(f"forewarn: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def job_main(job: str, argv: list[str] | None = None) -> dict[str, Any]:
    """Entry point of ``jobs/<job>.py``: ``--config FILE``, repeated ``--set a.b=c``, ``--output-dir``."""
    parser = argparse.ArgumentParser(prog=f"jobs/{job}.py", description=f"Run the forewarn {job} job.")
    parser.add_argument("--config", help="YAML file; overrides the packaged defaults")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one field by dotted path, e.g. --set target.resources.replicas=2",
    )
    parser.add_argument("--output-dir", help="run directory (a rerun with the same dir resumes)")
    args = parser.parse_args(argv)
    return resolve_and_run(job, args.config, args.overrides, args.output_dir)


def resolve_and_run(
    job: str, config: str | None, overrides: list[str], output_dir: str | None
) -> dict[str, Any]:
    """Resolve and run ``job`` for a command line (``jobs/<job>.py`` and every ``forewarn`` job command):
    a config error exits 2 with one paragraph; a run that fails the way runs fail (ForewarnError, a full or
    read-only disk) exits 1 with one line that says what to do; anything else is a bug and keeps its
    traceback."""
    try:
        cfg = resolve(job, config, overrides, output_dir)
    except ConfigError as e:
        fail(str(e))
    try:
        return run_job(job, cfg)
    except ConfigError as e:
        fail(str(e))
    except ForewarnError as e:
        print(f"forewarn: {job} failed: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    except OSError as e:
        if e.errno not in DISK_ERRNOS:
            raise
        # the disk filled up (or went read-only) mid-run: writes are atomic, so what is there is whole
        print(
            f"forewarn: {job} failed: cannot write {e.filename or cfg.output_dir!s}: {e.strerror}; "
            "free space and rerun with the same --output-dir to resume",
            file=sys.stderr,
        )
        raise SystemExit(1) from None
