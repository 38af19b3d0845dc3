"""What the divergence finder says to its assistant, and how it reads the answers.

Requests come in two formats:

- ``chat`` (instruction-tuned or API models): messages built from a JSON prompt file with the original's
  schema (``system_start``, ``system_loop``, ``user_start``, ``user_end``, ``seed_demonstrations``, ...);
  the user turn lists the shown prompts as ``divergence i: X, input text i: TEXT``.
- ``list`` (small completion models such as the testbed proposer): a header line and numbered prompts,
  ending with the next open number for the model to continue.

Answers are parsed robustly: a JSON object (first ``{`` to its matching ``}``; keys containing "prompt"
ordered by the integer in the key), a JSON list of strings, ``{"prompts": [...]}``, or a numbered list
(``1. ...`` / ``2) ...``). Malformed answers give no prompts and a reason, never an exception.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from forewarn.contrastive.bank import BankEntry
from forewarn.errors import ConfigError
from forewarn.models.base import Chat

PROMPT_FILE_KEYS = (
    "system_start",
    "system_loop",
    "system_end",
    "user_start",
    "user_loop",
    "user_end",
    "seed_demonstrations",
    "custom_selection_criterion",
    "custom_selection_criterion_examples",
    "custom_selection_criterion_yes_response",
    "custom_selection_criterion_no_response",
)
_NUMBERED = re.compile(r"^\s*(?:prompt\s*)?(\d+)\s*[.):]\s*(.+?)\s*$", re.IGNORECASE)
_KEY_INT = re.compile(r"(\d+)")


@dataclass
class PromptFile:
    """The assistant's instructions (the original's JSON schema; unknown keys are errors)."""

    data: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.data.get(key, [] if key.endswith(("demonstrations", "examples")) else "")

    @classmethod
    def load(cls, path: str | None = None) -> "PromptFile":
        """Load ``path``, or the packaged default when it is None."""
        if path is None:
            text = (
                resources.files("forewarn.contrastive")
                .joinpath("prompts", "find_divergence.json")
                .read_text()
            )
            where = "the packaged find_divergence.json"
        else:
            p = Path(path)
            if not p.is_file():
                raise ConfigError(f"finder.prompt_file={path!r}: file does not exist")
            text, where = p.read_text(), f"finder.prompt_file={path!r}"
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{where}: not valid JSON ({e})") from None
        unknown = sorted(set(data) - set(PROMPT_FILE_KEYS))
        if unknown:
            raise ConfigError(f"{where}: unknown keys {unknown}; allowed: {', '.join(PROMPT_FILE_KEYS)}")
        return cls(data)


def shown_scores(entries: list[BankEntry], mode: str, rng: np.random.Generator) -> list[float]:
    """Divergences as shown to the assistant: rescaled to [0, 10], or random (an ablation)."""
    d = np.array([e.divergence for e in entries], dtype=np.float64)
    if mode == "random":
        return [float(x) for x in rng.uniform(0, 10, size=len(d))]
    lo, hi = (float(np.nanmin(d)), float(np.nanmax(d))) if len(d) else (0.0, 0.0)
    return [float(10 * (x - lo) / max(hi - lo, 1e-4)) for x in d]


def chat_request(pf: PromptFile, shown: list[BankEntry], mode: str, rng: np.random.Generator) -> Chat:
    """System and user messages listing the shown prompts with their (rescaled) divergences."""
    scores = shown_scores(shown, mode, rng)
    lines = []
    for i, (e, s) in enumerate(zip(shown, scores), 1):
        text = " ".join(e.prompt.split())
        shown_score = "" if mode == "hidden" else f"divergence {i}: {s:.2f}, "
        lines.append(f"{shown_score}input text {i}: {text}")
    system = pf["system_start"] + pf["system_loop"]
    user = pf["user_start"] + "\n".join(lines) + pf["user_end"]
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def list_request(header: str, shown: list[BankEntry]) -> tuple[str, int]:
    """A numbered list for a completion model to continue; returns (text, the open item number)."""
    lines = [header] + [f"{i}. {' '.join(e.prompt.split())}" for i, e in enumerate(shown, 1)]
    nxt = len(shown) + 1
    return "\n".join(lines + [f"{nxt}."]), nxt


# ---------------------------------------------------------------- parsing


def _matching_brace(text: str, start: int) -> int | None:
    """Index of the ``}`` closing the ``{`` at ``start`` (string literals and escapes respected)."""
    depth, in_str, esc = 0, False, False
    for i in range(start, len(text)):
        ch = text[i]
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
    return None


def first_json_object(text: str) -> Any | None:
    """The first ``{...}`` object in ``text`` (first ``{`` to its matching ``}``), parsed; None if there is none
    or it is not valid JSON. Model answers often wrap their JSON in prose or code fences."""
    start = (text or "").find("{")
    end = _matching_brace(text, start) if start >= 0 else None
    if end is None:
        return None
    try:
        return json.loads(text[start : end + 1])
    except json.JSONDecodeError:
        return None


def _from_json(obj: Any) -> list[str] | None:
    if isinstance(obj, list):
        return [str(x) for x in obj if isinstance(x, str)]
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("prompts"), list):
        return [str(x) for x in obj["prompts"] if isinstance(x, str)]
    keyed = [
        (k, v)
        for k, v in obj.items()
        if ("prompt" in k.lower() or "response" in k.lower()) and isinstance(v, str)
    ]
    if not keyed:
        return None

    def order(item: tuple[str, str]) -> int:
        m = _KEY_INT.search(item[0])
        return int(m.group(1)) if m else 10**9

    return [v for _, v in sorted(keyed, key=order)]


def parse_prompts(text: str, open_item: int | None = None) -> tuple[list[str], str | None]:
    """Prompts in an assistant answer, and why none were found (None when some were).

    ``open_item`` is the number the request left open in the list format: the answer's first line is
    then that item's text, and later numbered lines are further items.
    """
    text = text or ""
    start = text.find("{")
    if start >= 0:
        end = _matching_brace(text, start)
        if end is not None:
            try:
                found = _from_json(json.loads(text[start : end + 1]))
            except json.JSONDecodeError:
                found = None
            if found:
                return _clean(found), None
    lb, rb = text.find("["), text.rfind("]")
    if 0 <= lb < rb:
        try:
            found = _from_json(json.loads(text[lb : rb + 1]))
        except json.JSONDecodeError:
            found = None
        if found:
            return _clean(found), None
    items: list[str] = []
    lines = text.splitlines()
    if open_item is not None and lines and not _NUMBERED.match(lines[0]):
        items.append(lines[0])
        lines = lines[1:]
    for line in lines:
        m = _NUMBERED.match(line)
        if m:
            items.append(m.group(2))
        elif open_item is not None:
            break  # a completion model left the list: the rest is noise
    items = _clean(items)
    if items:
        return items, None
    return [], f"no JSON prompts and no numbered list in the answer: {text[:120]!r}"


def _clean(items: list[str]) -> list[str]:
    out = []
    for s in items:
        s = " ".join(str(s).split()).strip().strip('"').strip()
        if s and s not in out:
            out.append(s)
    return out


def parse_yes_no(text: str, yes: str = "yes", no: str = "no") -> float | None:
    """1.0 if the first 5 lower-cased characters hold ``yes``, 0.0 for ``no``, None if neither."""
    head = (text or "").strip().lower()[:5]
    if yes.lower() in head:
        return 1.0
    if no.lower() in head:
        return 0.0
    return None
