"""Role pools: the one module that turns a role (proposer, target, judge, embedder, reference, assistant)
into Ray actors. Every actor pool in forewarn comes from here, in one of two shapes:

- :class:`RolePool`: long-lived actors that load the role's model once and serve every stage and
  iteration that calls them (``map`` spreads batches over the replicas and keeps the input order). An
  actor that dies mid-stage is replaced and its batch re-run, so a stage returns every row exactly once.
  ``reload(factory)`` swaps the weights in place (the proposer after each DPO step). :class:`RolePools`
  holds the pools of one run: created on first use, so a resumed run loads only what it still needs,
  released by name when the run no longer needs them and all closed at the end.
- :func:`data_stage`: a Ray Data ``map_batches`` over an actor pool, for streaming over data that does not
  fit one call (datastore building, the Goodtriever evaluation, the generate job). Its actors live as long
  as the dataset's execution. Capability code does not build datasets itself: it describes its input
  (:class:`Rows`: pandas blocks, or a file the cluster reads) and its stages, and :func:`stream_stages` /
  :func:`run_stages` give back batches or one DataFrame.

Why long-lived actors (``ray.util``-style dispatch over named handles) for iterative jobs: on this 2-core
machine a Ray Data actor stage pays actor start-up and a model load on every execution (0.38x a direct loop
on 5.6 s of work), while a warm pool pays them once per run; ``benchmarks/generate_throughput.py`` measures
both (see the README). Ray Data stays where the data streams.

Both shapes honour the role's placement group (``forewarn.placement.remote_args``: colocated roles share
GPUs inside one bundle) and ask for the role's ``num_gpus``. CPU asks: long-lived pools of one run exist at
the same time (ReverseGen holds proposer, embedder, target and judge), so on a small local Ray four actors
asking ``num_cpus=1`` each, plus a DPO step's training worker, would wait on each other forever. A run's
pools therefore ask Ray for a common fraction of their ``num_cpus`` (``RolePools.cpu_scale``: what the
cluster has, less what the run's training steps need, over what the pools want); stages run one after
another, so only the active pool computes, and each actor still sets torch's threads to its role's full
``num_cpus``. GPU asks are never scaled (they are memory, not time).
"""

from __future__ import annotations

import gc
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from forewarn.config import Resources
from forewarn.errors import ForewarnError
from forewarn.judges import build_judge
from forewarn.models import load_generator
from forewarn.placement import remote_args

START_TIMEOUT_S = float(os.environ.get("FOREWARN_POOL_START_TIMEOUT_S", "900"))


def _actor_lost() -> tuple[type[BaseException], ...]:
    from ray.exceptions import OutOfMemoryError, RayActorError

    return RayActorError, OutOfMemoryError  # an actor killed, crashed, or killed by Ray's memory monitor


class PoolError(ForewarnError):
    """A pool could not start (no room on the cluster, the model failed to load) or kept losing actors."""


def set_torch_threads(num_cpus: float) -> None:
    """Match torch's intra-op threads to the CPUs the role asks for."""
    import torch

    torch.set_num_threads(max(1, int(num_cpus)))


class RoleActor:
    """Actor body: one object built by ``factory`` (a Generator, Judge, Embedder...), called by method name."""

    def __init__(self, factory: Callable[[], Any], num_cpus: float):
        set_torch_threads(num_cpus)
        start = time.perf_counter()
        self.obj = factory()
        self.load_s = time.perf_counter() - start

    def ready(self) -> float:
        """Seconds the model took to load (the call returns once the actor is up)."""
        return self.load_s

    def call(self, method: str, columns: dict[str, list], const: dict[str, Any]) -> tuple[Any, float]:
        """``obj.method(**columns, **const)`` and the seconds it took."""
        start = time.perf_counter()
        out = getattr(self.obj, method)(**columns, **const)
        return out, time.perf_counter() - start

    def reload(self, factory: Callable[[], Any]) -> float:
        """Drop the current object, build a new one (new weights); returns the load seconds."""
        self.obj = None
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        start = time.perf_counter()
        self.obj = factory()
        return time.perf_counter() - start


@dataclass
class PoolStats:
    """What a pool cost: model loads and their seconds, compute seconds inside calls, and idle time."""

    replicas: int
    loads: int = 0
    load_s: float = 0.0  # inside the actors, summed over replicas
    start_s: float = 0.0  # the caller's wall time while actors started or reloaded (process start included)
    compute_s: float = 0.0
    calls: int = 0
    replaced_actors: int = 0
    started: float = field(default_factory=time.perf_counter)
    ended: float | None = None

    def as_dict(self) -> dict[str, float | int]:
        alive = (self.ended or time.perf_counter()) - self.started
        return {
            "loads": self.loads,
            "load_s": round(self.load_s, 3),
            "start_s": round(self.start_s, 3),
            "compute_s": round(self.compute_s, 3),
            "idle_s": round(max(0.0, alive * self.replicas - self.load_s - self.compute_s), 3),
            "alive_s": round(alive, 3),
            "calls": self.calls,
            "replaced_actors": self.replaced_actors,
        }


