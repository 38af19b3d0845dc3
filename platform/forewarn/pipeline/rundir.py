"""Run directories: the resolved config, Parquet tables, summary.json and stage markers, written atomically.

A job writes everything under one ``OUTPUT_DIR``. Each write goes to a temp file that is renamed into
place, so a crash never leaves a half-written table. ``mark_done`` / ``is_done`` record completed
stages, so a rerun with the same output dir resumes at the first incomplete stage.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel

from forewarn.config import to_yaml
from forewarn.errors import ForewarnError


class OutputDirError(ForewarnError):
    """The run directory cannot be created or written (read-only, permissions, full disk)."""


def unwritable(root: Path, e: OSError) -> OutputDirError:
    return OutputDirError(
        f"output dir {str(root)!r} is not writable ({e.strerror or e}); "
        "free space or fix its permissions, or pass another --output-dir"
    )


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it is renamed onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_table(path: str | Path, table: pa.Table) -> Path:
    # pandas-derived tables carry pandas' own dtype metadata, which another pandas version may not read
    # back (list<string>[pyarrow]); the Arrow schema alone describes the data.
    table = table.replace_schema_metadata(None)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def read_table(path: str | Path) -> pa.Table:
    return pq.read_table(path)


class RunDir:
    """The output directory of one job run."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def check_writable(self, probe_bytes: int = 1 << 16) -> None:
        """Write, flush and delete a probe file, so a read-only or full output dir stops a job before any
        work instead of at its first table; raises :class:`OutputDirError`."""
        fd, tmp = -1, ""
        try:
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".write-probe.", suffix=".tmp")
            os.write(fd, b"\0" * probe_bytes)
            os.fsync(fd)
        except OSError as e:
            raise unwritable(self.root, e) from None
        finally:
            if fd >= 0:
                os.close(fd)
            if tmp and os.path.exists(tmp):
                os.unlink(tmp)

    def write_config(self, cfg: BaseModel) -> Path:
        return write_text(self.path("config.yaml"), to_yaml(cfg))

    def write_table(self, name: str, table: pa.Table) -> Path:
        """Write ``name.parquet`` atomically and log the write (table, rows, time) in ``table_writes.jsonl``:
        the record of what each invocation (re)computed, which resume tests count."""
        path = write_table(self.path(f"{name}.parquet"), table)
        with self.path("table_writes.jsonl").open("a") as f:
            f.write(
                json.dumps(
                    {"table": name, "rows": table.num_rows, "pid": os.getpid(), "at": round(time.time(), 3)}
                )
                + "\n"
            )
        return path

    def table_writes(self, name: str | None = None) -> list[dict]:
        """The logged writes of every table (or of ``name``), oldest first."""
        p = self.path("table_writes.jsonl")
        rows = (
            [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.is_file() else []
        )
        return [r for r in rows if name is None or r["table"] == name]

    def read_table(self, name: str) -> pa.Table:
        return read_table(self.path(f"{name}.parquet"))

    def has_table(self, name: str) -> bool:
        return self.path(f"{name}.parquet").is_file()

    def write_summary(self, summary: dict) -> Path:
        return write_json(self.path("summary.json"), summary)

    def read_summary(self) -> dict:
        p = self.path("summary.json")
        return json.loads(p.read_text()) if p.is_file() else {}

    # stage markers: one JSON file listing completed stage names, rewritten atomically.
    def _stages(self) -> dict:
        p = self.path("stages.json")
        return json.loads(p.read_text()) if p.is_file() else {}

    def is_done(self, stage: str) -> bool:
        return stage in self._stages()

    def mark_done(self, stage: str, **info: Any) -> None:
        stages = self._stages()
        stages[stage] = info
        write_json(self.path("stages.json"), stages)
