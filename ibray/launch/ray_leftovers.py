"""What an earlier local Ray left behind when its driver was killed.

A driver that starts its own Ray (`ibray sweep` without --address) is the parent of Ray's
processes; killed with SIGKILL it cannot stop them. The raylet and the GCS then exit, but the
raylet's children, Ray's dashboard agent and runtime-env agent (named `ray::DashboardAgent`,
`ray::RuntimeEnvAgent`), keep running, about 90 MB each, parented by init, serving a cluster
that is gone. Nothing of ibray's results depends on them; they only take memory.

A Ray process whose parent is not a raylet is such a leftover: while its cluster lives, every
`ray::` process (agents and workers alike) is a raylet's child. Only this user's processes are
looked at, and none is ended here: the next start names them and the command that ends them.
Linux only (reads /proc); elsewhere nothing is found.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class Leftover:
    pid: int
    name: str  # e.g. ray::DashboardAgent
    rss_mb: float


def _read(pid: int | str, name: str) -> str:
    try:
        return (PROC / str(pid) / name).read_text(errors="replace")
    except OSError:  # gone meanwhile, or not ours to read
        return ""


def _status(pid: int | str) -> dict[str, str]:
    fields = {}
    for line in _read(pid, "status").splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def _command(pid: int | str) -> str:
    return _read(pid, "cmdline").replace("\0", " ").strip()


def leftover_ray_processes() -> list[Leftover]:
    """This user's Ray processes whose raylet is gone, by pid."""
    if not PROC.is_dir():
        return []
    uid = str(os.getuid())
    found = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        command = _command(entry.name)
        if not command.startswith("ray::"):
            continue
        status = _status(entry.name)
        if status.get("Uid", "").split()[:1] != [uid] or status.get("State", "").startswith("Z"):
            continue
        parent = status.get("PPid", "0")
        if "raylet" in _command(parent):
            continue  # its cluster is alive
        rss_kb = int((status.get("VmRSS") or "0 kB").split()[0])
        found.append(Leftover(int(entry.name), command.split()[0], rss_kb / 1024))
    return sorted(found, key=lambda leftover: leftover.pid)


def leftover_note(leftovers: list[Leftover]) -> str:
    """One line naming the leftovers and how to end them ('' when there are none)."""
    if not leftovers:
        return ""
    names = ", ".join(f"{leftover.pid} {leftover.name}" for leftover in leftovers)
    pids = " ".join(str(leftover.pid) for leftover in leftovers)
    memory = sum(leftover.rss_mb for leftover in leftovers)
    return (
        f"note: {len(leftovers)} process(es) of an earlier local Ray outlived their killed driver ({names}; "
        f"{memory:.0f} MB); they serve a cluster that is gone and hold no results: end them with `kill -9 {pids}`"
    )
