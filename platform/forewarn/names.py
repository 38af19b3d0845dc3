"""Model and data names that jobs accept, resolved to local paths in one place.

    testbed:target[@small]          a planted-failure testbed model (built on first use)
    testbed:<artifact>[@small]      a testbed data file (prompts, corpora, preferences)
    imported:smollm2-135m-instruct  a real model imported by ``forewarn models import``
    anything else                   a local folder or a hub id already in the local HF cache

Only job files, the CLI and the Serve app builder call these; library code takes the resolved paths.
"""

from __future__ import annotations

from forewarn.models.gguf_import import PREFIX as IMPORTED_PREFIX
from forewarn.models.gguf_import import resolve_imported
from forewarn.testbed import build as testbed

TESTBED_PREFIX = testbed.PREFIX


def resolve_model(name: str, size: str = "full", seed: int = 0) -> str:
    """A model name to its local folder (``testbed:`` or ``imported:``); other names are returned as is."""
    if name.startswith(IMPORTED_PREFIX):
        return resolve_imported(name)
    return testbed.resolve_model(name, size=size, seed=seed)


def resolve_path(name: str, size: str = "full", seed: int = 0) -> str:
    """A data name (``testbed:<artifact>``) to its local file; other names are returned as is."""
    return testbed.resolve_path(name, size=size, seed=seed)


def is_named(name: str) -> bool:
    """Whether ``name`` is one of the prefixed names this module resolves."""
    return name.startswith((TESTBED_PREFIX, IMPORTED_PREFIX))
