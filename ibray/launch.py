"""Running a sweep on Ray Tune: results layout, checks, the driver lock, Ray, Tuner, resources,
resume and the live view.

    <root>/<sweep>/sweep.yaml                     the sweep file as given
    <root>/<sweep>/driver.lock                    the running driver (host, pid, since, heartbeat)
    <root>/<sweep>/trials/<trial_id>/{mi,metrics,trial.json,checkpoint.pt}   each trial's rows,
                                                  status and latest checkpoint
    <root>/<sweep>/tune/                          Tune's experiment state and trial checkpoints

`root` is a local path or any filesystem URI pyarrow resolves (s3://, gs://, file://); Tune's
storage_path is the sweep's folder, so checkpoints and results share one place that every
node of a cluster can reach. Everything a sweep writes lies under its own folder: two sweeps of
different names under one root never touch each other's files.

Everything a user can get wrong (the results root, an earlier run, the data, the resources, a
driver already running the sweep) is checked before anything is written. One driver at a time
runs a sweep: it holds `driver.lock` and refreshes its heartbeat; a second driver is refused,
whatever its flags, until the first ends or is found dead (its pid gone on the same host, or
no heartbeat for STALE_AFTER_S seconds).

A finished sweep is not run again (unless `overwrite`); an unfinished one needs `resume`, which
restores Tune's experiment (finished trials stay finished, the others continue from their last
checkpoints). When Tune's state is missing, damaged or disagrees with the trials' own records,
the run is rebuilt instead: a fresh Tuner over sweep.yaml's grid, where finished trials return
at once and the others continue from their own `checkpoint.pt`. `resume` with no earlier run
says so and starts the sweep fresh. Tune's experiment state is a pickle that Tune writes
itself: restore only from a results root you trust. Trial checkpoints hold tensors only
(torch.load weights_only=True).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pyarrow.fs as pafs
import ray
import torch
from ray import tune

from ibray.config import TrialConfig
from ibray.data import load_dataset
from ibray.records import is_uri, join, read_text, resolve, write_text_atomic
from ibray.sweep import SweepError, SweepSpec, check_data_unchanged, parse_sweep
from ibray.records import TrialStateError, read_trial_info
from ibray.verify import TrialCheck, verify
from ibray.verify import summary as verify_summary
from ibray.trainable import StrayTrialError, grid_key, train_trial

SWEEP_FILE = "sweep.yaml"
LOCK_FILE = "driver.lock"
TRIALS = "trials"
TUNE = "tune"
VIEW_EVERY_S = 10.0
HEARTBEAT_S = 5.0  # the running driver rewrites its lock this often
STALE_AFTER_S = 60.0  # a lock whose heartbeat is older belongs to a dead driver
# Two drivers that both found no lock both write one; the one whose write came last sees its
# own token after this pause, the other sees a foreign one and backs off.
SETTLE_S = 0.5
PSEUDO_FILESYSTEMS = ("/proc", "/sys")
PROGRESS_MIN_S, PROGRESS_MAX_S = 1.0, 5.0  # bounds of the trials' progress reports' period


@dataclass
class SweepOutcome:
    """What a sweep run did, for the end-of-run summary."""

    name: str
    folder: str  # <root>/<name>, a path or URI
    trials: int
    complete: int
    ran: bool  # False when there was nothing to do
    seconds: float = 0.0
    failed: dict[str, str] = field(default_factory=dict)  # trial id -> last line of its error
    nodes: dict[str, str] = field(default_factory=dict)  # trial id -> Ray node id it last ran on
    interrupted: bool = False  # stopped (Ctrl-C) with trials neither complete nor failed
    rebuilt: bool = False  # Tune's state was unusable and the run was rebuilt from sweep.yaml
    checks: list[TrialCheck] = field(default_factory=list)  # `ibray verify` of its trials at the end

    def summary(self, sweep_file: str) -> str:
        if not self.ran:
            return (
                f"sweep {self.name!r} is already complete in {self.folder} ({self.trials} trials); "
                f"nothing to do (pass --overwrite to run it again)\n"
                f"report: ibray report {self.folder} -o report-{self.name}.html"
            )
        lines = [f"sweep {self.name!r}: {self.complete}/{self.trials} trials complete after {_clock(self.seconds)}"]
        for trial, message in sorted(self.failed.items()):
            lines.append(f"  failed {trial}: {message}")
        if self.nodes:
            per_node = {n: sum(v == n for v in self.nodes.values()) for n in sorted(set(self.nodes.values()))}
            lines.append("nodes: " + ", ".join(f"{n} ({k} trials)" for n, k in per_node.items()))
        lines.append(
            f"results: {self.folder} (Parquet: {TRIALS}/*/mi/*.parquet, {TRIALS}/*/metrics/*.parquet; "
            f"every row carries its axes)"
        )
        if self.complete < self.trials:
            lines.append(f"unfinished: run `ibray sweep {sweep_file} --resume` to finish the remaining trials")
        for check in self.checks:
            if check.problems:
                lines.append("  " + check.line())
        if self.checks:
            lines.append(f"verify: {verify_summary(self.checks)} (`ibray verify {self.folder}` checks again)")
        lines.append(f"report: ibray report {self.folder} -o report-{self.name}.html")
        return "\n".join(lines)

    @property
    def verified(self) -> bool:
        """Every trial complete, with every row exactly once."""
        return len(self.checks) == self.trials and all(check.ok for check in self.checks)


def sweep_folder(spec: SweepSpec, root: str) -> str:
    """<root>/<name>: a URI, or an absolute local path (Tune wants one)."""
    if is_uri(root):
        return str(join(root, spec.name))
    _, absolute = resolve(root)
    return str(join(absolute, spec.name))


def trial_infos(spec: SweepSpec, folder: str) -> dict[str, dict | None]:
    """trial id -> its trial.json, None when it has none or a damaged one (it runs again)."""
    infos = {}
    for trial in spec.trials:
        try:
            infos[trial.trial_id()] = read_trial_info(join(folder, TRIALS, trial.trial_id()))
        except TrialStateError:
            infos[trial.trial_id()] = None
    return infos


def trial_statuses(spec: SweepSpec, folder: str) -> dict[str, str]:
    """trial id -> status in its trial.json ('complete', 'running'), 'absent' when none."""
    return {t: (info or {}).get("status", "absent") for t, info in trial_infos(spec, folder).items()}


def run_sweep(
    spec: SweepSpec,
    root: str,
    address: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    data_dir: str | None = None,
    view_every: float = VIEW_EVERY_S,
) -> SweepOutcome:
    """Run (or resume) every trial of `spec` on Ray Tune, results under `<root>/<spec.name>/`."""
    started = time.perf_counter()
    folder = sweep_folder(spec, root)
    check_results_folder(folder)
    lock = DriverLock(spec, folder)
    lock.refuse_if_held()  # before anything else: the other driver's files are not ours to judge
    existing = _check_existing(spec, folder, resume, overwrite)
    if existing and not overwrite and all(s == "complete" for s in existing.values()):
        return SweepOutcome(spec.name, folder, len(spec.trials), len(spec.trials), ran=False)
    embedded = address is None and not ray.is_initialized()
    if address is None:  # Ray runs here: its data must be here (else exit 2 now), split as the trials split it
        for dataset, fraction, split_seed, column in sorted(
            {(t.dataset, t.train_fraction, t.split_seed, t.label_column) for t in spec.trials}
        ):
            load_dataset(dataset, data_dir, fraction, split_seed, column)
    if embedded:  # refused before Ray's start of several seconds
        _check_resources(spec, _local_resources(), embedded=True, where="this machine")
    if resume and existing is None:
        print(f"no earlier run of sweep {spec.name!r} in {folder}: nothing to resume, starting it fresh", flush=True)

    # The live view replaces Tune's tables; snapshots forced by frequent checkpoints are wanted
    # (they keep the experiment state fresh for --resume), so their warning is noise.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    started_ray = _connect(address)
    try:
        _check_resources(spec, ray.cluster_resources(), embedded=embedded)
        with lock:
            # Checked again under the lock: another driver may have run the sweep meanwhile.
            existing = _check_existing(spec, folder, resume, overwrite)
            if overwrite and existing is not None:
                _clear_sweep_folder(folder)
            write_text_atomic(spec.text, join(folder, SWEEP_FILE))
            results, rebuilt = _fit(spec, folder, resume and existing is not None, data_dir, view_every)
    finally:
        if started_ray:
            ray.shutdown()
    grid = {trial.trial_id() for trial in spec.trials}
    failed, nodes = {}, {}
    for result in results:
        trial_id = _trial_of(result, grid)
        if not trial_id or _is_stray(result):
            continue  # refused stray of a damaged Tune state: the rebuilt run ran the grid
        if result.error is not None:
            failed[trial_id] = _last_line(result.error)
        if (result.metrics or {}).get("node"):
            nodes[trial_id] = result.metrics["node"]
    infos = trial_infos(spec, folder)
    statuses = {t: (info or {}).get("status", "absent") for t, info in infos.items()}
    complete = sum(s == "complete" for s in statuses.values())
    failed = {t: m for t, m in failed.items() if statuses.get(t) != "complete"}
    # Tune ends a run early only when stopped (Ctrl-C, SIGUSR1): then some trials are neither
    # complete nor failed, although Tune may call them terminated.
    interrupted = any(statuses[t] != "complete" and t not in failed for t in statuses)
    seconds = time.perf_counter() - started
    print(final_line(spec, infos, seconds, interrupted, len(failed)), flush=True)
    checks = verify([join(folder, TRIALS)]) if any(infos.values()) else []
    return SweepOutcome(
        spec.name, folder, len(spec.trials), complete, True, seconds, failed, nodes, interrupted, rebuilt, checks
    )


# -- checks before anything is written ---------------------------------------------------------
def check_results_folder(folder: str) -> None:
    """Refuse a sweep folder that cannot be written: below a regular file, in /proc or /sys,
    on a read-only or foreign disk, or (for a URI) on a filesystem pyarrow cannot reach."""
    if is_uri(folder):
        try:
            filesystem, inner = resolve(folder)
            parent = filesystem.get_file_info(inner.rsplit("/", 1)[0])
        except Exception as error:  # pyarrow raises several types for a bad URI or credentials
            raise SweepError(f"results root {folder.rsplit('/', 1)[0]} cannot be reached ({type(error).__name__}: {error})") from error
        if parent.type == pafs.FileType.File:
            raise SweepError(f"results root {parent.path} is a file, not a folder; pass another --results")
        return
    path = Path(os.path.realpath(folder))
    for pseudo in PSEUDO_FILESYSTEMS:
        if path == Path(pseudo) or Path(pseudo) in path.parents:
            raise SweepError(f"results root {path.parent} is under {pseudo}, the kernel's, not a disk; pass another --results")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise SweepError(f"results root {path.parent}: {existing} is a file, not a folder; pass another --results")
    try:  # as root os.access says yes to nearly everything: only a write tells
        handle, probe = tempfile.mkstemp(prefix=".ibray-probe-", dir=existing)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise SweepError(
            f"results root {path.parent} is not writable ({existing}: {error.strerror}); pass another --results"
        ) from error


def _check_existing(spec: SweepSpec, folder: str, resume: bool, overwrite: bool) -> dict[str, str] | None:
    """The statuses of an earlier run of this sweep in `folder`, None when there is none ({}
    under `overwrite`, which replaces whatever sweep the folder holds)."""
    stored = read_text(join(folder, SWEEP_FILE))
    if stored is None:
        filesystem, inner = resolve(folder)
        entries = filesystem.get_file_info(pafs.FileSelector(inner, allow_not_found=True))
        if any(e.base_name != LOCK_FILE for e in entries):
            raise SweepError(
                f"{folder} exists but holds no {SWEEP_FILE}, so it is not a sweep's folder; "
                f"pick another results root or sweep name"
            )
        return None
    if overwrite:
        return {}
    check_data_unchanged(spec, folder)  # before the grids are compared: it says what changed
    try:
        same = parse_sweep(stored, f"{folder}/{SWEEP_FILE}", spec.name).param_space() == spec.param_space()
    except SweepError:
        same = False
    if not same:
        raise SweepError(
            f"{folder} holds sweep {spec.name!r} from a different sweep file; give this one another "
            f"name (the `name:` key), another --results root, or pass --overwrite to replace it"
        )
    statuses = trial_statuses(spec, folder)
    done = sum(s == "complete" for s in statuses.values())
    if done < len(statuses) and not resume:
        raise SweepError(
            f"{folder} holds an unfinished run of sweep {spec.name!r} ({done}/{len(statuses)} trials "
            f"complete); pass --resume to finish it or --overwrite to start over"
        )
    return statuses


def _clear_sweep_folder(folder: str) -> None:
    """Delete an earlier run (only ever a sweep's own folder), keeping this driver's lock."""
    filesystem, inner = resolve(folder)
    for entry in filesystem.get_file_info(pafs.FileSelector(inner, allow_not_found=True)):
        if entry.base_name == LOCK_FILE:
            continue
        if entry.type == pafs.FileType.Directory:
            filesystem.delete_dir(entry.path)
        else:
            filesystem.delete_file(entry.path)


def _local_resources() -> dict[str, float]:
    """What an embedded Ray on this machine will offer, known before it starts."""
    return {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}


def _check_resources(spec: SweepSpec, available: dict, embedded: bool, where: str = "the Ray cluster") -> None:
    gpu, cpu = spec.resources["gpu"], spec.resources["cpu"]
    if gpu > 0 and available.get("GPU", 0) < gpu:
        message = f"{spec.path}: resources.gpu: {gpu:g} per trial, but {where} has {available.get('GPU', 0):g} GPUs"
        if embedded:
            raise SweepError(f"{message}; set resources: {{gpu: 0}} to train on CPUs, or join a GPU cluster with --address")
        print(f"warning: {message}; trials wait until the autoscaler adds GPU nodes", flush=True)
    elif cpu > available.get("CPU", 0):
        message = f"{spec.path}: resources.cpu: {cpu:g} per trial, but {where} has {available.get('CPU', 0):g} CPUs"
        if embedded:
            raise SweepError(f"{message}; lower resources.cpu, or join a larger cluster with --address")
        print(f"warning: {message}; trials wait until the autoscaler adds nodes", flush=True)


# -- one driver at a time ----------------------------------------------------------------------
class DriverLock:
    """`<folder>/driver.lock`: the host, pid, start and heartbeat of the driver running the sweep.

    Written with the atomic writers of ibray.records, so it works on local disks and object
    stores alike (which offer no exclusive create: see SETTLE_S). A context manager: entering
    takes the lock (or raises SweepError naming its holder) and starts the heartbeat; leaving,
    also on Ctrl-C or an error, stops it and deletes the lock if it is still this driver's.
    """

    def __init__(self, spec: SweepSpec, folder: str) -> None:
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
            print(f"taking over the lock of a driver that is gone ({_describe(holder)})", flush=True)
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
            "pid_start": _process_start(os.getpid()),
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
                    print(f"warning: another driver took this sweep's lock ({_describe(holder)}); "
                          f"this one no longer guards it", flush=True)
                    return
                self._write()
            except OSError:
                pass  # a storage hiccup: the next beat tries again, well within STALE_AFTER_S

    def _busy(self, holder: dict) -> str:
        return (
            f"sweep {self.spec.name!r} is being run by another driver ({_describe(holder)}; lock {self.path}); "
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


def _describe(info: dict) -> str:
    since = info.get("started")
    since = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(float(since))) if isinstance(since, (int, float)) else "?"
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


def _process_start(pid: int) -> str | None:
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


# -- Ray and Tune --------------------------------------------------------------------------------
def _connect(address: str | None) -> bool:
    """Join `address`, or start an embedded local Ray; True when this call started Ray."""
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address)
    else:
        ray.init(address="local", include_dashboard=False)  # a new instance, never someone else's
    return True


def _fit(spec: SweepSpec, folder: str, resume: bool, data_dir: str | None, view_every: float):
    """Run Tune's experiment; returns (ResultGrid, whether the run had to be rebuilt)."""
    experiment = str(join(folder, TUNE))
    messages = _TuneMessages(experiment)
    with messages.attached():
        tuner, how = _tuner(spec, folder, resume, data_dir, view_every)
        results = tuner.fit()
        strays = [result for result in results if _is_stray(result)]
        if how == "restored" and strays:
            print(
                f"Tune's state in {experiment} is unusable: it started {len(strays)} trial(s) that are not in "
                f"the sweep's grid (refused); rebuilding the run from sweep.yaml and the trials' own checkpoints",
                flush=True,
            )
            tuner, how = _tuner(spec, folder, False, data_dir, view_every)
            results = tuner.fit()
    return results, how == "rebuilt" or messages.restore_failed or bool(strays)


def _tuner(spec: SweepSpec, folder: str, resume: bool, data_dir: str | None, view_every: float) -> tuple[tune.Tuner, str]:
    """A Tuner over the sweep's grid, and how it starts: 'restored', 'rebuilt' or 'fresh'."""
    grid = {trial.trial_id(): grid_key(trial) for trial in spec.trials}
    trainable = tune.with_resources(
        tune.with_parameters(
            train_trial,
            sweep=spec.name,
            trials_root=str(join(folder, TRIALS)),
            data_dir=data_dir,
            grid=grid,
            # as often as the view prints, within bounds: a report costs a round trip to the driver
            progress_every=min(max(view_every, PROGRESS_MIN_S), PROGRESS_MAX_S),
        ),
        {"cpu": spec.resources["cpu"], "gpu": spec.resources["gpu"]},
    )
    experiment = str(join(folder, TUNE))
    param_space = {
        key: tune.grid_search(value["grid_search"]) if isinstance(value, dict) and "grid_search" in value else value
        for key, value in spec.param_space().items()
    }
    how = "fresh"
    if resume:
        problem = tune_state_problem(spec, experiment, trial_statuses(spec, folder))
        if problem is None:
            try:
                # The grid again: Tune keeps no param_space, and restarts from this one should
                # it fail to load its state after all.
                tuner = tune.Tuner.restore(
                    experiment, trainable, resume_unfinished=True, resume_errored=True, param_space=param_space
                )
                print(f"resuming sweep {spec.name!r} from {experiment}", flush=True)
                return tuner, "restored"
            except Exception as error:  # noqa: BLE001 (any failure to load means: rebuild)
                problem = f"Tune cannot load it ({type(error).__name__}: {str(error)[:200]})"
        print(
            f"Tune's state in {experiment} is unusable ({problem}); rebuilding the run from sweep.yaml and the "
            f"trials' own checkpoints and status",
            flush=True,
        )
        how = "rebuilt"
    filesystem, inner = resolve(experiment)
    if filesystem.get_file_info(inner).type != pafs.FileType.NotFound:
        # Nothing in it is used any more; left, its checkpoints would mix with the new run's.
        filesystem.delete_dir(inner)
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(trial_dirname_creator=trial_dirname, reuse_actors=False),
        run_config=tune.RunConfig(
            name=TUNE,
            storage_path=folder,
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            callbacks=[LiveView(spec.name, view_every)],
            verbose=0,
        ),
    ), how


