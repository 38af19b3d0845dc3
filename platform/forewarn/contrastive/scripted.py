"""A small scripted assistant for the divergence finder: it recombines the bank prompts it is shown.

It stands in for an instruction-tuned LLM where none is available (tests, CPU demos on the testbed). Serve
it with :class:`forewarn.testing.openai_server.OpenAIServer` and point the finder's assistant at it with
``backend: openai``, so the whole assistant path (request rendering, the openai client, parsing) runs.

What it does, and does not, know: it reads the shown prompts and their shown scores from the request
(``divergence i: X, input text i: TEXT``), picks a donor prompt with probability rising with its score
(``exp(score / 2)`` on the 0-10 scale), extracts the donor's subject by matching the question phrasings
it was given, and writes the subject into another phrasing. It never sees which topics are planted; all
it can exploit is the scores the finder shows it. Answers are JSON (``{"prompt 1": ..., ...}``); the first
``malformed`` answers are junk text, to exercise the finder's skip path.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections.abc import Sequence
from typing import Any

SHOWN_LINE = re.compile(r"divergence \d+: ([\d.]+), input text \d+: (.+)")


class ScriptedRecombiner:
    """An OpenAI-server responder (a callable of the request) that proposes ``k`` recombined prompts."""

    def __init__(self, templates: Sequence[str], k: int = 7, malformed: int = 0, temperature: float = 2.0):
        if not templates or any("{e}" not in t for t in templates):
            raise ValueError("templates must be question phrasings with an {e} slot for the subject")
        self.templates, self.k, self.malformed, self.temperature = list(templates), k, malformed, temperature
        self.calls = 0
        self.patterns = [
            re.compile("^" + re.escape(t).replace(re.escape("{e}"), r"(\w+)") + "$") for t in self.templates
        ]

    def subject(self, prompt: str) -> str:
        """The subject slot of a known phrasing, else the prompt's last word."""
        for pat in self.patterns:
            m = pat.match(prompt.strip())
            if m:
                return m.group(1)
        words = prompt.rstrip("?.!").split()
        return words[-1] if words else prompt

    def propose(self, shown: Sequence[tuple[float, str]], rng: random.Random) -> dict[str, str]:
        weights = [math.exp(s / self.temperature) for s, _ in shown]
        out: dict[str, str] = {}
        for i in range(1, self.k + 1):
            _, donor = rng.choices(list(shown), weights=weights)[0]
            out[f"prompt {i}"] = rng.choice(self.templates).format(e=self.subject(donor))
        return out

    def __call__(self, req: Any) -> str:
        self.calls += 1
        if self.calls <= self.malformed:
            return "I am not sure what you want me to do here."
        shown = [(float(s), t.strip()) for s, t in SHOWN_LINE.findall(req.text)]
        if not shown:
            return "I see no example prompts to work from."
        rng = random.Random(hashlib.sha1(f"{self.calls}\x1f{req.text}".encode()).hexdigest())
        return json.dumps(self.propose(shown, rng))
