"""The one place tests start Ray: in this process (:func:`local_ray`, what the ``ray_local`` fixture uses), as
a separate head started with ``ray start`` as a user would (:func:`local_head`), or as a head plus worker
nodes on this one machine (:func:`local_cluster`, for node-loss faults).

Stopping a head ends only its own processes (matched by its own temp dir and port, plus their children):
``ray stop`` would kill every Ray instance on the machine, other sessions' included.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent


@dataclass
class LocalHead:
    address: str  # GCS address, for RAY_ADDRESS / ray.init
    dashboard: str  # http URL, for `ray job submit --address`
    env: dict[str, str]  # environment for clients: RAY_AUTH_MODE=token (a `ray start` head uses token auth)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_processes(markers: list[str]) -> None:
    """Terminate (then kill) the processes whose command line matches a marker, and their children."""
    import psutil

    me = {os.getpid()} | {p.pid for p in psutil.Process().parents()}
    procs: dict[int, psutil.Process] = {}
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if p.info["pid"] not in me and any(re.search(m, cmd) for m in markers):
            procs[p.pid] = p
    for p in list(procs.values()):
        try:
            procs.update({c.pid: c for c in p.children(recursive=True)})
        except psutil.Error:
            pass
    for p in procs.values():
        try:
            p.terminate()
        except psutil.Error:
            pass
    for p in psutil.wait_procs(list(procs.values()), timeout=5)[1]:
        try:
            p.kill()
        except psutil.Error:
            pass


def init_with_retries(start: Callable[[], object], attempts: int = 5) -> None:
    """Run ``start`` (a ``ray.init``); on a machine so loaded that the raylet misses Ray's fixed 30 s
    registration window ("timed out during startup"), end the processes that attempt started (this
    process's new children, by pid) and try again."""
    import psutil

    for attempt in range(attempts):
        before = {p.pid for p in psutil.Process().children(recursive=True)}
        try:
            start()
            return
        except Exception as e:
            if "timed out during startup" not in str(e) or attempt == attempts - 1:
                raise
            left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
            for p in left:
                try:
                    p.kill()
                except psutil.Error:
                    pass
            psutil.wait_procs(left, timeout=10)


@contextmanager
def local_ray(num_cpus: int = 2, **init_kwargs: object) -> Iterator[str]:
    """A fresh Ray started in this process (one already running is shut down first); yields its GCS address
    (for a subprocess's ``ray.init(address=...)``) and shuts it down on exit. ``init_kwargs`` go to ``ray.init``
    (e.g. ``_metrics_export_port``); no dashboard, no driver log echo, unless asked."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    kwargs = {"include_dashboard": False, "log_to_driver": False, **init_kwargs}
    # address="local": a new Ray even when another `ray start` head runs on this machine (ray.init would join it)
    init_with_retries(lambda: ray.init(address="local", num_cpus=num_cpus, **kwargs))
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@contextmanager
def local_cluster(head_cpus: int = 1, worker_cpus: list[int] | None = None) -> Iterator[tuple[object, list]]:
    """A head and worker nodes on this machine (``ray.cluster_utils.Cluster``), this process connected to it;
    yields ``(cluster, workers)``. ``cluster.remove_node(worker)`` takes a node away as a dying machine would."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster()
    init_with_retries(lambda: cluster.add_node(num_cpus=head_cpus, include_dashboard=False))  # the head
    try:
        workers: list = []
        for n in worker_cpus if worker_cpus is not None else [2]:
            init_with_retries(lambda n=n: workers.append(cluster.add_node(num_cpus=n)))
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        yield cluster, workers
    finally:
        ray.shutdown()
        cluster.shutdown()


@contextmanager
def local_head(num_cpus: int = 2, num_gpus: int | None = None) -> Iterator[LocalHead]:
    """``ray start --head`` with its own temp dir and ports; ``num_gpus`` may declare GPUs the machine lacks
    (scheduling sees them, models stay on CPU)."""
    tmp = tempfile.mkdtemp(prefix="fw-head-", dir="/tmp")  # short: Ray's socket paths have a length limit
    port, dash = free_port(), free_port()
    env = {**os.environ, "RAY_TMPDIR": tmp, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    markers = [re.escape(tmp), rf":{port}\b"]
    # Every agent port is a free one: with the defaults, another Ray on the machine (a test's ray.init, a
    # second head) holds 52365 and this head's job agent never comes up ("No available agent").
    agent_ports = [
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--ray-client-server-port={free_port()}",
    ]
    cmd = [
        str(BIN / "ray"),
        "start",
        "--head",
        f"--port={port}",
        f"--num-cpus={num_cpus}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        "--include-dashboard=true",
        "--disable-usage-stats",
        *agent_ports,
    ] + ([f"--num-gpus={num_gpus}"] if num_gpus is not None else [])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    try:
        if proc.returncode != 0:
            raise RuntimeError(f"ray start failed: {proc.stdout[-2000:]} {proc.stderr[-2000:]}")
        yield LocalHead(f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}", {**env, "RAY_AUTH_MODE": "token"})
    finally:
        stop_processes(markers)
        shutil.rmtree(tmp, ignore_errors=True)