def tune_state_problem(spec: SweepSpec, experiment: str, statuses: dict[str, str]) -> str | None:
    """Why Tune's experiment state in `experiment` cannot be restored, or None when it can.

    Reads the newest experiment_state-*.json as plain JSON (nothing unpickled): every trial in
    it must be one of the grid's, once, and a trial Tune counts as finished must be complete
    on disk. Tune creates trials lazily, so the state may list fewer than the grid. A format
    this does not know reads as unusable: the rebuilt run is correct, only slower to start.
    """
    try:
        if not tune.Tuner.can_restore(experiment):
            return "Tune saved no state there"
        filesystem, inner = resolve(experiment)
        names = [
            entry.base_name
            for entry in filesystem.get_file_info(pafs.FileSelector(inner))
            if entry.base_name.startswith("experiment_state-") and entry.base_name.endswith(".json")
        ]
        if not names:
            return "it holds no experiment_state file"
        newest = max(names)  # Tune's own choice: the names carry the time
        state = json.loads(read_text(join(experiment, newest)))
        grid = {trial.trial_id(): grid_key(trial) for trial in spec.trials}
        seen = set()
        for trial_json, _runtime in state["trial_data"]:
            trial = json.loads(trial_json)
            config = TrialConfig.from_dict(trial["config"])
            trial_id = config.trial_id()
            if grid.get(trial_id) != grid_key(config):
                return f"{newest} lists trial {trial_id}, which is not in the sweep's grid"
            if trial_id in seen:
                return f"{newest} lists trial {trial_id} twice"
            seen.add(trial_id)
            if trial["status"] == "TERMINATED" and statuses.get(trial_id) != "complete":
                return f"{newest} counts trial {trial_id} as finished, but its results are not complete"
        return None
    except Exception as error:  # noqa: BLE001 (whatever is wrong with it, it is unusable)
        return f"unreadable: {type(error).__name__}: {str(error)[:200]}"


