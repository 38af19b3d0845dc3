"""Where a plan places roles: the nodes of a live Ray cluster, of a ``cluster.yaml`` at its largest, of the
local machine, or given inline; and the offline check of a cluster YAML with Ray's own validator.

``forewarn plan`` takes one of these sources; ``forewarn.placement.plan`` does the packing.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

import yaml

from forewarn.config import RayConfig
from forewarn.errors import ConfigError
from forewarn.placement.demands import Node


def live_nodes() -> list[Node]:
    """The alive nodes of the Ray cluster this process is connected to (``ray.init`` first)."""
    import ray

    out = []
    for i, n in enumerate(sorted(ray.nodes(), key=lambda n: "node:__internal_head__" not in n["Resources"])):
        if not n.get("Alive"):
            continue
        res = n["Resources"]
        head = " (head)" if "node:__internal_head__" in res else ""
        out.append(
            Node(
                f"{n.get('NodeManagerAddress', f'node{i}')}{head}",
                {"CPU": float(res.get("CPU", 0)), "GPU": float(res.get("GPU", 0))},
            )
        )
    return out


def connect_and_list(address: str) -> list[Node]:
    """Join the cluster at ``address`` (a GCS address or 'auto') as a short-lived driver and list its nodes."""
    import ray

    started = not ray.is_initialized()
    if started:
        try:
            ray.init(address=address, log_to_driver=False, logging_level="ERROR")
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ConfigError(
                f"--address {address!r}: cannot connect to a Ray cluster there ({e}). Pass the "
                "GCS address of a running head (host:6379), or use --cluster cluster.yaml to plan "
                "against a cluster that is not up"
            ) from None
    try:
        return live_nodes()
    finally:
        if started:
            ray.shutdown()


def local_nodes(ray_cfg: RayConfig) -> list[Node]:
    """The one node a local ``ray.init`` would start: ``ray.num_cpus/num_gpus`` or what this machine has."""
    gpus = ray_cfg.num_gpus
    if gpus is None:
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [Node("local", {"CPU": float(ray_cfg.num_cpus or os.cpu_count() or 1), "GPU": float(gpus)})]


_SPEC = re.compile(r"^(?:(\d+)\s*x\s*)?(.+)$")


def parse_nodes(specs: list[str]) -> list[Node]:
    """``["2xCPU=48,GPU=4", "CPU=8"]`` -> nodes (an optional ``Nx`` prefix repeats a node)."""
    out: list[Node] = []
    for spec in specs:
        m = _SPEC.match(spec.strip())
        res: dict[str, float] = {}
        for part in (m.group(2) if m else "").split(","):
            key, sep, value = part.partition("=")
            try:
                if not sep or key.strip() not in ("CPU", "GPU"):
                    raise ValueError
                res[key.strip()] = float(value)
            except ValueError:
                raise ConfigError(
                    f"--node {spec!r}: expected [Nx]CPU=<n>,GPU=<n>, e.g. 2xCPU=48,GPU=4"
                ) from None
        count = int(m.group(1) or 1) if m else 1
        out += [Node(f"node{len(out) + i}", res) for i in range(count)]
    return out


def read_cluster_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"cluster file {str(p)!r} does not exist")
    data = yaml.safe_load(p.read_text())
    if not isinstance(data, dict):
        raise ConfigError(f"cluster file {str(p)!r} must hold a mapping")
    return data


def validate_cluster_yaml(path: str | Path) -> dict[str, Any]:
    """Check a cluster YAML offline with the validator ``ray up`` runs (schema + provider defaults).

    Returns the prepared config. ``prepare_config`` fills the provider defaults first, as ``ray up`` does;
    validating without it fails on fields the defaults supply.
    """
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = read_cluster_yaml(path)
    try:
        prepared = prepare_config(copy.deepcopy(cfg))
        validate_config(prepared)
    except Exception as e:  # Ray raises jsonschema's ValidationError or ValueError with the reason
        raise ConfigError(f"cluster file {str(path)!r} is invalid: {str(e).splitlines()[0]}") from None
    return prepared


def cluster_yaml_nodes(path: str | Path) -> list[Node]:
    """The nodes of a cluster YAML at its largest: the head plus each worker type at its max_workers
    (GPU-richest types first), within the global ``max_workers``. Node types must declare CPU/GPU."""
    cfg = read_cluster_yaml(path)
    types: dict[str, Any] = cfg.get("available_node_types") or {}
    head = cfg.get("head_node_type")
    if head not in types:
        raise ConfigError(
            f"cluster file {str(path)!r}: head_node_type {head!r} is not in available_node_types"
        )

    def resources(name: str) -> dict[str, float]:
        res = types[name].get("resources") or {}
        if "CPU" not in res:
            raise ConfigError(
                f"cluster file {str(path)!r}: available_node_types.{name}.resources declares no CPU "
                "(and GPU): forewarn plan needs the counts; declare them as "
                "resources: {CPU: 48, GPU: 4}"
            )
        return {"CPU": float(res.get("CPU", 0)), "GPU": float(res.get("GPU", 0))}

    nodes = [Node(f"{head} (head)", resources(head))]
    budget = int(cfg.get("max_workers", 2))
    workers = sorted(
        (t for t in types if t != head or types[t].get("max_workers", 0) > 0),
        key=lambda t: (-resources(t)["GPU"], -resources(t)["CPU"]),
    )
    for t in workers:
        n = min(int(types[t].get("max_workers", budget)), budget)
        nodes += [Node(f"{t}-{i}", resources(t)) for i in range(n)]
        budget -= n
    return nodes
