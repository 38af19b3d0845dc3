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
