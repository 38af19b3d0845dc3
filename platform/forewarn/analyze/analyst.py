"""Talking to the analyst model: prompt files, the call budget, and robust reading of its answers.

The analyst is any :class:`forewarn.models.base.Generator` (typically ``backend: openai``). Every request
goes through :meth:`Analyst.ask`, which

- checks the budget first (``max_calls``; ``max_tokens`` for the request plus the reply cap) and raises
  :class:`BudgetExhausted` rather than start a call that could overrun it;
- raises :class:`AnalystUnavailable` when the backend gives up on a request (HTTP 5xx / 429 / timeouts
  after the client's own retries, or a 401/404 that concerns every request);
- parses the answer with the given parser and, on a malformed answer, logs it and re-asks with the
  ``repair.txt`` prompt up to ``max_parse_retries`` times, then raises :class:`MalformedAnswer`.

The loop turns these into a clean stop with what was found so far (see :mod:`forewarn.analyze.loop`).
Prompts live in text files (``prompts/*.txt``) with ``$name`` placeholders (:class:`string.Template`, so
JSON braces need no escaping).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any, TypeVar

from forewarn.analyze.config import AnalystConfig, BudgetConfig, ExperimentConfig
from forewarn.contrastive.assistant_io import first_json_object
from forewarn.contrastive.bank import normalise
from forewarn.errors import BackendUnavailable, ConfigError
from forewarn.models.base import Chat, Generator

PROMPT_NAMES = ("system", "propose", "repair", "topics", "conclude")
_TOKEN = re.compile(r"\w+|[^\w\s]")
T = TypeVar("T")
Parser = Callable[[str], "tuple[Any, str | None]"]


class AnalystStop(Exception):
    """The analysis cannot go on with the analyst; ``reason`` is a short code for summary.json."""

    reason = "analyst_stop"


class BudgetExhausted(AnalystStop):
    reason = "budget"


class AnalystUnavailable(AnalystStop):
    reason = "analyst_error"


class MalformedAnswer(Exception):
    """No usable answer after the bounded re-asks (ends one request, not the analysis)."""


def count_tokens(text: str) -> int:
    """Tokens as counted against the budget: words and punctuation marks (the openai backend does not
    return usage; for English text this is within about 30% of a BPE tokenizer's count)."""
    return len(_TOKEN.findall(text or ""))


@dataclass
class Budget:
    """What the analyst may still spend; ``spend`` is called once per request made."""

    cfg: BudgetConfig
    calls: int = 0
    tokens: int = 0

    def check(self, request_tokens: int, reply_cap: int) -> None:
        if self.calls >= self.cfg.max_calls:
            raise BudgetExhausted(
                f"budget exhausted: {self.calls} analyst calls made, budget.max_calls={self.cfg.max_calls}"
            )
        if self.tokens + request_tokens + reply_cap > self.cfg.max_tokens:
            raise BudgetExhausted(
                f"budget exhausted: {self.tokens} tokens used; the next request ({request_tokens} tokens + up to "
                f"{reply_cap} for the reply) would pass budget.max_tokens={self.cfg.max_tokens}"
            )

    def spend(self, tokens: int) -> None:
        self.calls += 1
        self.tokens += tokens


@dataclass
class PromptSet:
    """The analyst's prompt templates, from the package or a user folder with the same file names."""

    templates: dict[str, Template]

    @classmethod
    def load(cls, folder: str | None = None) -> PromptSet:
        out = {}
        for name in PROMPT_NAMES:
            if folder is None:
                text = resources.files("forewarn.analyze").joinpath("prompts", f"{name}.txt").read_text()
            else:
                p = Path(folder) / f"{name}.txt"
                if not p.is_file():
                    raise ConfigError(
                        f"analysis.prompts_dir={folder!r}: {name}.txt is missing; it needs "
                        f"{', '.join(n + '.txt' for n in PROMPT_NAMES)}"
                    )
                text = p.read_text()
            out[name] = Template(text.strip())
        return cls(out)

    def render(self, name: str, **values: Any) -> str:
        try:
            return self.templates[name].substitute(**{k: str(v) for k, v in values.items()})
        except (KeyError, ValueError) as e:
            raise ConfigError(
                f"prompt {name}.txt: placeholder {e} cannot be filled; allowed: "
                f"{', '.join('$' + k for k in values)}"
            ) from None

    def chat(self, name: str, **values: Any) -> Chat:
        return [
            {"role": "system", "content": self.render("system")},
            {"role": "user", "content": self.render(name, **values)},
        ]


@dataclass
class Analyst:
    """The analyst model behind a budget, with bounded re-asks on malformed answers."""

    generator: Generator
    cfg: AnalystConfig
    budget: Budget
    prompts: PromptSet
    malformed: list[dict[str, Any]] = field(default_factory=list)

    def ask(self, chat: Chat, parse: Parser, what: str) -> Any:
        """Send ``chat``; return ``parse``'s value for the first usable answer (see the module docstring)."""
        messages = list(chat)
        for attempt in range(self.cfg.max_parse_retries + 1):
            text = self._call(messages)
            value, why = parse(text)
            if why is None:
                return value
            self.malformed.append({"request": what, "attempt": attempt, "reason": why, "text": text[:2000]})
            messages = list(chat) + [
                {"role": "assistant", "content": text},
                {"role": "user", "content": self.prompts.render("repair", reason=why)},
            ]
        raise MalformedAnswer(
            f"{what}: {self.cfg.max_parse_retries + 1} malformed answers in a row "
            f"(last: {self.malformed[-1]['reason']})"
        )

    def _call(self, messages: Chat) -> str:
        params = self.cfg.params
        request_tokens = sum(count_tokens(m.get("content", "")) for m in messages)
        self.budget.check(request_tokens, params.max_new_tokens)
        if params.seed is not None:  # a fixed seed would repeat the same answer on every re-ask
            params = params.model_copy(update={"seed": params.seed + self.budget.calls})
        try:
            comps = self.generator.generate([messages], params)[0]
        except BackendUnavailable as e:
            self.budget.spend(request_tokens)
            raise AnalystUnavailable(f"the analyst endpoint is unavailable: {e}") from None
        comp = comps[0]
        used = len(comp.token_ids) if comp.token_ids else count_tokens(comp.text)
        self.budget.spend(request_tokens + used)
        if not comp.ok:
            raise AnalystUnavailable(f"the analyst request failed: {comp.error}")
        return comp.text


# ---------------------------------------------------------------- answers


@dataclass
class Proposal:
    """A hypothesis with the experiment the analyst designed for it."""

    hypothesis: str
    topic: str
    rationale: str
    test_prompts: list[str]
    control_prompts: list[str]


def _prompts(value: Any, limit: int) -> list[str]:
    out, seen = [], set()
    for x in value if isinstance(value, list) else []:
        if isinstance(x, str) and x.strip() and normalise(x) not in seen:
            seen.add(normalise(x))
            out.append(" ".join(x.split()))
    return out[:limit]


def parse_hypotheses(text: str, k: int, exp: ExperimentConfig) -> tuple[list[Proposal] | None, str | None]:
    """The first ``k`` usable hypotheses of an answer, or None and why there are none.

    Accepts ``{"hypotheses": [...]}``, one hypothesis object or a bare list of them (in prose or code fences).
    An item needs a ``hypothesis`` sentence and at least ``min_prompts`` distinct test and control prompts;
    a prompt in both arms is dropped from the controls.
    """
    text = text or ""
    obj = first_json_object(text)
    items = obj.get("hypotheses", [obj] if "hypothesis" in obj else None) if isinstance(obj, dict) else None
    lb, rb = text.find("["), text.rfind("]")
    if items is None and 0 <= lb < rb and lb < text.find("{"):
        try:
            items = json.loads(text[lb : rb + 1])
        except json.JSONDecodeError:
            items = None
    if not isinstance(items, list) or not items:
        return None, 'no JSON object with a non-empty "hypotheses" list in the answer: ' + repr(
            (text or "")[:160]
        )
    out, problems = [], []
    for i, it in enumerate(items, 1):
        if not isinstance(it, dict) or not str(it.get("hypothesis") or "").strip():
            problems.append(f"hypothesis {i} has no 'hypothesis' text")
            continue
        test = _prompts(it.get("test_prompts"), exp.max_prompts)
        keys = {normalise(p) for p in test}
        control = [
            p for p in _prompts(it.get("control_prompts"), exp.max_prompts) if normalise(p) not in keys
        ]
        if len(test) < exp.min_prompts or len(control) < exp.min_prompts:
            problems.append(
                f"hypothesis {i} has {len(test)} test and {len(control)} control prompts "
                f"({exp.min_prompts} distinct ones per arm needed)"
            )
            continue
        out.append(
            Proposal(
                " ".join(str(it["hypothesis"]).split()),
                str(it.get("topic") or "").strip(),
                str(it.get("rationale") or "").strip(),
                test,
                control,
            )
        )
    if not out:
        return None, "no usable hypothesis: " + "; ".join(problems)
    return out[:k], None


def parse_topic_ratings(
    text: str, n_examples: int, topics: list[str]
) -> tuple[tuple[list[list[float]], dict[str, str]] | None, str | None]:
    """Ratings (examples x topics, 0..1) and per-topic summaries from the analyst's topics answer."""
    obj = first_json_object(text)
    ratings = obj.get("ratings") if isinstance(obj, dict) else None
    if not isinstance(ratings, dict):
        return None, 'no JSON object with a "ratings" object in the answer: ' + repr((text or "")[:160])
    grid, missing = [], 0
    for i in range(1, n_examples + 1):
        row = ratings.get(str(i)) if isinstance(ratings.get(str(i)), dict) else {}
        vals = []
        for t in topics:
            v = row.get(t)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            missing += not ok
            vals.append(min(max(float(v) / 10.0, 0.0), 1.0) if ok else math.nan)
        grid.append(vals)
    if missing > n_examples * len(topics) // 2:
        return None, f"{missing} of {n_examples * len(topics)} ratings are missing or not numbers"
    summaries = obj.get("summaries") if isinstance(obj.get("summaries"), dict) else {}
    return (grid, {t: str(summaries.get(t, "")) for t in topics}), None


def parse_summary(text: str) -> tuple[str | None, str | None]:
    obj = first_json_object(text)
    s = obj.get("summary") if isinstance(obj, dict) else None
    if not isinstance(s, str) or not s.strip():
        return None, 'no JSON object with a "summary" string in the answer: ' + repr((text or "")[:160])
    return s.strip(), None
