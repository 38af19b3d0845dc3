"""Kind → spec-class registry for the pluggable parts of the guarded generator.

A registry maps a config ``kind`` to ``"module:Class"``; the class is a :class:`forewarn.config.Section`
with a ``kind`` literal and a ``build(generator)`` method. Classes are imported only when a config
uses their kind, so a capability's heavy imports (faiss for Goodtriever, a second model for DExperts)
cost nothing until it is configured. Adding a mitigation or a detector is one line in a registry dict.
"""

from __future__ import annotations

import importlib

from forewarn.config import Section


def load_spec_class(kinds: dict[str, str], kind: object, field: str) -> type[Section]:
    """The spec class registered for ``kind``; a ValueError naming ``field`` and the valid kinds otherwise."""
    if not isinstance(kind, str) or kind not in kinds:
        raise ValueError(f"{field} = {kind!r}: expected one of {', '.join(sorted(kinds))}")
    module, _, name = kinds[kind].partition(":")
    cls = getattr(importlib.import_module(module), name)
    if not (isinstance(cls, type) and issubclass(cls, Section) and hasattr(cls, "build")):
        raise TypeError(
            f"{kinds[kind]} (registered for kind {kind!r}) must be a Section with a build() method"
        )
    return cls
