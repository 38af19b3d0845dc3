"""What a job config asks Ray for: every role's demand and the colocation groups (pure config walking).

Every role in a job config (a ``RoleConfig``, a judge spec, a datastore, a bare ``Resources`` such as the
embedder) carries ``resources``; every training section (a ``TrainWorkers`` section such as ``TrainConfig``) asks for
``num_workers`` workers. :func:`role_demands` turns them into Ray requests:

- an ``hf``/``openai`` role: ``replicas`` actors of ``{CPU: num_cpus, GPU: num_gpus}`` (a role pool);
- a ``vllm`` role: ``replicas`` engines of ``tensor_parallel_size`` GPUs each, kept on one node (what
  ``ray.data.llm`` reserves: one ``{GPU: 1, CPU: 1}`` bundle per TP worker, or a fractional GPU with TP 1);
- colocated roles (``target.resources.colocate_with: proposer``): one placement group per group, one bundle
  per replica, holding every member's CPUs and ``ceil(max member GPUs)`` GPUs; members ask for fractional
  GPUs inside it, so Ray puts them on the *same* GPUs (memory is split by the models, as in OpenRLHF);
- training sections: ``num_workers`` x ``{CPU: cpus_per_worker, GPU: use_gpu}``.

The placement family runs one way: ``demands`` (this) -> ``nodes`` (where) -> ``plan`` (pack, offline)
-> ``reserve`` (placement groups and actor scheduling at run time). Nothing here knows a job by name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from forewarn.config import ModelSpec, Resources, TrainWorkers
from forewarn.errors import ConfigError

EPS = 1e-6
KEYS = ("GPU", "CPU")


class PlacementError(ConfigError):
    """The cluster cannot hold what the config asks for, or a colocation is not possible."""


@dataclass(frozen=True)
class Node:
    """One node of a cluster: its name and total CPU/GPU."""

    name: str
    resources: dict[str, float]


@dataclass(frozen=True)
class RoleDemand:
    """What one role (or training section) asks Ray for."""

    name: str  # dotted config path of the role, e.g. "target", "judge", "datastores.toxic", "dpo"
    field: str  # dotted path of its resource fields, for fix hints ("target.resources", "dpo")
    kind: str  # "actor" (Ray Data / Serve pool), "vllm" (ray.data.llm engine), "train" (Ray Train workers)
    replicas: int
    per_replica: dict[str, float]  # needed on ONE node by one replica / worker
    model: str | None = None
    backend: str | None = None
    tensor_parallel: int = 1
    colocate_with: str | None = None

    @property
    def total(self) -> dict[str, float]:
        return {k: self.per_replica.get(k, 0.0) * self.replicas for k in KEYS}


@dataclass(frozen=True)
class ColocationGroup:
    """Roles that share GPUs: one placement group, one bundle per replica index."""

    name: str  # the root role (the one the others colocate with)
    members: tuple[str, ...]
    bundles: tuple[dict[str, float], ...]


def fmt(res: dict[str, float]) -> str:
    return ", ".join(f"{k} {res.get(k, 0):g}" for k in KEYS)


# ---------------------------------------------------------------- roles of a config


def role_refs(cfg: BaseModel) -> list[tuple[str, str, Any, ModelSpec | None, str | None]]:
    """(role name, resource field path, Resources or TrainWorkers, model, label) of every role in ``cfg``.

    Walks the config: a ``Resources`` value, a section with a ``resources`` field (its ``model`` field, if a
    ``ModelSpec``, is the role's model; its ``kind``, e.g. a judge's, is the label of a role without one)
    and a ``TrainWorkers`` are roles. Sections whose ``enabled`` is false
    are skipped, and where a section's ``task`` names one of its training sections, only that one counts.
    The objects are those of ``cfg`` itself, so a caller may set fields on them.
    """
    out: list[tuple[str, str, Any, ModelSpec | None, str | None]] = []
    _walk(cfg, "", out)
    return out


def _walk(obj: Any, path: str, out: list) -> None:
    if isinstance(obj, BaseModel):
        fields = type(obj).model_fields
        if "enabled" in fields and obj.enabled is False:
            return
        if isinstance(obj, (TrainWorkers, Resources)):
            out.append((path, path, obj, None, None))
            return
        res = getattr(obj, "resources", None) if "resources" in fields else None
        if isinstance(res, Resources):
            model = getattr(obj, "model", None)
            model = model if isinstance(model, ModelSpec) else None
            kind = getattr(obj, "kind", None)
            out.append(
                (
                    path,
                    f"{path}.resources",
                    res,
                    model,
                    model.path if model else f"({kind})" if isinstance(kind, str) else None,
                )
            )
            return
        task = getattr(obj, "task", None)
        chosen = (
            task if isinstance(task, str) and isinstance(getattr(obj, task, None), TrainWorkers) else None
        )
        for name in fields:
            value = getattr(obj, name)
            if chosen and isinstance(value, TrainWorkers) and name != chosen:
                continue
            _walk(value, f"{path}.{name}" if path else name, out)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _walk(v, f"{path}.{k}", out)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _walk(v, f"{path}[{i}]", out)


def _vllm_gpus(fld: str, res: Resources, tp: int, model_field: str) -> float:
    """GPUs of one vLLM replica, with the rule of ``forewarn.models.vllm.processor_config``."""
    if res.num_gpus == 0 or res.num_gpus == tp:
        return float(tp)
    if res.num_gpus < 1 and tp == 1:
        return res.num_gpus
    raise PlacementError(
        f"{fld}.num_gpus={res.num_gpus:g} with {model_field}.tensor_parallel_size={tp}: a vLLM replica takes "
        f"tensor_parallel_size whole GPUs; set {fld}.num_gpus to {tp} (or 0), or below 1 with "
        "tensor_parallel_size 1 to share a GPU"
    )


def role_demands(cfg: BaseModel) -> tuple[list[RoleDemand], list[str]]:
    """The demand of every role in ``cfg`` and warnings about settings that do not do what they seem to."""
    demands, warnings = [], []
    for name, fld, obj, model, label in role_refs(cfg):
        if isinstance(obj, TrainWorkers):
            demands.append(
                RoleDemand(
                    name,
                    fld,
                    "train",
                    obj.num_workers,
                    {"CPU": obj.cpus_per_worker, "GPU": 1.0 if obj.use_gpu else 0.0},
                )
            )
            continue
        res: Resources = obj
        backend = model.backend if model else "hf"
        tp = model.tensor_parallel_size if model else 1
        model_field = fld.rsplit(".", 1)[0] + ".model"
        if backend == "vllm" and model is not None and model.device == "cpu":  # vllm-cpu: an engine on CPUs
            per, kind = {"CPU": res.num_cpus, "GPU": 0.0}, "vllm"
        elif backend == "vllm":
            gpus = _vllm_gpus(fld, res, tp, model_field)
            per = {"CPU": float(tp) if tp > 1 else res.num_cpus, "GPU": gpus}
            kind = "vllm"
        else:
            per = {"CPU": res.num_cpus, "GPU": res.num_gpus}
            kind = "actor"
            if tp > 1:
                warnings.append(
                    f"{model_field}.tensor_parallel_size={tp} is a vllm setting; backend {backend!r} "
                    f"ignores it (hf shards over {fld}.num_gpus GPUs with device_map='auto')"
                )
            if backend == "hf" and res.num_gpus > 1 and model is not None and not model.device_map:
                warnings.append(
                    f"{fld}.num_gpus={res.num_gpus:g} but {model_field}.device_map is unset: the hf "
                    "backend uses one GPU per replica unless device_map='auto'"
                )
        demands.append(
            RoleDemand(
                name,
                fld,
                kind,
                res.replicas,
                per,
                label,
                backend if model else None,
                tp if kind == "vllm" else 1,
                res.colocate_with,
            )
        )
    return demands, warnings


def colocation_groups(demands: Sequence[RoleDemand]) -> list[ColocationGroup]:
    """Group roles by ``colocate_with`` (followed transitively to a root) and size each group's bundles."""
    by_name = {d.name: d for d in demands if d.kind != "train"}
    parent: dict[str, str] = {}
    for d in by_name.values():
        if d.colocate_with is None:
            continue
        if d.colocate_with not in by_name or d.colocate_with == d.name:
            raise PlacementError(
                f"{d.field}.colocate_with = {d.colocate_with!r}: not another role of this job; "
                f"roles: {', '.join(sorted(by_name))}"
            )
        parent[d.name] = d.colocate_with

    def root(name: str) -> str:
        seen = [name]
        while name in parent:
            name = parent[name]
            if name in seen:
                raise PlacementError(
                    f"colocate_with forms a cycle: {' -> '.join(seen + [name])}; one role of a "
                    "group must have colocate_with unset"
                )
            seen.append(name)
        return name

    members: dict[str, list[str]] = {}
    for name in by_name:
        if name in parent:
            members.setdefault(root(name), [])
    for name in by_name:
        r = root(name)
        if r in members:
            members[r].append(name)
    groups = []
    for r, names in members.items():
        ds = [by_name[n] for n in names]
        for d in ds:
            if d.kind == "vllm":
                raise PlacementError(
                    f"{d.name} (backend vllm) cannot join colocation group {r!r}: ray.data.llm reserves its own "
                    f"placement group per engine. Use backend hf for colocated roles, or unset "
                    f"{d.field}.colocate_with and give each vLLM role tensor_parallel_size 1, a fractional "
                    "num_gpus and a matching model.gpu_memory_utilization"
                )
        gpus = [d.per_replica["GPU"] for d in ds]
        size = float(math.ceil(max(gpus) - EPS)) if max(gpus) > 0 else 0.0
        if sum(gpus) > size + EPS:
            asks = ", ".join(f"{d.field}.num_gpus={d.per_replica['GPU']:g}" for d in ds)
            raise PlacementError(
                f"colocated roles {', '.join(names)} ask for {sum(gpus):g} GPUs per replica ({asks}) but share a "
                f"bundle of {size:g} GPU(s): colocation puts them on the same GPUs, so their num_gpus must sum "
                f"to at most {size:g}, e.g. {' and '.join(f'{d.field}.num_gpus={size / len(ds):g}' for d in ds)}"
            )
        bundle = {"CPU": sum(d.per_replica["CPU"] for d in ds), "GPU": size}
        if bundle["CPU"] <= 0 and size <= 0:
            raise PlacementError(
                f"colocated roles {', '.join(names)} ask for no CPU and no GPU: give them "
                "resources.num_cpus or num_gpus (a placement group needs a non-empty bundle)"
            )
        bundle = {k: v for k, v in bundle.items() if v > 0}
        replicas = max(d.replicas for d in ds)
        groups.append(ColocationGroup(r, tuple(names), tuple(dict(bundle) for _ in range(replicas))))
    return groups
