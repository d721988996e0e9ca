"""What the peers run on: a Python environment of their own per peer, under bench/.peers/
(git-ignored), built by the benchmark on first use and kept; and a private redis-server.

The peers' packages stay out of the service's lock: each venv installs its pinned top-level
requirements from PyPI (their dependencies as pip resolves them that day; `pip freeze` of
each venv goes into the JSON, so a run says what it measured).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .cluster import PROJECT, free_port

PEERS_DIR = PROJECT / "bench" / ".peers"
_INDEX = "https://pypi.org/simple"


@dataclass(frozen=True)
class PeerEnv:
    name: str
    requirements: tuple[str, ...]

    @property
    def path(self) -> Path:
        return PEERS_DIR / self.name

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    @property
    def _stamp(self) -> Path:
        return self.path / ".bench-installed"

    def ready(self) -> bool:
        stamp = self._stamp
        return stamp.exists() and stamp.read_text() == "\n".join(self.requirements)


SYNAPSE_VERSION = "1.163.2"
# redis: the replication between its processes, when it runs workers
SYNAPSE = PeerEnv(
    f"synapse-{SYNAPSE_VERSION}", (f"matrix-synapse[postgres,redis]=={SYNAPSE_VERSION}",)
)
SOCKETIO_VERSION = "5.18.1"
# redis and uvicorn at the versions the service's own lock has.
SOCKETIO = PeerEnv(
    f"socketio-{SOCKETIO_VERSION}",
    (f"python-socketio=={SOCKETIO_VERSION}", "redis==8.1.0", "uvicorn[standard]==0.54.0"),
)


def _pip_env() -> dict[str, str]:
    # As the Makefile does: no pip configuration or PIP_* variable adds a package source.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    return env | {"PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def ensure(peer: PeerEnv, timeout: float = 900.0) -> Path:
    """The peer's interpreter, its venv built first if missing or built for other pins."""
    if peer.ready():
        return peer.python
    PEERS_DIR.mkdir(parents=True, exist_ok=True)
    ignore = PEERS_DIR / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# built by the benchmark (bench/peer_env.py)\n*\n")
    shutil.rmtree(peer.path, ignore_errors=True)
    log = PEERS_DIR / f"{peer.name}.log"
    with log.open("w") as out:
        for argv in (
            [sys.executable, "-m", "venv", str(peer.path)],
            [str(peer.python), "-m", "pip", "install", "--index-url", _INDEX, *peer.requirements],
        ):
            done = subprocess.run(
                argv, stdout=out, stderr=subprocess.STDOUT, env=_pip_env(), timeout=timeout
            )
            if done.returncode != 0:
                tail = "\n".join(log.read_text().splitlines()[-20:])
                raise RuntimeError(f"building {peer.path} failed ({' '.join(argv)}):\n{tail}")
    peer._stamp.write_text("\n".join(peer.requirements))
    return peer.python


def freeze(peer: PeerEnv) -> list[str]:
    """What the peer's venv holds (`pip freeze`), for the JSON."""
    done = subprocess.run(
        [str(peer.python), "-m", "pip", "freeze", "--all"],
        capture_output=True,
        text=True,
        env=_pip_env(),
        timeout=60,
        check=False,
    )
    return done.stdout.split()


@dataclass(frozen=True)
class Redis:
    url: str
    pid: int


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[Redis]:
    """A private redis-server on a free loopback port, no persistence; stopped at the end."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--appendonly", "no", "--dir", str(workdir)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        yield Redis(f"redis://127.0.0.1:{port}/0", proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
