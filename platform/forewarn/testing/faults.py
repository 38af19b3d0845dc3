"""Faults for the fault suite (``tests/faults``): real broken things, not mocks.

- :func:`read_only_dir` / :func:`full_disk`: an output directory a job cannot write (``chmod``, or the
  immutable attribute where the tests run as root, who ignores modes) or a tiny tmpfs filled to the brim.
- :func:`mlflow_server`: a real ``mlflow server`` subprocess on a free loopback port (sqlite backend), which
  a test kills mid-run.
- :func:`rows_lost_duplicated`: the two numbers every fault test reports, from the ids a run should have
  written and the ids it wrote.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from forewarn.testing.ray_head import free_port

BIN = Path(sys.executable).parent


def rows_lost_duplicated(expected: Iterable[str], got: Iterable[str]) -> tuple[int, int]:
    """``(lost, duplicated)``: expected ids missing from ``got``, and extra copies of ids in ``got``."""
    want, have = Counter(expected), Counter(got)
    lost = sum(max(0, n - have[k]) for k, n in want.items())
    duplicated = sum(max(0, n - want.get(k, 1)) for k, n in have.items())
    return lost, duplicated


def _writable(path: Path) -> bool:
    try:
        fd, tmp = tempfile.mkstemp(dir=path)
    except OSError:
        return False
    os.close(fd)
    os.unlink(tmp)
    return True


@contextmanager
def read_only_dir(path: Path) -> Iterator[Path | None]:
    """Make ``path`` (a directory) unwritable for this process; yields it, or None where this machine cannot
    (root on a filesystem without the immutable attribute). Restores it on exit."""
    path.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode
    path.chmod(0o500)
    immutable = False
    try:
        if _writable(path) and shutil.which("chattr"):  # root ignores modes; the immutable bit binds root too
            immutable = (
                subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False).returncode == 0
            )
        yield None if _writable(path) else path
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(path)], capture_output=True, check=False)
        path.chmod(mode)


@contextmanager
def full_disk(path: Path, size_kb: int = 256) -> Iterator[Path | None]:
    """Mount a ``size_kb`` tmpfs on ``path`` and fill it; yields ``path``, or None where mounting is not
    allowed (not root, or no CAP_SYS_ADMIN). Unmounts on exit."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)],
            capture_output=True,
            check=False,
        ).returncode
        == 0
        if shutil.which("mount")
        else False
    )
    try:
        if not mounted:
            yield None
            return
        fd = os.open(path / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:  # ENOSPC: full
            pass
        finally:
            os.close(fd)
        yield path
    finally:
        if mounted:
            subprocess.run(["umount", str(path)], capture_output=True, check=False)


@dataclass
class MlflowServer:
    uri: str  # http://127.0.0.1:PORT, for MLFLOW_TRACKING_URI
    proc: subprocess.Popen

    def kill(self) -> None:
        """SIGKILL the server and its workers (its own process group), as a crashed host would."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


@contextmanager
def mlflow_server(root: Path, timeout_s: float = 180.0) -> Iterator[MlflowServer]:
    """``mlflow server`` on a free 127.0.0.1 port with a sqlite store and artifacts under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [
        str(BIN / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "art"),
    ]
    log = open(root / "server.log", "w")  # noqa: SIM115 -- closed in finally
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = MlflowServer(f"http://127.0.0.1:{port}", proc)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{server.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}"
                )
            time.sleep(0.5)
        yield server
    finally:
        server.kill()
        log.close()
