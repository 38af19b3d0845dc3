"""The divergence finder: an assistant model proposes prompts on which two models diverge most.

Each repeat starts from the seed prompts. A cycle draws a biased subsample of the bank (high divergence,
optionally diverse and matching a yes/no criterion), shows it to the assistant, parses the new prompts
from its answer (malformed answers are logged and skipped), scores them with a *scorer* (the contrastive
decoder in process, or a long-lived role pool of decoders — see :mod:`forewarn.contrastive.scoring`) and
adds them to the bank. A cycle counts only if it added at least one new prompt; up to
``max_failed_cycles`` empty cycles are tolerated per repeat.

The finder is plain Python over objects: any :class:`forewarn.models.base.Generator` as assistant (``hf``,
``vllm`` or ``openai``), any callable scorer, an optional embedder, a tracker for per-cycle metrics.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from forewarn.config import GenerationParams
from forewarn.contrastive.assistant_io import (
    PromptFile,
    chat_request,
    list_request,
    parse_prompts,
    parse_yes_no,
)
from forewarn.contrastive.bank import (
    Bank,
    BankEntry,
    entries_from_samples,
    normalise,
    stats,
    weighted_subsample,
)
from forewarn.contrastive.config import FinderConfig
from forewarn.contrastive.decoder import DecodedSample, prompt_means
from forewarn.models.base import Generator, Prompt
from forewarn.tracking import NullTracker

log = logging.getLogger(__name__)

Scorer = Callable[[list[str]], list[DecodedSample]]
"""prompts -> decoded samples (``prompt_index`` indexes the given list; several samples per prompt)."""


@dataclass
class FinderResult:
    """Everything a finder run produced: the bank of every repeat, per-cycle stats and the raw samples."""

    entries: list[BankEntry]
    cycles: list[dict[str, Any]]
    samples: list[tuple[int, int, DecodedSample]]  # (repeat, cycle, sample)
    malformed: list[dict[str, Any]] = field(default_factory=list)

    def ranked(self, k: int | None = None, source: str | None = None) -> list[BankEntry]:
        """Entries by divergence, highest first; ``source='assistant'`` leaves the seeds out."""
        pool = [e for e in self.entries if source is None or e.source == source]
        r = sorted(pool, key=lambda e: -e.divergence if math.isfinite(e.divergence) else math.inf)
        return r if k is None else r[:k]


class DivergenceFinder:
    """Assistant-guided search for high-divergence prompts (see the module docstring)."""

    def __init__(
        self,
        assistant: Generator,
        scorer: Scorer,
        cfg: FinderConfig | None = None,
        embedder: Any | None = None,
        criterion_model: Generator | None = None,
        tracker: Any | None = None,
        prompt_file: PromptFile | None = None,
        progress: bool = True,
    ):
        self.assistant, self.scorer = assistant, scorer
        self.cfg = cfg or FinderConfig()
        self.embedder = embedder
        if self.cfg.diversity_weight > 0 and embedder is None:
            raise ValueError("finder.diversity_weight > 0 needs an embedder (forewarn.models.embed.Embedder)")
        self.criterion_model = criterion_model or assistant
        self.tracker = tracker or NullTracker()
        self.prompts = prompt_file or PromptFile.load(self.cfg.prompt_file)
        self.progress = progress
        self.rng = np.random.default_rng(self.cfg.seed)

    # ------------------------------------------------------------ the loop

    def run(self, seeds: Sequence[str]) -> FinderResult:
        seeds = list(dict.fromkeys(s for s in (" ".join(x.split()) for x in seeds) if s))
        if not seeds:
            raise ValueError("the finder needs at least one seed prompt")
        c = self.cfg
        result = FinderResult(entries=[], cycles=[], samples=[])
        earlier: set[str] = set()
        columns = [
            TextColumn("finder {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        ]
        with Progress(*columns, disable=not self.progress, transient=False) as bar:
            for repeat in range(c.repeats):
                task = bar.add_task(f"repeat {repeat}", total=c.n_cycles)
                bank = Bank()
                bank.add(self._score(seeds, cycle=0, repeat=repeat, source="seed", result=result))
                self._refresh_diversity(bank)
                done = failed = attempts = 0
                while done < c.n_cycles:
                    attempts += 1
                    row = self._cycle(bank, repeat, done + 1, attempts, earlier, result)
                    if row is None:
                        failed += 1
                        if failed > c.max_failed_cycles:
                            log.warning(
                                "repeat %d: %d cycles without a new prompt; stopping this repeat",
                                repeat,
                                failed,
                            )
                            break
                        continue
                    done += 1
                    bar.advance(task)
                    result.cycles.append(row)
                    step = repeat * (c.n_cycles + 1) + done
                    self.tracker.log_metrics(
                        {
                            k: v
                            for k, v in row.items()
                            if isinstance(v, (int, float))
                            and k not in ("repeat", "cycle")
                            and math.isfinite(v)
                        },
                        step=step,
                    )
                earlier |= {normalise(e.prompt) for e in bank.entries if e.source == "assistant"}
                result.entries.extend(bank.entries)
        return result

    def _cycle(
        self, bank: Bank, repeat: int, cycle: int, attempt: int, earlier: set[str], result: FinderResult
    ) -> dict[str, Any] | None:
        """One request round; returns the cycle's stats row, or None when it added no new prompt."""
        c = self.cfg
        requests: list[Prompt] = []
        open_items: list[int | None] = []
        shown: list[BankEntry] = []
        for _ in range(c.requests_per_cycle):
            n = c.list_shots if c.assistant_format == "list" else c.subsample_size
            sub = weighted_subsample(
                bank.entries,
                n,
                c.subsample_temperature,
                self.rng,
                c.prefer,
                c.divergence_weight,
                c.diversity_weight,
                c.criterion_weight if c.criterion_in_subsample else 0.0,
            )
            shown.extend(sub)
            if c.assistant_format == "list":
                text, item = list_request(c.list_header, sub)
                requests.append(text)
                open_items.append(item)
            else:
                requests.append(chat_request(self.prompts, sub, c.show_divergences, self.rng))
                open_items.append(None)
        params = c.assistant_params
        if params.seed is not None:  # a fixed seed would repeat the same answers every cycle
            params = params.model_copy(update={"seed": params.seed + 100_003 * repeat + attempt})
        answers = self.assistant.generate(requests, params)
        candidates: list[str] = []
        n_malformed = n_dupes = 0
        for item, completions in zip(open_items, answers):
            for comp in completions:
                if not comp.ok:
                    n_malformed += 1
                    result.malformed.append(
                        {"repeat": repeat, "attempt": attempt, "reason": comp.error or "", "text": ""}
                    )
                    log.warning("assistant request failed: %s", comp.error)
                    continue
                found, why = parse_prompts(comp.text, item)
                if why:
                    n_malformed += 1
                    result.malformed.append(
                        {"repeat": repeat, "attempt": attempt, "reason": why, "text": comp.text[:2000]}
                    )
                    log.warning("malformed assistant answer skipped: %s", why)
                for p in found:
                    key = normalise(p)
                    if p in bank or key in earlier or key in {normalise(x) for x in candidates}:
                        n_dupes += 1
                    else:
                        candidates.append(p)
        if not candidates:
            log.info(
                "repeat %d attempt %d: no new prompt (%d malformed, %d duplicates)",
                repeat,
                attempt,
                n_malformed,
                n_dupes,
            )
            return None
        new = self._score(candidates, cycle=cycle, repeat=repeat, source="assistant", result=result)
        n_dropped = 0
        if c.criterion:
            self._apply_criterion(new)
            if c.require_criterion:
                kept = [e for e in new if e.criterion == 1.0]
                n_dropped = len(new) - len(kept)
                new = kept
        bank.add(new)
        self._refresh_diversity(bank)
        div_new = [e.divergence for e in new]
        top = bank.ranked(10)
        row: dict[str, Any] = {
            "repeat": repeat,
            "cycle": cycle,
            "attempts": attempt,
            "n_new": len(new),
            "n_candidates": len(candidates),
            "n_malformed": n_malformed,
            "n_duplicates": n_dupes,
            "n_dropped_criterion": n_dropped,
            "bank_size": len(bank),
            "top10_divergence_mean": stats([e.divergence for e in top])["mean"],
        }
        for name, vals in (
            ("bank", [e.divergence for e in bank.entries]),
            ("new", div_new),
            ("shown", [e.divergence for e in shown]),
        ):
            row.update({f"{name}_divergence_{k}": v for k, v in stats(vals).items()})
        if c.diversity_weight > 0:
            row.update(
                {f"bank_diversity_{k}": v for k, v in stats([e.diversity for e in bank.entries]).items()}
            )
            row.update({f"shown_diversity_{k}": v for k, v in stats([e.diversity for e in shown]).items()})
        return row

    # ------------------------------------------------------------ scoring helpers

    def _score(
        self, prompts: list[str], cycle: int, repeat: int, source: str, result: FinderResult
    ) -> list[BankEntry]:
        """Score prompts; a prompt's divergence is the mean over its samples (block means before any sort)."""
        samples = self.scorer(prompts)
        means = prompt_means(samples)
        result.samples.extend((repeat, cycle, s) for s in samples)
        entries = entries_from_samples(prompts, means, samples, cycle=cycle, repeat=repeat, source=source)
        if self.embedder is not None:
            vecs = self.embedder.embed(prompts)
            for e, v in zip(entries, vecs):
                e.embedding = np.asarray(v, dtype=np.float32)
        return entries

    def _refresh_diversity(self, bank: Bank) -> None:
        if self.embedder is not None:
            bank.update_diversity()

    def _apply_criterion(self, entries: list[BankEntry]) -> None:
        """Ask the criterion model the yes/no question for each (prompt, response); unparsed answers -> 0."""
        pf = self.prompts
        yes = pf["custom_selection_criterion_yes_response"] or "yes"
        no = pf["custom_selection_criterion_no_response"] or "no"
        chats: list[Prompt] = [
            [
                {"role": "system", "content": self.cfg.criterion},
                {"role": "user", "content": f"Prompt: {e.prompt}\nResponse: {e.response}"},
            ]
            for e in entries
        ]
        params = GenerationParams(max_new_tokens=20, temperature=0.0)
        for e, comps in zip(entries, self.criterion_model.generate(chats, params)):
            ans = parse_yes_no(comps[0].text if comps and comps[0].ok else "", yes, no)
            if ans is None:
                log.warning("criterion answer is neither %r nor %r for %r; scored 0", yes, no, e.prompt[:80])
            e.criterion = 0.0 if ans is None else ans