class _TuneMessages(logging.Filter):
    """Tune's log lines that the live view and the driver's own lines replace: they tell a user
    to call Tuner.restore() or repeat what the summary says. Also notes a failed restore (Tune
    then restarts the grid it was given, and says so with a traceback)."""

    LOGGERS = ("ray.tune.tune", "ray.tune.execution.tune_controller", "ray.tune.analysis.experiment_analysis")
    DROPPED = (
        "Failed to fetch metrics",  # trials stopped before their first report
        "Stop signal received",
        "Experiment has been interrupted",
        "Trials did not complete",
        "Wrote the latest version of all result files",
        "Restoring the run from the latest experiment state file",
        "Restarting experiment",
    )

    def __init__(self, experiment: str) -> None:
        super().__init__()
        self.experiment = experiment
        self.restore_failed = False

    @contextlib.contextmanager
    def attached(self):
        loggers = [logging.getLogger(name) for name in self.LOGGERS]
        for logger in loggers:
            logger.addFilter(self)
        try:
            yield self
        finally:
            for logger in loggers:
                logger.removeFilter(self)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("Failed to restore the run state"):
            self.restore_failed = True
            error = record.exc_info[1] if record.exc_info else None
            print(
                f"Tune's state in {self.experiment} is unusable ({type(error).__name__}: {str(error)[:200]}); "
                f"Tune starts the sweep's grid afresh: finished trials stay finished, the others continue "
                f"from their own checkpoints",
                flush=True,
            )
            return False
        return not message.startswith(self.DROPPED)


