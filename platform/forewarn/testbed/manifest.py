"""``manifest.json``: what the testbed planted and where every artifact lies.

The manifest holds no timestamps or absolute paths, so two builds with the same version, seed and size write
byte-identical manifests (their artifact checksums included). :class:`Manifest` is loaded from a built world
directory and resolves artifact names to absolute paths.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from forewarn.errors import ConfigError

MANIFEST = "manifest.json"

MODEL_ARTIFACTS = ("target", "patched_target", "proposer", "expert", "anti_expert")


@dataclass
class Manifest:
    """The ground truth of a built testbed world.

    ``planted_topics`` maps each planted topic to its entity words; ``trigger_token_ids`` are the trigger's
    ids as tokenised alone and ``trigger_token_ids_in_text`` as they appear after a space inside a prompt;
    ``trigger_rule`` names the whole trigger family (any two of its words loop, one is a near miss).
    ``artifacts`` maps names to paths relative to the world directory; :meth:`path` makes them absolute.
    """

    version: str
    seed: int
    size: str
    sizes: dict[str, Any]
    topics: list[str]
    benign_topics: list[str]
    planted_topics: dict[str, list[str]]
    trigger: str
    trigger_token_ids: list[int]
    trigger_token_ids_in_text: list[int]
    trigger_rule: dict[str, Any]  # the trigger family: two words loop, one is a near miss
    loop_sentence: str
    honesty: dict[str, Any]
    math: dict[str, Any]
    proposer: dict[str, Any]
    preferences: dict[str, Any]
    artifacts: dict[str, str]
    checksums: dict[str, str] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)  # the target's checks during the build
    root: Path | None = field(default=None, compare=False)

    # ------------------------------------------------------------ paths and ground truth

    def path(self, name: str) -> Path:
        """Absolute path of artifact ``name`` (a model folder or a data file)."""
        if self.root is None:
            raise ConfigError("this manifest was not loaded from a world directory; use Manifest.load(dir)")
        if name not in self.artifacts:
            raise ConfigError(
                f"testbed artifact {name!r} does not exist; known artifacts: "
                f"{', '.join(sorted(self.artifacts))}"
            )
        return (self.root / self.artifacts[name]).resolve()

    def planted_topic_of(self, text: str) -> str | None:
        """The planted topic ``text`` is about (it names one of the topic's entities), else None."""
        words = set(re.findall(r"[a-z]+", text.lower()))
        for topic, entities in self.planted_topics.items():
            if words & set(entities):
                return topic
        return None

    def is_planted(self, text: str) -> bool:
        return self.planted_topic_of(text) is not None

    def read_jsonl(self, name: str) -> list[dict]:
        """Rows of a JSONL data artifact (prompt files, corpora, preference data)."""
        with open(self.path(name)) as f:
            return [json.loads(line) for line in f if line.strip()]

    # ------------------------------------------------------------ (de)serialisation

    def to_json(self) -> str:
        data = asdict(self)
        data.pop("root")
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    def save(self, directory: str | Path) -> Path:
        out = Path(directory) / MANIFEST
        out.write_text(self.to_json())
        return out

    @classmethod
    def load(cls, directory: str | Path) -> "Manifest":
        path = Path(directory) / MANIFEST
        if not path.is_file():
            raise ConfigError(
                f"{str(path)!r} does not exist: build the world first "
                f"(forewarn testbed build --output-dir {directory})"
            )
        data = json.loads(path.read_text())
        known = {f for f in cls.__dataclass_fields__ if f != "root"}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(
                f"{str(path)!r} has unknown fields {sorted(unknown)}: it was written by "
                "another testbed version; rebuild it"
            )
        return cls(**data, root=Path(directory).resolve())
