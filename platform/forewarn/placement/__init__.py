"""Placement, one way through: demands (what a config asks for) -> nodes (where) -> plan (pack, offline)
-> reserve (placement groups and actor scheduling at run time). Each module imports only the ones before it.

    from forewarn.placement import plan, reserved, remote_args, JobLayout
"""

from forewarn.placement.demands import (
    ColocationGroup,
    Node,
    PlacementError,
    RoleDemand,
    colocation_groups,
    fmt,
    role_demands,
    role_refs,
)
from forewarn.placement.nodes import (
    cluster_yaml_nodes,
    connect_and_list,
    live_nodes,
    local_nodes,
    parse_nodes,
    validate_cluster_yaml,
)
from forewarn.placement.plan import JobLayout, Plan, plan, steps
from forewarn.placement.reserve import remote_args, reserved

__all__ = [
    "ColocationGroup",
    "JobLayout",
    "Node",
    "PlacementError",
    "Plan",
    "RoleDemand",
    "cluster_yaml_nodes",
    "colocation_groups",
    "connect_and_list",
    "fmt",
    "live_nodes",
    "local_nodes",
    "parse_nodes",
    "plan",
    "remote_args",
    "reserved",
    "role_demands",
    "role_refs",
    "steps",
    "validate_cluster_yaml",
]
