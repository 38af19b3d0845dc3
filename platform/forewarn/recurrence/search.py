"""Evolutionary trigger search over token ids, and the random-search baseline it must beat.

Plain Python over an injected ``evaluate(list of id sequences) -> list[Evaluation]`` callable; the job wires
that callable to a Ray actor pool of target generators (``recurrence/pool.py``), a Tune trial wires it to its
own actor, tests wire it to a synthetic target.

Differences from the original GA (``src/optimizer/ga.py``), each on purpose:
- offspring fill the pool exactly (the original appended two children at a time and could overshoot);
- with ``cache_evaluations`` a sequence already evaluated is not generated again: under greedy decoding the
  answer cannot change, and the budget is counted in target generations;
- a child identical to an evaluated sequence is mutated again (a few tries), so the budget buys new points;
- an optional swap mutation (``swap_rate``) reorders tokens, since triggers are ordered and contiguous;
- optional random immigrants (``immigrant_rate``) keep a converged pool exploring (seen stuck on the testbed);
- the default fitness is cycle-aware (tokens + repeated n-gram tokens), which rewards partial loops and gives
  selection a slope where pure length is flat.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from forewarn.recurrence.config import SearchSection
from forewarn.recurrence.cycles import Recurrence

Ids = tuple[int, ...]


@dataclass
class Evaluation:
    """The target's answers to one individual, with their recurrence analyses and the fitness.

    With search contexts there is one answer per context (``recurrences``); ``prompt``, ``response`` and
    ``recurrence`` show the first context's, and ``hit_rate`` is the share of contexts that hit the goal.
    """

    ids: Ids
    prompt: str
    response: str
    response_ids: list[int]
    finish_reason: str
    seconds: float
    recurrence: Recurrence
    recurrences: list[Recurrence] = field(default_factory=list)
    fitness: float = 0.0
    hit_rate: float = 0.0
    hit: bool = False


@dataclass
class IterationLog:
    """One iteration of a search: the best individuals, pool statistics and the budget spent so far."""

    iteration: int
    best: list[tuple[str, float]]
    average_fitness: float  # mean of the top num_best (the original's definition)
    max_fitness: float
    max_tokens_generated: int
    evaluations: int  # target generations spent so far (cumulative; contexts x individuals)
    hits: int


@dataclass
class SearchResult:
    method: str
    seed: int
    evaluations: list[tuple[int, int, Evaluation]] = field(default_factory=list)  # (iteration, eval#, e)
    iterations: list[IterationLog] = field(default_factory=list)
    first_hit_iteration: int | None = None
    first_hit_evaluations: int | None = None  # target generations up to and including the first hit
    first_hit_seconds: float | None = None
    best: Evaluation | None = None
    total_evaluations: int = 0
    seconds: float = 0.0

    @property
    def found(self) -> bool:
        return self.first_hit_evaluations is not None

    def triggers(self) -> list[Evaluation]:
        """Every distinct individual that hit the goal, best first."""
        seen: dict[Ids, Evaluation] = {}
        for _, _, e in self.evaluations:
            if e.hit and e.ids not in seen:
                seen[e.ids] = e
        return sorted(seen.values(), key=lambda e: -e.fitness)


def fitness_of(rec: Recurrence, cfg: SearchSection) -> float:
    """``tokens``: tokens generated (the original). ``cycle``: tokens + cycle_weight x repeated n-gram tokens."""
    if cfg.fitness == "tokens":
        return float(rec.num_tokens)
    return float(rec.num_tokens + cfg.cycle_weight * rec.repeated_tokens)


def score(e: Evaluation, cfg: SearchSection) -> None:
    """Set fitness (mean over contexts), hit rate and hit of an evaluation in place."""
    recs = e.recurrences or [e.recurrence]
    e.fitness = sum(fitness_of(r, cfg) for r in recs) / len(recs)
    e.hit_rate = sum(r.recurrent(cfg.goal) for r in recs) / len(recs)
    e.hit = e.hit_rate >= cfg.hit_fraction - 1e-9


def crossover(a: Ids, b: Ids, kind: str, rng: random.Random) -> Ids:
    """One child of parents ``a`` and ``b`` (``half`` is the original's cut at input_len // 2)."""
    n = len(a)
    if kind == "half":
        cut = n // 2
        return a[:cut] + b[cut:]
    if kind == "one_point":
        cut = rng.randint(1, n - 1)
        return a[:cut] + b[cut:]
    if kind == "two_point":
        i, j = sorted(rng.sample(range(1, n), 2)) if n > 2 else (1, 1)
        return a[:i] + b[i:j] + a[j:]
    if kind == "uniform":
        return tuple(x if rng.random() < 0.5 else y for x, y in zip(a, b))
    raise ValueError(f"search.crossover={kind!r}: expected half, one_point, two_point or uniform")


def mutate(ids: Ids, rate: float, vocab: Sequence[int], rng: random.Random) -> Ids:
    """Redraw ceil(len x rate) distinct positions uniformly from ``vocab`` (the original's mutation)."""
    k = math.ceil(len(ids) * rate)
    if k == 0:
        return ids
    out = list(ids)
    for pos in rng.sample(range(len(ids)), min(k, len(ids))):
        out[pos] = rng.choice(vocab)
    return tuple(out)


def swap(ids: Ids, rng: random.Random) -> Ids:
    """Exchange two positions: moves a useful token next to another without losing either."""
    i, j = rng.sample(range(len(ids)), 2)
    out = list(ids)
    out[i], out[j] = out[j], out[i]
    return tuple(out)


class Search:
    """GA (``method="ga"``) or random search (``method="random"``) with one budget and one bookkeeping.

    ``evaluate`` turns a batch of id sequences into :class:`Evaluation` objects (fitness unset); ``hit`` says
    whether an evaluation reaches the goal. ``on_iteration`` (optional) sees each :class:`IterationLog` and
    may return True to stop (Tune schedulers use it).
    """

    def __init__(
        self,
        cfg: SearchSection,
        vocab: Sequence[int],
        evaluate: Callable[[list[Ids]], list[Evaluation]],
        method: str = "ga",
        seed: int = 0,
        on_iteration: Callable[[IterationLog, "SearchResult"], bool | None] | None = None,
    ):
        if method not in ("ga", "random"):
            raise ValueError(f"method={method!r}: expected 'ga' or 'random'")
        if len(vocab) < 2:
            raise ValueError("the search vocabulary needs at least two token ids")
        self.cfg, self.vocab, self.evaluate_fn, self.method = cfg, list(vocab), evaluate, method
        self.rng = random.Random(f"{method}-{seed}")
        self.on_iteration = on_iteration
        self.result = SearchResult(method=method, seed=seed)
        self.cache: dict[Ids, Evaluation] = {}
        self.cost = max(1, len(cfg.contexts))  # target generations per individual

    # ----------------------------------------------------------------------------- individuals

    def random_individual(self) -> Ids:
        return tuple(self.rng.choice(self.vocab) for _ in range(self.cfg.input_len))

    def offspring(self, parents: list[Ids], count: int) -> list[Ids]:
        """Exactly ``count`` children: crossover(a, b) then mutation; duplicates of known points are re-mutated."""
        children: list[Ids] = []
        known = set(self.cache) | set(parents)
        while len(children) < count:
            a, b = self.rng.choice(parents), self.rng.choice(parents)
            child = mutate(
                crossover(a, b, self.cfg.crossover, self.rng), self.cfg.mutation_rate, self.vocab, self.rng
            )
            if self.rng.random() < self.cfg.swap_rate:
                child = swap(child, self.rng)
            for _ in range(8):
                if child not in known:
                    break
                child = mutate(
                    child, max(self.cfg.mutation_rate, 1 / self.cfg.input_len), self.vocab, self.rng
                )
            known.add(child)
            children.append(child)
        return children

    # ----------------------------------------------------------------------------- evaluation

    def _evaluate(self, pool: list[Ids], iteration: int, started: float) -> list[Evaluation]:
        fresh = [ids for ids in dict.fromkeys(pool) if not (self.cfg.cache_evaluations and ids in self.cache)]
        budget = self.cfg.max_evaluations
        if budget is not None:
            fresh = fresh[: max(0, (budget - self.result.total_evaluations) // self.cost)]
        for e in self.evaluate_fn(fresh) if fresh else []:
            score(e, self.cfg)
            self.result.total_evaluations += self.cost
            self.result.evaluations.append((iteration, self.result.total_evaluations, e))
            self.cache[e.ids] = e
            if e.hit and self.result.first_hit_evaluations is None:
                self.result.first_hit_iteration = iteration
                self.result.first_hit_evaluations = self.result.total_evaluations
                self.result.first_hit_seconds = time.perf_counter() - started
        return [self.cache[ids] for ids in pool if ids in self.cache]

    def _budget_left(self) -> bool:
        b = self.cfg.max_evaluations
        return b is None or self.result.total_evaluations + self.cost <= b

    # ----------------------------------------------------------------------------- the loop

    def run(self) -> SearchResult:
        """Iterate until the goal is hit (with ``terminate_if_found``), the budget or the iterations run out."""
        cfg, res = self.cfg, self.result
        started = time.perf_counter()
        pool = [self.random_individual() for _ in range(cfg.pool_size)]
        keep = int(cfg.pool_size * cfg.selection_rate)
        for it in range(cfg.iterations):
            scored = sorted(self._evaluate(pool, it, started), key=lambda e: -e.fitness)
            if not scored:
                break
            top = scored[: cfg.num_best]
            log = IterationLog(
                iteration=it,
                best=[(e.prompt, e.fitness) for e in top],
                average_fitness=sum(e.fitness for e in top) / len(top),
                max_fitness=scored[0].fitness,
                max_tokens_generated=max(e.recurrence.num_tokens for e in scored),
                evaluations=res.total_evaluations,
                hits=sum(e.hit for e in scored),
            )
            res.iterations.append(log)
            if res.best is None or scored[0].fitness > res.best.fitness:
                res.best = scored[0]
            stop = self.on_iteration(log, res) if self.on_iteration else False
            if stop or (cfg.terminate_if_found and res.found) or not self._budget_left():
                break
            if self.method == "random":
                pool = [self.random_individual() for _ in range(cfg.pool_size)]
            else:
                parents = [e.ids for e in scored[:keep]]
                fresh = [self.random_individual() for _ in range(int(cfg.immigrant_rate * cfg.pool_size))]
                pool = parents + fresh + self.offspring(parents, cfg.pool_size - len(parents) - len(fresh))
        res.seconds = time.perf_counter() - started
        return res
