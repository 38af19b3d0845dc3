"""The plan of a placement: pack a job's role demands onto nodes, step by step, and say who gets what.

:func:`plan` returns a :class:`Plan` (rendered by ``forewarn plan``); the packing is best-fit decreasing
on GPUs, then CPUs. Colocation groups are placed first and stay reserved for the whole run; each step of
the job (its :class:`JobLayout`, declared as ``PLACEMENT`` in the job's module) is then placed on what
they leave, and a failure names the roles, what they need at once, what the cluster has and the fields
to change.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from forewarn.placement.demands import (
    EPS,
    KEYS,
    ColocationGroup,
    Node,
    PlacementError,
    RoleDemand,
    colocation_groups,
    fmt,
    role_demands,
)


@dataclass(frozen=True)
class JobLayout:
    """How a job holds its roles over time, declared by the job module as ``PLACEMENT``.

    ``steps``: the roles (fnmatch patterns over role names) that hold resources at the same time, in the
    order the job runs them; roles no step names run alone, after them. Without a layout every inference
    role counts at once (an upper bound). Training sections always run alone, between inference steps.
    ``unplaced``: roles whose ``resources`` the job never asks Ray for, with the reason the plan prints.
    ``resident``: roles held for the whole run (long-lived role pools, ``forewarn.pools.RolePools``): placed
    once, like a colocation group, and reserved through every step and training section. Their CPU asks are
    scaled as ``RolePools`` scales them (to leave the largest training section its CPUs); GPUs never are.
    """

    steps: tuple[tuple[str, ...], ...] = ()
    unplaced: dict[str, str] = field(default_factory=dict)
    resident: tuple[str, ...] = ()

    def holds(self, role: str) -> bool:
        """Whether ``role`` is held for the whole run."""
        return any(fnmatch.fnmatchcase(role, p) for p in self.resident)


def steps(demands: Sequence[RoleDemand], layout: JobLayout | None) -> list[list[str]]:
    """The roles that hold resources at the same time, step by step (see :class:`JobLayout`)."""
    inference = [d.name for d in demands if d.kind != "train" and not (layout and layout.holds(d.name))]
    training = [d.name for d in demands if d.kind == "train"]
    if layout is not None and layout.steps:
        out = [
            [n for n in inference if any(fnmatch.fnmatchcase(n, p) for p in step)] for step in layout.steps
        ]
        taken = {n for s in out for n in s}
        out = [s for s in out if s] + [[n] for n in inference if n not in taken]
    else:
        out = [inference] if inference else []
    return out + [[t] for t in training]


@dataclass
class Plan:
    """Which role gets what, on which node; ``render()`` prints it, ``to_dict()`` is for ``--json``."""

    job: str | None
    nodes: list[Node]
    demands: list[RoleDemand]
    groups: list[ColocationGroup]
    placements: dict[str, list[str]]  # role (or "group:<name>") -> node name of each replica / bundle
    free: dict[str, dict[str, float]]  # node -> free CPU/GPU in its tightest step
    step_of: dict[str, int]  # role -> the step in which it holds its resources (1-based)
    warnings: list[str] = field(default_factory=list)

    def group_of(self, role: str) -> ColocationGroup | None:
        return next((g for g in self.groups if role in g.members), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "nodes": [{"name": n.name, **n.resources} for n in self.nodes],
            "roles": [
                {
                    "role": d.name,
                    "kind": d.kind,
                    "backend": d.backend,
                    "model": d.model,
                    "replicas": d.replicas,
                    "per_replica": d.per_replica,
                    "tensor_parallel": d.tensor_parallel,
                    "step": self.step_of.get(d.name),
                    "group": g.name if (g := self.group_of(d.name)) else None,
                    "nodes": self.placements.get(d.name, []),
                }
                for d in self.demands
            ],
            "groups": [
                {
                    "name": g.name,
                    "members": list(g.members),
                    "bundles": list(g.bundles),
                    "nodes": self.placements.get(f"group:{g.name}", []),
                }
                for g in self.groups
            ],
            "free": self.free,
            "warnings": self.warnings,
        }

    def render(self, width: int = 140) -> str:
        """The plan as text tables (rich): roles, then nodes, then warnings."""
        from io import StringIO

        from rich.console import Console
        from rich.table import Table

        roles = Table(
            title=f"forewarn plan{f' ({self.job})' if self.job else ''}: roles", title_justify="left"
        )
        for col in ("step", "role", "kind", "model", "replicas", "per replica", "placement", "nodes"):
            roles.add_column(col, overflow="fold")
        for d in sorted(self.demands, key=lambda d: self.step_of.get(d.name, 0)):  # whole-run pools first
            g = self.group_of(d.name)
            where = (
                f"group {g.name!r}: {len(g.bundles)} x {{{fmt(g.bundles[0])}}}, whole run"
                if g
                else f"TP {d.tensor_parallel} on one node"
                if d.tensor_parallel > 1
                else "own actors"
                if d.kind != "train"
                else "Ray Train workers"
            )
            nodes = self.placements.get(f"group:{g.name}" if g else d.name, [])
            kind = d.kind if d.kind == "train" else f"{d.kind}/{d.backend or '-'}"
            step = self.step_of.get(d.name, "-")
            roles.add_row(
                "run" if step == 0 else str(step),
                d.name,
                kind,
                d.model or "-",
                str(d.replicas),
                fmt(d.per_replica),
                where,
                ", ".join(_counts(nodes)),
            )
        table = Table(title="nodes", title_justify="left")
        for col in ("node", "CPU", "GPU", "free in the tightest step"):
            table.add_column(col)
        for n in self.nodes:
            table.add_row(
                n.name,
                f"{n.resources.get('CPU', 0):g}",
                f"{n.resources.get('GPU', 0):g}",
                fmt(self.free[n.name]),
            )
        out = StringIO()
        console = Console(file=out, width=width, force_terminal=False, color_system=None)
        console.print(roles)
        console.print(table)
        for w in self.warnings:
            console.print(f"note: {w}")
        return out.getvalue()


def _counts(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    for n in names:
        seen[n] = seen.get(n, 0) + 1
    return [f"{n} x{c}" if c > 1 else n for n, c in seen.items()]


def _fits(req: dict[str, float], free: dict[str, float]) -> bool:
    return all(req.get(k, 0.0) <= free.get(k, 0.0) + EPS for k in KEYS)


def _pack(
    items: list[tuple[str, str, dict[str, float], str]],
    nodes: list[Node],
    free: dict[str, dict[str, float]],
    what: str,
) -> dict[str, list[str]]:
    """Best-fit decreasing of (key, label, request, fix hint) items onto nodes; updates ``free`` in place."""
    placed: dict[str, list[str]] = {}
    order = sorted(items, key=lambda it: (-it[2].get("GPU", 0.0), -it[2].get("CPU", 0.0)))
    for key, label, req, fix in order:
        options = [n for n in nodes if _fits(req, free[n.name])]
        if not options:
            raise PlacementError(_no_room(label, req, fix, nodes, free, items, what))
        best = min(
            options,
            key=lambda n: (
                free[n.name].get("GPU", 0) - req.get("GPU", 0),
                free[n.name].get("CPU", 0) - req.get("CPU", 0),
            ),
        )
        for k in KEYS:
            free[best.name][k] = free[best.name].get(k, 0.0) - req.get(k, 0.0)
        placed.setdefault(key, []).append(best.name)
    return placed


def _no_room(
    label: str,
    req: dict[str, float],
    fix: str,
    nodes: list[Node],
    free: dict[str, dict[str, float]],
    items: list,
    what: str,
) -> str:
    if not nodes:
        return "the cluster has no nodes to place on"
    biggest = max(nodes, key=lambda n: (n.resources.get("GPU", 0), n.resources.get("CPU", 0)))
    if not any(_fits(req, n.resources) for n in nodes):
        return (
            f"{label} needs {fmt(req)} on one node, but the largest node ({biggest.name}) has "
            f"{fmt(biggest.resources)}. Fix: {fix}, or use a node type with more GPUs/CPUs"
        )
    need = {k: sum(it[2].get(k, 0.0) for it in items) for k in KEYS}
    per_node = "; ".join(f"{n.name}: {fmt(n.resources)}" for n in nodes)
    have = {k: sum(n.resources.get(k, 0.0) for n in nodes) for k in KEYS}
    return (
        f"the cluster cannot fit the {what}: {label} ({fmt(req)}) finds no node with room. They need "
        f"{fmt(need)} at once; the cluster has {fmt(have)} ({per_node}), "
        f"free when it failed: {'; '.join(f'{n}: {fmt(f)}' for n, f in free.items())}. Fix: {fix}; or "
        "colocate roles on shared GPUs (resources.colocate_with with fractional num_gpus), or add nodes "
        "(max_workers in cluster.yaml)"
    )


def plan(
    cfg: BaseModel, nodes: Sequence[Node], job: str | None = None, layout: JobLayout | None = None
) -> Plan:
    """Place every role of ``cfg`` on ``nodes`` or raise :class:`PlacementError` saying what does not fit.

    Colocation groups are placed first and keep their bundles for the whole run. Then each step (roles that
    run at the same time, :func:`steps`) is placed on what the groups leave; a step's pools are gone before
    the next starts. ``free`` in the plan is each node's free CPU/GPU in its tightest step.
    """
    nodes = list(nodes)
    demands, warnings = role_demands(cfg)
    skip = layout.unplaced if layout is not None else {}
    warnings += [
        f"{d.name}: not placed ({skip[d.name]}); its resources are not asked for"
        for d in demands
        if d.name in skip
    ]
    demands = [d for d in demands if d.name not in skip]
    groups = colocation_groups(demands)
    by_name = {d.name: d for d in demands}
    grouped = {m: g for g in groups for m in g.members}
    free = {n.name: {k: float(n.resources.get(k, 0.0)) for k in KEYS} for n in nodes}
    items: list[tuple[str, str, dict[str, float], str]] = []
    for g in groups:
        fix = (
            f"lower the replicas or num_cpus/num_gpus of {', '.join(g.members)} "
            f"({' / '.join(by_name[m].field for m in g.members)})"
        )
        items += [
            (f"group:{g.name}", f"colocation group {g.name!r} bundle {i + 1}/{len(g.bundles)}", b, fix)
            for i, b in enumerate(g.bundles)
        ]
    placements = _pack(items, nodes, free, "colocation groups")
    resident = [d for d in demands if layout is not None and layout.holds(d.name) and d.name not in grouped]
    if resident:
        scale = _resident_cpu_scale(resident, demands, free)
        if scale < 1.0:
            warnings.append(
                f"the whole-run pools ({', '.join(d.name for d in resident)}) ask Ray for {scale:.2f} of their "
                "num_cpus, so that the largest training section fits beside them (torch threads stay as set)"
            )
        fix = "lower " + "; ".join(f"{d.field}.replicas or num_gpus" for d in resident)
        items = [
            (
                d.name,
                f"{d.name} replica {r + 1}/{d.replicas}",
                {**d.per_replica, "CPU": d.per_replica.get("CPU", 0.0) * scale},
                fix,
            )
            for d in resident
            for r in range(d.replicas)
        ]
        what = f"roles held for the whole run ({', '.join(d.name for d in resident)})"
        placements.update(_pack(items, nodes, free, what))
    tightest = {n: dict(f) for n, f in free.items()}
    step_of: dict[str, int] = {}
    for i, step in enumerate(steps(demands, layout)):
        items = []
        mine = [by_name[n] for n in step if n not in grouped]
        fix = "lower " + "; ".join(
            f"{d.field}.num_workers or cpus_per_worker"
            if d.kind == "train"
            else f"{d.field}.replicas or {d.name}.model.tensor_parallel_size"
            if d.kind == "vllm"
            else f"{d.field}.replicas or num_gpus / num_cpus"
            for d in mine
        )
        for name in step:
            step_of[name] = i + 1
        for d in mine:
            unit = "worker" if d.kind == "train" else "replica"
            items += [
                (d.name, f"{d.name} {unit} {r + 1}/{d.replicas}", d.per_replica, fix)
                for r in range(d.replicas)
            ]
        if not items:
            continue
        what = (
            f"training section {step[0]!r}"
            if by_name[step[0]].kind == "train"
            else f"roles that run together ({', '.join(step)})"
        )
        step_free = {n: dict(f) for n, f in free.items()}
        placements.update(_pack(items, nodes, step_free, what))
        for n, f in step_free.items():
            tightest[n] = {k: min(tightest[n][k], f[k]) for k in KEYS}
    for m, g in grouped.items():
        placements[m] = placements[f"group:{g.name}"]
    step_of.update({d.name: 0 for d in resident})  # 0: the whole run (colocation groups too)
    step_of.update({m: 0 for m in grouped})
    return Plan(job, nodes, demands, groups, placements, tightest, step_of, warnings)


def _resident_cpu_scale(
    resident: list[RoleDemand], demands: list[RoleDemand], free: dict[str, dict[str, float]]
) -> float:
    """The fraction of their CPUs the whole-run pools ask for (``forewarn.pools.cpu_scale``'s rule): what the
    colocation groups leave free, less the largest training section, over what the pools want."""
    want = sum(d.per_replica.get("CPU", 0.0) * d.replicas for d in resident)
    reserve = max(
        (d.per_replica.get("CPU", 0.0) * d.replicas for d in demands if d.kind == "train"), default=0.0
    )
    room = sum(f.get("CPU", 0.0) for f in free.values()) - reserve
    if want <= room or want == 0 or room <= 0:
        return 1.0  # fits, or cannot fit at any scale (packing then says what to change)
    return room / want
