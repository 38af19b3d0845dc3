"""Fault: the output directory cannot be written (read-only, or its disk full). The job stops before any Ray
work with exit code 1 and one line that names the directory, and leaves nothing half-written behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from forewarn.testing.faults import full_disk, read_only_dir
from forewarn.testing.fixtures import missing

ROOT = Path(__file__).resolve().parents[2]


ENTRIES = {  # the job file and the console command share one error path (forewarn.runner.resolve_and_run)
    "job file": [sys.executable, "jobs/generate.py"],
    "forewarn CLI": [sys.executable, "-m", "forewarn.cli", "generate"],
}


def run_generate(out: Path, entry: str = "job file") -> subprocess.CompletedProcess:
    cmd = [*ENTRIES[entry], "--output-dir", str(out), "--set", "tracking.enabled=false"]
    return subprocess.run(
        cmd,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def assert_clear_stop(res: subprocess.CompletedProcess, out: Path) -> None:
    assert res.returncode == 1, res.stderr[-2000:]
    assert "Traceback" not in res.stderr, res.stderr[-2000:]
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("forewarn: generate failed: output dir") and repr(str(out)) in lines[0], lines[
        0
    ]


@pytest.mark.parametrize(
    ("where", "entry"),
    [("the dir itself", "job file"), ("its parent", "job file"), ("its parent", "forewarn CLI")],
)
def test_read_only_output_dir_stops_before_work(tmp_path: Path, fault_report, where: str, entry: str) -> None:
    with read_only_dir(tmp_path / "ro") as ro:
        if ro is None:
            missing("this machine cannot make a directory unwritable for this user")
        out = ro if where == "the dir itself" else ro / "run"
        res = run_generate(out, entry)
        left = sorted(p.name for p in ro.iterdir())
    assert_clear_stop(res, out)
    assert left == [], f"written into a read-only dir: {left}"
    fault_report(
        f"output dir read-only ({where}, {entry})", half_written_files=len(left), exit_code=res.returncode
    )


def test_full_disk_stops_before_work(tmp_path: Path, fault_report) -> None:
    with full_disk(tmp_path / "disk") as disk:
        if disk is None:
            missing("mounting a small tmpfs needs root (CAP_SYS_ADMIN) here")
        out = disk / "run"
        res = run_generate(out)
        left = sorted(str(p.relative_to(disk)) for p in disk.rglob("*"))
    assert_clear_stop(res, out)
    assert "No space left on device" in res.stderr
    assert left in (["filler"], ["filler", "run"]), f"half-written files on the full disk: {left}"
    fault_report(
        "output dir on a full disk",
        half_written_files=len(left) - 1 - ("run" in left),
        exit_code=res.returncode,
    )