def trial_dirname(trial) -> str:
    """Tune's folder of a trial is named by its trial id, like its results folder."""
    try:
        return TrialConfig.from_dict(trial.config).trial_id()
    except Exception:  # noqa: BLE001 (a damaged state's config: the trainable refuses it)
        return f"stray-{trial.trial_id}"


def _trial_of(result, grid: set[str]) -> str:
    """The trial id of a Tune result ('' for a stray). A trial that never reported has no
    metrics: then its folder's name tells, less the suffix Tune adds when the name is taken."""
    reported = (result.metrics or {}).get("trial")
    if reported:
        return reported
    name = PurePosixPath(str(result.path)).name if result.path else ""
    name = name if name in grid else re.sub(r"_[0-9a-f]{4}$", "", name)
    return name if name in grid else ""


def _is_stray(result) -> bool:
    """A trial the trainable refused: its config is not a grid point."""
    return isinstance(result.error, StrayTrialError) or "StrayTrialError" in str(result.error or "")


# -- the live view -------------------------------------------------------------------------------
class LiveView(tune.Callback):
    """Prints a line every few seconds: trials done/running/pending, seed-epochs, rate, time left.

    Holds plain data only: Tune pickles it with the experiment, and `setup` resets it when a
    restored experiment starts again. The last line of a run is the driver's (`final_line`):
    once stopped, Tune calls every trial terminated, finished or not.
    """

    def __init__(self, sweep: str, every: float = VIEW_EVERY_S) -> None:
        self.sweep = sweep
        self.every = every
        self.setup()

    def setup(self, **_info) -> None:
        self.started = time.monotonic()
        self.last_print = self.started
        self.work = 0  # seed-epochs trained since this run started, retried ones included
        self.done: dict[str, int] = {}  # trial -> seed-epochs done at its current attempt's last report

    def on_trial_result(self, iteration, trials, trial, result, **_info) -> None:
        seeds = int(result.get("seeds", 0))
        done = int(result.get("seed_epochs_done", seeds * int(result.get("epoch", 0))))
        start = int(result.get("resumed_seed_epochs", seeds * int(result.get("resumed_from", 0))))
        self.work += max(done - self.done.get(trial.trial_id, start), 0)
        self.done[trial.trial_id] = done

    def on_trial_recover(self, iteration, trials, trial, **_info) -> None:
        self.done.pop(trial.trial_id, None)
        reached = (trial.last_result or {}).get("epoch", 0)
        print(f"[{self.sweep}] trial {trial_dirname(trial)} failed at epoch >= {reached}; "
              f"Tune retries it from its last checkpoint", flush=True)

    def on_trial_error(self, iteration, trials, trial, **_info) -> None:
        print(f"[{self.sweep}] trial {trial_dirname(trial)} failed and is out of retries", flush=True)

    def on_step_end(self, iteration, trials, **_info) -> None:
        now = time.monotonic()
        if now - self.last_print >= self.every:
            self.last_print = now
            print(self.line(trials), flush=True)

    def line(self, trials) -> str:
        rows = [(trial.status, trial.config or {}, trial.last_result or {}) for trial in trials]
        return progress_line(self.sweep, time.monotonic() - self.started, self.work, rows)


