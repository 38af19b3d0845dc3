"""Placement at run time: the colocation placement groups of a run, and the scheduling of a role's actors.

:func:`reserved` creates a run's colocation groups (and prints its plan against the live cluster);
:func:`remote_args` gives a role's actors the placement group their ``resources`` name. Role pools
(``forewarn.pools``) and the job runner are the only callers.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pydantic import BaseModel

from forewarn.config import Resources
from forewarn.placement.demands import PlacementError, colocation_groups, fmt, role_demands, role_refs
from forewarn.placement.nodes import live_nodes
from forewarn.placement.plan import JobLayout, plan

PG_TIMEOUT_S = float(os.environ.get("FOREWARN_PLACEMENT_TIMEOUT_S", "900"))


def remote_args(res: Resources) -> dict[str, Any]:
    """Extra Ray remote args of a role's actors: the placement group of a colocated role, else nothing."""
    if not res.placement_group:
        return {}
    import ray  # run time only: the planning half of this family works without a Ray session
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    try:
        pg = ray.util.get_placement_group(res.placement_group)
    except ValueError:
        raise PlacementError(
            f"placement group {res.placement_group!r} does not exist in this Ray namespace; "
            "it is created by forewarn.placement.reserved() for the run"
        ) from None
    return {
        "scheduling_strategy": PlacementGroupSchedulingStrategy(
            pg, placement_group_bundle_index=-1, placement_group_capture_child_tasks=False
        )
    }


@contextmanager
def reserved(
    cfg: BaseModel,
    job: str | None = None,
    layout: JobLayout | None = None,
    echo: bool = True,
    timeout_s: float = PG_TIMEOUT_S,
) -> Iterator[BaseModel]:
    """Create the colocation placement groups of ``cfg`` on the connected Ray cluster, for one run.

    Yields a copy of ``cfg`` whose colocated roles carry ``resources.placement_group`` (not part of the
    dumped or hashed config); the groups are removed on exit. With ``echo``, prints the plan against the
    cluster as it is now (a note, not an error, when it does not fit: an autoscaler may add nodes). Bad
    colocations raise :class:`PlacementError` before anything is reserved.
    """
    import ray

    demands, _ = role_demands(cfg)
    groups = colocation_groups(demands)
    if echo:
        try:
            print(plan(cfg, live_nodes(), job, layout).render(), flush=True)
        except PlacementError as e:
            print(
                f"# forewarn placement: the cluster does not fit this run as it is now "
                f"(waiting for the autoscaler, if any): {e}",
                flush=True,
            )
    if not groups:
        yield cfg
        return
    cfg = cfg.model_copy(deep=True)
    refs = {name: obj for name, _, obj, _, _ in role_refs(cfg)}
    pgs = []
    try:
        for g in groups:
            name = f"forewarn-{g.name}-{uuid.uuid4().hex[:8]}"
            pg = ray.util.placement_group(list(g.bundles), strategy="PACK", name=name)
            pgs.append(pg)
            if not pg.wait(timeout_seconds=timeout_s):
                raise PlacementError(
                    f"colocation group {g.name!r} ({len(g.bundles)} x {fmt(g.bundles[0])}) was not placed within "
                    f"{timeout_s:g} s: the cluster has no node with room (see `ray status`); lower the members' "
                    f"resources or add nodes (FOREWARN_PLACEMENT_TIMEOUT_S sets the wait)"
                )
            for m in g.members:
                refs[m].placement_group = name
        yield cfg
    finally:
        for pg in pgs:
            ray.util.remove_placement_group(pg)
