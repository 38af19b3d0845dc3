"""A scripted analyst: it stands in for an instruction-tuned LLM where none is available (tests, CPU demos).

Serve it with :class:`forewarn.testing.openai_server.OpenAIServer` and point the analysis at it with
``backend: openai``, so the whole analyst path (prompt files, the openai client, budget, parsing, re-asks)
runs. What it does with a ``propose`` request, reading only the request text:

- it parses the two example lists (``- divergence X | prompt: P | ...``: the most, then the least divergent)
  and extracts each prompt's subject by matching the question phrasings it was given
  (:meth:`ScriptedRecombiner.subject`);
- hypothesis 1 claims the models diverge on the subjects of the most divergent examples: its test prompts
  ask about those subjects, its controls about the subjects of the least divergent examples;
- hypothesis 2 is planted to be false: it claims the models diverge on the subjects of the *least*
  divergent examples, tested against other low-divergence subjects.

Each cycle it words the prompts with the next phrasings, so re-proposals bring new evidence. ``topics``
requests are rated by word overlap, ``conclude`` requests summarised from the listed findings. The first
``malformed`` answers are junk, to exercise the re-ask path.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from forewarn.contrastive.scripted import ScriptedRecombiner

EXAMPLE = re.compile(r"^- divergence (\S+) \| prompt: (.+?) \| continuation:", re.MULTILINE)
TOPICS_LINE = re.compile(r"^Topics: (.+)$", re.MULTILINE)
NUMBERED = re.compile(r"^(\d+)\. divergence [^|]+\| prompt: (.+?) \| continuation: (.*)$", re.MULTILINE)
FINDING = re.compile(r"^- \[(\w+)\] (.+?) \(", re.MULTILINE)


class ScriptedAnalyst:
    """An OpenAI-server responder that answers the analysis prompts (see the module docstring)."""

    def __init__(
        self, templates: Sequence[str], n_subjects: int = 3, n_prompts: int = 12, malformed: int = 0
    ):
        self.subjects = ScriptedRecombiner(templates)
        self.templates = list(templates)
        self.n_subjects, self.n_prompts, self.malformed = n_subjects, n_prompts, malformed
        self.calls = 0
        self.kinds: list[str] = []

    def __call__(self, req: Any) -> str:
        self.calls += 1
        users = (
            [m["content"] for m in req.prompt if m.get("role") == "user"]
            if isinstance(req.prompt, list)
            else [req.prompt]
        )
        request = users[0]  # the original request; later user turns are re-asks
        kind = (
            "propose"
            if "Task: propose" in request
            else "topics"
            if request.startswith("Rate how much")
            else "conclude"
            if "summary for a reviewer" in request
            else "unknown"
        )
        self.kinds.append(kind)
        if self.calls <= self.malformed:
            return "Interesting examples! I think the models differ somehow."
        if kind == "propose":
            return json.dumps({"hypotheses": self.propose(request)})
        if kind == "topics":
            return json.dumps(self.rate(request))
        if kind == "conclude":
            return json.dumps({"summary": self.conclude(request)})
        return "I do not understand this request."

    def _questions(self, subjects: list[str], offset: int) -> list[str]:
        out = []
        for i in range(self.n_prompts):
            t = self.templates[(offset + i) % len(self.templates)]
            out.append(t.format(e=subjects[i % len(subjects)]))
        return list(dict.fromkeys(out))

    def propose(self, request: str) -> list[dict[str, Any]]:
        most, _, least = request.partition("diverge LEAST")  # the two example lists of propose.txt
        high = list(dict.fromkeys(self.subjects.subject(p) for _, p in EXAMPLE.findall(most)))[
            : self.n_subjects
        ]
        low = list(dict.fromkeys(self.subjects.subject(p) for _, p in EXAMPLE.findall(least)))
        low = [s for s in low if s not in high]
        if not high or len(low) < 2:
            return []
        offset = (self.kinds.count("propose") - 1) * self.n_prompts
        half = len(low) // 2
        return [
            {
                "hypothesis": f"The models diverge most on prompts about {', '.join(high)}.",
                "topic": high[0],
                "rationale": "these subjects fill the top of the divergence ranking",
                "test_prompts": self._questions(high, offset),
                "control_prompts": self._questions(low, offset),
            },
            {
                "hypothesis": f"The models diverge most on prompts about {', '.join(low[:half])}.",
                "topic": low[0],
                "rationale": "planted to be false: these subjects sit at the bottom of the ranking",
                "test_prompts": self._questions(low[:half], offset),
                "control_prompts": self._questions(low[half:], offset + 1),
            },
        ]

    def rate(self, request: str) -> dict[str, Any]:
        topics = json.loads("[" + TOPICS_LINE.search(request).group(1) + "]")
        ratings = {}
        for num, prompt, cont in NUMBERED.findall(request):
            words = set(re.findall(r"[a-z]+", f"{prompt} {cont}".lower()))
            ratings[num] = {t: 10 if words & set(re.findall(r"[a-z]+", t.lower())) else 0 for t in topics}
        return {"ratings": ratings, "summaries": {t: f"rated by word overlap with {t!r}" for t in topics}}

    def conclude(self, request: str) -> str:
        found = FINDING.findall(request)
        parts = [f"{status}: {text}" for status, text in found if status != "proposed"]
        return "Tested hypotheses. " + " ".join(parts) if parts else "No hypothesis was decided."
