"""The fault suite: every test here carries the ``faults`` marker, names its fault and reports the rows the
fault cost (``fault_report(fault, lost=, duplicated=)``); the terminal summary lists them all."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.faults)


@pytest.fixture
def fault_report(record_property: Callable[[str, object], None]) -> Callable[..., None]:
    """``fault_report("worker node removed mid-run", lost=0, duplicated=0, rows=96)``: printed and kept for the
    suite's summary. ``lost``/``duplicated`` are None where the fault concerns no rows."""

    def report(fault: str, lost: int | None = None, duplicated: int | None = None, **extra: object) -> None:
        fields = " ".join(
            f"{k}={v}"
            for k, v in {"rows_lost": lost, "rows_duplicated": duplicated, **extra}.items()
            if v is not None
        )
        line = f"FAULT {fault}: {fields or 'no rows involved'}"
        print(line)
        record_property("fault", line)

    return report


def pytest_terminal_summary(terminalreporter) -> None:
    lines = [
        f"{value} [{rep.outcome}]"
        for key in ("passed", "failed")
        for rep in terminalreporter.stats.get(key, [])
        if getattr(rep, "when", "") == "call"
        for name, value in getattr(rep, "user_properties", [])
        if name == "fault"
    ]
    if lines:
        terminalreporter.write_sep("=", "fault suite")
        for line in lines:
            terminalreporter.write_line(line)