def progress_line(sweep: str, elapsed: float, work: float, trials: list[tuple[str, dict, dict]]) -> str:
    """The live line from (Tune status, config, last result) of each trial.

    Seed-epochs left come from the trials' reports when they carry them (a restarted seed
    trains its epochs again), else from the epoch reached; the rate is `work` (seed-epochs
    trained in this run) over `elapsed`.
    """
    counts = {"TERMINATED": 0, "RUNNING": 0, "PENDING": 0, "ERROR": 0, "PAUSED": 0}
    done_epochs = total_epochs = left = 0
    for status, config, last in trials:
        counts[status] = counts.get(status, 0) + 1
        seeds = len(config.get("seeds") or ())
        total = int(config.get("epochs", 0)) + int(config.get("prefit_epochs", 0))
        reached = int(last.get("epoch", 0))
        done_epochs += seeds * total if status == "TERMINATED" else int(last.get("seed_epochs_done", seeds * reached))
        total_epochs += seeds * total
        if status not in ("TERMINATED", "ERROR"):
            left += int(last.get("seed_epochs_left", seeds * (total - reached)))
    rate = work / elapsed if elapsed > 0 else 0.0
    eta = _clock(left / rate) if rate > 0 else "?"
    return (
        f"[{sweep} {_clock(elapsed)}] trials: {counts['TERMINATED']} done, {counts['RUNNING']} running, "
        f"{counts['PENDING'] + counts['PAUSED']} pending"
        + (f", {counts['ERROR']} failed" if counts["ERROR"] else "")
        + f" | seed-epochs {done_epochs:,}/{total_epochs:,} | {rate:.1f} seed-epochs/s | ~{eta} left"
    )