class RolePool:
    """``resources.replicas`` long-lived actors of one role, each holding ``factory()``."""

    def __init__(
        self,
        name: str,
        factory: Callable[[], Any],
        resources: Resources,
        cpu_scale: float = 1.0,
        max_replacements: int = 3,
    ):
        import ray

        self.name, self.factory, self.resources = name, factory, resources
        self.max_replacements = max_replacements
        self.stats = PoolStats(resources.replicas)
        self._cls = ray.remote(RoleActor).options(
            num_cpus=resources.num_cpus * cpu_scale,
            num_gpus=resources.num_gpus,
            max_restarts=0,
            **remote_args(resources),
        )
        self.actors = [self._spawn() for _ in range(resources.replicas)]
        self._await_ready(self.actors)

    def _spawn(self) -> Any:
        return self._cls.remote(self.factory, self.resources.num_cpus)

    def _await_ready(self, actors: list[Any]) -> None:
        import ray

        start = time.perf_counter()
        refs = [a.ready.remote() for a in actors]
        done, pending = ray.wait(refs, num_returns=len(refs), timeout=START_TIMEOUT_S)
        if pending:
            raise PoolError(
                f"role {self.name!r}: {len(pending)} of {len(refs)} actors did not start within "
                f"{START_TIMEOUT_S:g} s (each asks for {self._cls_ask()}); the cluster has no room "
                "(see `ray status`). FOREWARN_POOL_START_TIMEOUT_S sets the wait."
            )
        try:
            seconds = ray.get(done)
        except _actor_lost() as e:
            raise PoolError(f"role {self.name!r}: an actor failed while loading its model: {e}") from None
        self.stats.loads += len(seconds)
        self.stats.load_s += sum(seconds)
        self.stats.start_s += time.perf_counter() - start

    def _cls_ask(self) -> str:
        r = self.resources
        return f"CPU {r.num_cpus:g} (scaled), GPU {r.num_gpus:g}"

    def map_batches(
        self, method: str, columns: dict[str, Sequence[Any]], batch_size: int | None = None, **const: Any
    ) -> list[tuple[Any, float]]:
        """Call ``method`` on aligned slices of ``columns`` (``batch_size`` rows each, the role's by default),
        spread over the actors; returns (output, seconds) per slice, in input order.

        An actor that dies mid-call is replaced (its model loads again) and its slice re-run, at most
        ``max_replacements`` times per call; every other slice is collected once.
        """
        import ray

        lengths = {len(v) for v in columns.values()}
        if len(lengths) != 1:
            raise ValueError(f"role {self.name!r}: columns of unequal lengths {sorted(lengths)}")
        n, size = lengths.pop(), batch_size or self.resources.batch_size
        slices = [(i, min(n, i + size)) for i in range(0, n, size)]
        queue, idle = deque(range(len(slices))), list(range(len(self.actors)))
        results: list[tuple[Any, float] | None] = [None] * len(slices)
        inflight: dict[Any, tuple[int, int]] = {}
        replaced = 0
        while queue or inflight:
            while queue and idle:
                b, slot = queue.popleft(), idle.pop()
                lo, hi = slices[b]
                part = {k: list(v[lo:hi]) for k, v in columns.items()}
                inflight[self.actors[slot].call.remote(method, part, const)] = (b, slot)
            (ref,), _ = ray.wait(list(inflight), num_returns=1)
            b, slot = inflight.pop(ref)
            try:
                out, seconds = ray.get(ref)
            except _actor_lost() as e:
                replaced += 1
                if replaced > self.max_replacements:
                    raise PoolError(
                        f"role {self.name!r}: lost {replaced} actors in one call; last: {e}"
                    ) from None
                self._replace(slot)
                queue.appendleft(b)
                idle.append(slot)
                continue
            results[b] = (out, seconds)
            self.stats.compute_s += seconds
            self.stats.calls += 1
            idle.append(slot)
        return [r for r in results if r is not None]

    def map(
        self, method: str, columns: dict[str, Sequence[Any]], batch_size: int | None = None, **const: Any
    ) -> list[Any]:
        """:meth:`map_batches` with the outputs concatenated: one output per input row, in order."""
        return [x for out, _ in self.map_batches(method, columns, batch_size, **const) for x in out]

    def _replace(self, slot: int) -> None:
        """A new actor (loading ``self.factory``) in place of the lost one at ``slot``."""
        self.actors[slot] = self._spawn()
        self._await_ready([self.actors[slot]])
        self.stats.replaced_actors += 1

    def reload(self, factory: Callable[[], Any]) -> None:
        """Rebuild every actor's object with ``factory`` (e.g. the proposer's new weights), in place; an actor
        lost meanwhile (killed, out of memory) is replaced by a new one that loads ``factory``."""
        import ray

        self.factory = factory
        start = time.perf_counter()
        refs = [a.reload.remote(factory) for a in self.actors]
        for slot, ref in enumerate(refs):
            before = self.stats.start_s
            try:
                seconds = ray.get(ref)
            except _actor_lost():
                self._replace(slot)  # its start is timed by _await_ready
                start += self.stats.start_s - before
                continue
            self.stats.loads += 1
            self.stats.load_s += seconds
        self.stats.start_s += time.perf_counter() - start

    def close(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors = []
        self.stats.ended = time.perf_counter()


class RolePools:
    """The long-lived pools of one run, by role name: created on first use, reloaded when the model changes,
    released by name, all closed on exit. ``stats()`` reports loads and seconds per role."""

    def __init__(self, resources: dict[str, Resources], reserve_cpus: float = 0.0):
        self.resources = resources
        self.cpu_scale = cpu_scale(resources.values(), reserve_cpus)
        self.pools: dict[str, RolePool] = {}
        self.keys: dict[str, str] = {}
        self.finished: dict[str, list[PoolStats]] = {}

    def get(self, role: str, factory: Callable[[], Any], key: str) -> RolePool:
        """The pool of ``role`` holding the model named ``key``: started, reused or reloaded as needed."""
        pool = self.pools.get(role)
        if pool is None:
            if role not in self.resources:
                raise KeyError(
                    f"role {role!r} was not declared to this run's pools ({sorted(self.resources)})"
                )
            pool = self.pools[role] = RolePool(role, factory, self.resources[role], self.cpu_scale)
        elif self.keys[role] != key:
            pool.reload(factory)
        self.keys[role] = key
        return pool

    def release(self, *roles: str) -> None:
        """Close the pools of ``roles`` (if started): the run needs them no more."""
        for role in roles:
            pool = self.pools.pop(role, None)
            if pool is not None:
                pool.close()
                self.finished.setdefault(role, []).append(pool.stats)

    def stats(self) -> dict[str, dict[str, float | int]]:
        """Per role, summed over its pools so far: loads, load_s, compute_s, idle_s, alive_s, calls."""
        out: dict[str, dict[str, float | int]] = {}
        for role in sorted(set(self.pools) | set(self.finished)):
            parts = [s.as_dict() for s in self.finished.get(role, [])]
            if role in self.pools:
                parts.append(self.pools[role].stats.as_dict())
            out[role] = {k: round(sum(p[k] for p in parts), 3) for k in parts[0]}
        return out

    def seconds(self) -> dict[str, float]:
        """Seconds summed over all roles (a stage's share is the difference of two reads): ``load_s``, the
        caller's wall time starting pools and loading or reloading models (actor start included), and
        ``compute_s``, the seconds the actors spent inside calls."""
        s = self.stats().values()
        return {"load_s": sum(r["start_s"] for r in s), "compute_s": sum(r["compute_s"] for r in s)}

    def close(self) -> None:
        self.release(*list(self.pools))

    def __enter__(self) -> "RolePools":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def cpu_scale(resources: Sequence[Resources] | Any, reserve_cpus: float = 0.0) -> float:
    """The fraction of their ``num_cpus`` that a run's long-lived pools ask Ray for, so that all of them
    and ``reserve_cpus`` (the run's largest training step) fit on the connected cluster at once."""
    import ray

    want = sum(r.num_cpus * r.replicas for r in resources)
    have = float(ray.cluster_resources().get("CPU", 0.0))
    room = have - reserve_cpus
    if want <= room or want == 0:
        return 1.0
    if room <= 0:
        raise PoolError(
            f"the run's role pools ask for {want:g} CPUs and its training steps for {reserve_cpus:g}, "
            f"but the cluster has {have:g}: lower the training section's num_workers / "
            "cpus_per_worker or add CPUs"
        )
    return room / want


def data_stage(
    ds: Any,
    udf: type,
    ctor_kwargs: dict[str, Any],
    resources: Resources,
    batch_size: int | None = None,
    batch_format: str = "pandas",
) -> Any:
    """``ds.map_batches(udf)`` over ``resources.replicas`` actors of ``udf`` (constructed with
    ``ctor_kwargs``), each asking for the role's CPUs and GPUs inside its placement group, if any."""
    from ray.data import ActorPoolStrategy

    return ds.map_batches(
        udf,
        fn_constructor_kwargs=ctor_kwargs,
        compute=ActorPoolStrategy(size=resources.replicas),
        num_cpus=resources.num_cpus,
        num_gpus=resources.num_gpus,
        batch_size=batch_size or resources.batch_size,
        batch_format=batch_format,
        **remote_args(resources),
    )


Stage = Callable[[Any], Any]
"""A streamed stage: a Ray Data Dataset in, a Dataset out; a :func:`data_stage` over a UDF class (bind its
arguments with ``functools.partial``) or ``forewarn.pipeline.stages``' generate / judge / embed stages."""


@dataclass(frozen=True)
class Rows:
    """Input rows of :func:`stream_stages`: pandas ``blocks`` the driver holds (one Ray Data block each, so
    a stage makes progress block by block), or a JSONL / JSON / Parquet file at ``path`` that the cluster
    reads; the first ``limit`` rows, each batch passed through ``transform`` (a cheap pandas -> pandas
    function run as a task, no model) before the stages."""

    blocks: Sequence[Any] = ()
    path: str | None = None
    limit: int | None = None
    transform: Callable[[Any], Any] | None = None

    def dataset(self) -> Any:
        import ray

        if self.path is None:
            ds = ray.data.from_pandas(list(self.blocks))
        elif self.path.endswith(".parquet"):
            ds = ray.data.read_parquet(self.path)
        elif self.path.endswith((".jsonl", ".json")):
            ds = ray.data.read_json(self.path, lines=self.path.endswith(".jsonl"))
        else:
            raise ValueError(f"{self.path}: rows are read from .jsonl, .json or .parquet files")
        if self.limit:
            ds = ds.limit(self.limit)
        if self.transform is not None:
            ds = ds.map_batches(self.transform, batch_format="pandas", num_cpus=0.25)
        return ds


def stream_stages(
    inputs: Sequence[Rows],
    stages: Sequence[Stage],
    batch_format: str = "pandas",
    ordered: bool = True,
    progress: bool = True,
) -> Iterator[Any]:
    """The rows of every input through ``stages`` in turn: the last stage's batches as they come (pandas
    DataFrames or dicts of numpy arrays). ``ordered`` keeps each input's row order (the inputs' rows may
    interleave), so ids built from it are reproducible; ``progress`` shows Ray Data's bars."""
    from ray.data import DataContext

    # set before the datasets exist: a dataset keeps a copy of the context it was created under
    ctx = DataContext.get_current()
    saved = ctx.execution_options.preserve_order, ctx.enable_progress_bars
    ctx.execution_options.preserve_order, ctx.enable_progress_bars = ordered, progress
    try:
        parts = [r.dataset() for r in inputs]
        ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
        for stage in stages:
            ds = stage(ds)
        yield from ds.iter_batches(batch_format=batch_format, batch_size=None)
    finally:
        ctx.execution_options.preserve_order, ctx.enable_progress_bars = saved


def run_stages(inputs: Sequence[Rows], stages: Sequence[Stage], progress: bool = True) -> Any:
    """:func:`stream_stages` collected into one pandas DataFrame (each input's rows in their order)."""
    import pandas as pd

    batches = [b for b in stream_stages(inputs, stages, progress=progress) if len(b)]
    return pd.concat(batches, ignore_index=True) if batches else pd.DataFrame()


# ---------------------------------------------------------------- roles as plain callables


def generator(pools: RolePools, role: str, model: Any) -> Callable[..., list]:
    """``generate(prompts, params, seeds=None) -> list[list[Completion]]`` served by the ``role`` pool,
    which loads ``model`` (a ``ModelSpec``) on the first call and reloads when another model is asked for."""

    def generate(prompts: Sequence[Any], params: Any, seeds: Sequence[int] | None = None) -> list:
        pool = pools.get(role, partial(load_generator, model), model.path)
        cols = {"prompts": list(prompts)} | ({"seeds": list(seeds)} if seeds is not None else {})
        return pool.map("generate", cols, params=params)

    return generate


def judge(pools: RolePools, role: str, spec: Any) -> Callable[..., list]:
    """``judge(prompts, responses, references=None) -> list[Verdict]`` served by the ``role`` pool."""

    def run(
        prompts: Sequence[Any], responses: Sequence[Any], references: Sequence[Any] | None = None
    ) -> list:
        pool = pools.get(role, partial(build_judge, spec), spec.kind)
        cols = {"prompts": list(prompts), "responses": list(responses)}
        return pool.map("judge", cols | ({"references": list(references)} if references is not None else {}))

    return run


def embedder(pools: RolePools, role: str, path: str) -> Callable[[Sequence[str]], Any]:
    """``embed(texts) -> np.ndarray`` (n x d, L2-normalised) served by the ``role`` pool."""
    import numpy as np

    # lazy: loads numpy only when called
    from forewarn.models.embed import Embedder

    def embed(texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        pool = pools.get(role, partial(Embedder, path), path)
        return np.stack(pool.map("embed", {"texts": list(texts)})).astype(np.float32)

    return embed
