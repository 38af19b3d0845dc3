"""Shared pytest fixtures.

``testbed``: the ``small`` planted-failure world, built once per machine and reused from the cache
(``$FOREWARN_CACHE/testbed`` or ``~/.cache/forewarn/testbed``; a file lock keeps concurrent sessions from
building it twice). Returns its :class:`forewarn.testbed.Manifest`; ``testbed.path("target")`` is a HF folder.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def testbed():
    from forewarn.testbed import build_testbed

    return build_testbed(size="small", seed=0, progress=False)


# The longest test files, longest first (from `--durations` of the slow subset on 2 cores): collected first,
# so pytest-xdist's file-by-file scheduling starts them early and its two workers finish together instead of
# one running a 7-minute file alone at the end. Every other file keeps its place after these.
LONGEST_FIRST = (
    "test_reversegen_job.py",
    "test_training.py",
    "test_reversegen_tasks.py",
    "test_dpl_testbed.py",
    "test_vllm_backend.py",
    "test_real_reversegen.py",
    "test_real_profiles.py",
    "test_train_worker_dies.py",
    "test_serve_vllm.py",
    "test_real_guard.py",
    "test_recurrence_testbed.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: k for k, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FIRST)))  # stable: files stay whole