def final_line(spec: SweepSpec, infos: dict[str, dict | None], seconds: float, interrupted: bool, failed: int) -> str:
    """The run's last live line, from the trials' own records (Tune's statuses lie once stopped)."""
    complete = sum((info or {}).get("status") == "complete" for info in infos.values())
    unfinished = len(infos) - complete - failed
    written = total = 0
    for trial in spec.trials:
        epochs = trial.prefit_epochs + trial.epochs
        info = infos.get(trial.trial_id()) or {}
        reached = epochs if info.get("status") == "complete" else int(info.get("epochs_run", 0))
        written += len(trial.seeds) * min(reached, epochs)
        total += len(trial.seeds) * epochs
    return (
        f"[{spec.name} {_clock(seconds)}] {'interrupted' if interrupted else 'ended'}: "
        f"{complete} of {len(infos)} trials done"
        + (f", {failed} failed" if failed else "")
        + (f", {unfinished} unfinished" if unfinished > 0 else "")
        + f" | seed-epochs {written:,}/{total:,} written"
    )


def _clock(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _last_line(error: BaseException) -> str:
    """The most telling line of a trial's error (Tune wraps the trainable's exception)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error" in line.split(":")[0] or "Exception" in line.split(":")[0]:
            return line[:500]
    return (lines[-1] if lines else type(error).__name__)[:500]
