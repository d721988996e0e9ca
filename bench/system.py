"""Readings from the machine: what it is, who used the CPU, how much memory a process holds;
and the client's heap settled before a measurement."""

from __future__ import annotations

import asyncio
import gc
import os
import platform
import resource
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

_TICK = os.sysconf("SC_CLK_TCK")


T = TypeVar("T")


async def settled(measurement: Awaitable[T]) -> T:
    """`measurement`, run after the client's heap is collected and frozen (as each chat
    instance's is once it has started, service/app.py): what earlier scenarios left in
    this process is then never scanned again, and a collection during a timed request
    costs what the request made, not what the whole run holds. Every figure is measured
    by this client, ours and the peers' alike, so each gets the same treatment."""
    gc.collect()
    gc.freeze()
    return await measurement


def raise_open_files_limit() -> int:
    """Raise the soft limit on open files to the hard limit (servers we start inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 1_048_576 if hard == resource.RLIM_INFINITY else hard
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def rss_kib(pid: int) -> int:
    """VmRSS of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def machine_busy_seconds() -> tuple[float, float]:
    """CPU time spent on the machine (all cores, neither idle nor iowait), and the part of
    it spent in interrupts (irq, softirq: e.g. loopback TCP), which no process is billed."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    interrupts = sum(values[5:7])
    return (sum(values[:8]) - idle) / _TICK, interrupts / _TICK


async def machine_quiet(at_most: float = 60.0, cores: float = 0.35) -> None:
    """Until the whole machine uses under `cores` over a quarter of a second, at most
    `at_most` s. What a scenario leaves running (an autovacuum worker
    after the ingests, a peer's background work, the debounced presence writes of sockets
    just closed) then does not land inside the next scenario's timed requests."""
    until = time.perf_counter() + at_most
    while time.perf_counter() < until:
        before, _ = machine_busy_seconds()
        await asyncio.sleep(0.25)
        used, _ = machine_busy_seconds()
        if used - before < cores * 0.25:
            return


def processes_in(directory: Path) -> list[int]:
    """The processes whose working directory is `directory` (a PostgreSQL server's postmaster
    and backends run in its data directory)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cwd").resolve(strict=True) == directory:
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


@dataclass
class CpuSample:
    at: float
    machine: float
    interrupts: float
    processes: dict[str, float]
    groups: dict[str, dict[int, float]]


class CpuMeter:
    """CPU used between start and stop by named processes, by groups of processes (all the
    processes of a PostgreSQL server), and by everything else on the machine; in cores: 1.0
    is one core kept busy for the whole interval."""

    def __init__(self, pids: Mapping[str, int], directories: Mapping[str, Path]) -> None:
        self._pids = dict(pids)
        self._directories = {name: path.resolve() for name, path in directories.items()}
        self._start = self._sample()

    @staticmethod
    def _cpu(pid: int) -> float | None:
        try:
            return process_cpu_seconds(pid)
        except OSError:
            return None

    def _sample(self) -> CpuSample:
        processes = {name: self._cpu(pid) or 0.0 for name, pid in self._pids.items()}
        groups: dict[str, dict[int, float]] = {}
        for name, directory in self._directories.items():
            members = {pid: self._cpu(pid) for pid in processes_in(directory)}
            groups[name] = {pid: cpu for pid, cpu in members.items() if cpu is not None}
        machine, interrupts = machine_busy_seconds()
        return CpuSample(time.monotonic(), machine, interrupts, processes, groups)

    def stop(self) -> dict[str, float]:
        end = self._sample()
        elapsed = max(end.at - self._start.at, 1e-6)
        used = {
            name: (end.processes[name] - self._start.processes[name]) / elapsed
            for name in self._pids
        }
        for name, members in end.groups.items():
            before = self._start.groups.get(name, {})
            # A process started meanwhile used all its CPU time inside the interval.
            spent = sum(cpu - before.get(pid, 0.0) for pid, cpu in members.items())
            used[name] = spent / elapsed
        machine = (end.machine - self._start.machine) / elapsed
        used["interrupts"] = (end.interrupts - self._start.interrupts) / elapsed
        used["rest of the machine"] = max(machine - sum(used.values()), 0.0)
        used["machine"] = machine
        return {name: round(value, 2) for name, value in used.items()}


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def machine_info() -> dict[str, object]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_kib = int(line.split()[1])
    except OSError:
        pass
    return {
        "cores": os.cpu_count() or 0,
        "cpu_model": model,
        "memory_gib": round(memory_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }
