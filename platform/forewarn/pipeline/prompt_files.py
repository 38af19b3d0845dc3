"""Reading a prompt file, one set of rules for every job that takes ``prompts=FILE``.

JSONL / JSON list / Parquet rows (strings, or mappings with the first present of ``prompt``,
``instruction``, ``text``, ``question``) or a text file with one prompt per non-empty line.
"""

from __future__ import annotations

import json
from pathlib import Path

from forewarn.errors import ConfigError

PROMPT_COLUMNS = ("prompt", "instruction", "text", "question")
SUFFIXES = (".jsonl", ".json", ".parquet", ".txt")


def read_prompts(path: str, field: str = "prompts") -> list[str]:
    """The prompts in ``path``; a ``ConfigError`` naming ``field`` when the file is missing or unreadable."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{field}={path!r}: file does not exist")
    if p.suffix == ".txt":
        return [line for line in p.read_text().splitlines() if line.strip()]
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq  # only for Parquet prompt files

        rows = pq.read_table(p).to_pylist()
    elif p.suffix == ".json":
        rows = json.loads(p.read_text())
    elif p.suffix == ".jsonl":
        rows = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    else:
        raise ConfigError(f"{field}={path!r}: expected a {', '.join(SUFFIXES)} file")
    out = []
    for r in rows:
        if isinstance(r, str):
            out.append(r)
            continue
        col = next((c for c in PROMPT_COLUMNS if c in r), None)
        if col is None:
            raise ConfigError(f"{field}={path!r}: a row has none of the columns {list(PROMPT_COLUMNS)}: {r}")
        out.append(str(r[col]))
    return out
