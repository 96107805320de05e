"""One driver at a time per sweep: `<root>/<sweep>/driver.lock` and when it goes stale.

The running driver holds the lock (host, pid, the pid's start time, since when, a heartbeat
it rewrites every HEARTBEAT_S seconds, a random token). A second driver is refused, whatever
its flags, until the first ends or is found dead: its pid gone on the same host (or reused by
another process), or no heartbeat for STALE_AFTER_S seconds when seen from another host.
Written with the atomic writers of ibray.records, so it works on local disks and object
stores alike. Knows nothing of Ray.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Protocol

from ibray.errors import SweepError
from ibray.storage import join, read_text, resolve, write_text_atomic

LOCK_FILE = "driver.lock"
HEARTBEAT_S = 5.0  # the running driver rewrites its lock this often
STALE_AFTER_S = 60.0  # a lock whose heartbeat is older belongs to a dead driver
# Two drivers that both found no lock both write one; the one whose write came last sees its
# own token after this pause, the other sees a foreign one and backs off.
SETTLE_S = 0.5


class Sweep(Protocol):
    """What the lock needs of a sweep (a SweepSpec): its name and its file."""

    name: str
    path: str


class DriverLock:
    """`<folder>/driver.lock`: the host, pid, start and heartbeat of the driver running the sweep.

    Object stores offer no exclusive create (see SETTLE_S). A context manager: entering takes
    the lock (or raises SweepError naming its holder) and starts the heartbeat; leaving, also
    on Ctrl-C or an error, stops it and deletes the lock if it is still this driver's.
    """

    def __init__(self, spec: Sweep, folder: str) -> None:
        self.spec = spec
        self.path = join(folder, LOCK_FILE)
        self.token = uuid.uuid4().hex
        self.started = time.time()
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def refuse_if_held(self) -> None:
        holder = read_lock(self.path)
        if holder is not None and holder.get("token") != self.token and not lock_is_stale(holder):
            raise SweepError(self._busy(holder))

    def __enter__(self) -> "DriverLock":
        holder = read_lock(self.path)
        if holder is not None:
            if not lock_is_stale(holder):
                raise SweepError(self._busy(holder))
            print(f"taking over the lock of a driver that is gone ({describe_holder(holder)})", flush=True)
        try:
            self._write()
        except OSError as error:
            raise SweepError(f"cannot write {self.path} ({error}); check the results root's permissions") from error
        time.sleep(SETTLE_S)
        holder = read_lock(self.path)
        if holder is None or holder.get("token") != self.token:
            raise SweepError(self._busy(holder or {}))
        self._heartbeat = threading.Thread(target=self._beat, name="ibray-driver-lock", daemon=True)
        self._heartbeat.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        with contextlib.suppress(OSError):
            holder = read_lock(self.path)
            if holder is not None and holder.get("token") == self.token:
                filesystem, inner = resolve(self.path)
                filesystem.delete_file(inner)

    def _write(self) -> None:
        info = {
            "sweep": self.spec.name,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "pid_start": process_start(os.getpid()),
            "started": self.started,
            "heartbeat": time.time(),
            "token": self.token,
        }
        write_text_atomic(json.dumps(info, indent=2), self.path)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                holder = read_lock(self.path)
                if holder is not None and holder.get("token") != self.token:
                    print(
                        f"warning: another driver took this sweep's lock ({describe_holder(holder)}); "
                        f"this one no longer guards it",
                        flush=True,
                    )
                    return
                self._write()
            except OSError:
                pass  # a storage hiccup: the next beat tries again, well within STALE_AFTER_S

    def _busy(self, holder: dict) -> str:
        return (
            f"sweep {self.spec.name!r} is being run by another driver ({describe_holder(holder)}; lock {self.path}); "
            f"wait for it to end, or stop it (Ctrl-C) and run `ibray sweep {self.spec.path} --resume`"
        )


def read_lock(path) -> dict | None:
    """A lock file's content; None when there is none or it is unreadable (it names nobody)."""
    try:
        text = read_text(path)
        info = json.loads(text) if text is not None else None
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def lock_is_stale(info: dict, now: float | None = None) -> bool:
    """True when the lock's driver is dead: its pid is gone on this host, or its heartbeat is old."""
    try:
        heartbeat, pid, host = float(info["heartbeat"]), int(info["pid"]), str(info["host"])
    except (KeyError, TypeError, ValueError):
        return True  # a lock that names no driver guards nothing
    if host == socket.gethostname() and not _process_alive(pid, info.get("pid_start")):
        return True
    return (time.time() if now is None else now) - heartbeat > STALE_AFTER_S


def describe_holder(info: dict) -> str:
    since = info.get("started")
    since = (
        time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(float(since))) if isinstance(since, (int, float)) else "?"
    )
    beat = info.get("heartbeat")
    age = f", heartbeat {time.time() - float(beat):.0f} s ago" if isinstance(beat, (int, float)) else ""
    return f"host {info.get('host', '?')}, pid {info.get('pid', '?')}, since {since}{age}"


def _process_stat(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (state first), None where there is no such file."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot: with the pid, it names one process."""
    fields = _process_stat(pid)
    return fields[19] if fields and len(fields) > 19 else None


def _process_alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: alive
    fields = _process_stat(pid)
    if fields is None:
        return True
    if fields[0] in ("Z", "X"):  # killed, not yet reaped
        return False
    return start is None or len(fields) <= 19 or fields[19] == start  # else the pid was reused
