"""Running a sweep on Ray Tune: the checks, the data, Ray, the Tuner and its resources, resume.

Its parts live beside it: the sweep's folder and the checks of a results root
(ibray.sweep_folder), one driver at a time (ibray.driver_lock), a results root that every node
of a cluster shares (ibray.launch.storage_probe), what is read of Tune's own records
(ibray.launch.tune_state) and the live view (ibray.launch.live_view).

Everything a user can get wrong (the results root, an earlier run, the data, the resources, a
driver already running the sweep, a root the cluster's nodes do not share) is checked before
anything is written. Tune's storage_path is the sweep's folder, so checkpoints and results
share one place that every node reaches.

The data travels with the sweep: the driver loads each data set once (a missing or damaged one
exits with code 2 before Ray starts), puts it in Ray's object store, and every trial, wherever
it runs, gets it from there: worker nodes need no data files and no download, on one machine
or a cluster alike. `data_on_workers` opts out (for data too large for the object store):
trials then load their data from their own node's data directory.

A finished sweep is not run again (unless `overwrite`); an unfinished one needs `resume`. Each
trial's folder (trial.json, checkpoint.pt, its Parquet parts) is the whole resume state: every
run, first or resumed, is a fresh Tuner over sweep.yaml's grid, where finished trials return at
once and the others continue from their own `checkpoint.pt`. Tune's experiment folder of an
earlier run is deleted unread, so a damaged or foreign Tune state cannot change what runs.
`resume` with no earlier run says so and starts the sweep fresh.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field

import pyarrow.fs as pafs
import ray
from ray import tune
from ray.tune.logger import JsonLoggerCallback

from ibray.data import DataKey
from ibray.dataset import Dataset
from ibray.driver_lock import DriverLock

# LiveView and trial_dirname are also looked up here by the Tuner state (tuner.pkl) of runs
# started before they moved to their own modules: --resume of such a run still loads it.
from ibray.launch.live_view import VIEW_EVERY_S, LiveView, StopOnStorageFault, clock, final_line, most_running
from ibray.launch.outcome import DATA_ERROR, STORAGE_ERROR, grid_key
from ibray.launch.ray_leftovers import leftover_note, leftover_ray_processes
from ibray.launch.storage_probe import SHARED_STORAGE_FIX, check_shared
from ibray.launch.trainable import train_trial
from ibray.launch.tune_state import TuneMessages, last_line, trial_dirname, trial_of
from ibray.module_names import module_ref
from ibray.storage import join, resolve
from ibray.sweep import SweepError, SweepSpec
from ibray.sweep_folder import (
    TRIALS,
    TUNE,
    check_existing,
    check_results_folder,
    clear_sweep_folder,
    sweep_folder,
    trial_infos,
    trial_statuses,
    write_sweep_file,
)
from ibray.verify import TrialCheck, verify
from ibray.verify import summary as verify_summary

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
    checks: list[TrialCheck] = field(default_factory=list)  # `ibray verify` of its trials at the end
    at_once: int = 0  # the most trials that were running at the same time
    storage: dict[str, str] = field(default_factory=dict)  # trial id -> its storage fault (full, read-only)
    tune_fault: str = ""  # the storage fault that kept Tune from saving its own state, if any

    def summary(self, sweep_file: str) -> str:
        if not self.ran:
            return (
                f"sweep {self.name!r} is already complete in {self.folder} ({self.trials} trials); "
                f"nothing to do (pass --overwrite to run it again)\n"
                f"report: ibray report {self.folder} -o report-{self.name}.html"
            )
        lines = [f"sweep {self.name!r}: {self.complete}/{self.trials} trials complete after {clock(self.seconds)}"]
        for trial, message in sorted(self.failed.items()):
            lines.append(f"  failed {trial}: {message}")
        if self.nodes:
            per_node = {n: sum(v == n for v in self.nodes.values()) for n in sorted(set(self.nodes.values()))}
            lines.append("nodes: " + ", ".join(f"{n} ({k} trials)" for n, k in per_node.items()))
        lines.append(
            f"results: {self.folder} (Parquet: {TRIALS}/*/mi/*.parquet, {TRIALS}/*/metrics/*.parquet; "
            f"every row carries its axes)"
        )
        if self.tune_fault:
            lines.append(
                f"warning: Tune could not save its own state ({self.tune_fault}); nothing of the results is lost "
                f"(each trial's folder holds what --resume needs)"
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


def run_sweep(
    spec: SweepSpec,
    root: str,
    address: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    data_dir: str | None = None,
    view_every: float = VIEW_EVERY_S,
    data_on_workers: bool = False,
) -> SweepOutcome:
    """Run (or resume) every trial of `spec` on Ray Tune, results under `<root>/<spec.name>/`."""
    started = time.perf_counter()
    folder = sweep_folder(spec, root)
    check_results_folder(folder)
    lock = DriverLock(spec, folder)
    lock.refuse_if_held()  # before anything else: the other driver's files are not ours to judge
    existing = check_existing(spec, folder, resume, overwrite)
    if existing and not overwrite and all(s == "complete" for s in existing.values()):
        return SweepOutcome(spec.name, folder, len(spec.trials), len(spec.trials), ran=False)
    embedded = address is None and not ray.is_initialized()
    # Loaded here, once: missing or damaged data exits with code 2 now. Trials on an embedded
    # Ray read this machine's disk, so even data_on_workers is checked here then.
    datasets = load_datasets(spec, data_dir) if embedded or not data_on_workers else {}
    if embedded:  # refused before Ray's start of several seconds
        _check_resources(spec, _local_resources(spec), embedded=True, where="this machine")
    if resume and existing is None:
        print(f"no earlier run of sweep {spec.name!r} in {folder}: nothing to resume, starting it fresh", flush=True)

    # The live view replaces Tune's tables; snapshots forced by frequent checkpoints are wanted
    # (they keep the experiment state fresh for --resume), so their warning is noise.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Of Tune's own loggers only its result.json (_tuner's callbacks): its CSV copy is read by
    # nobody, and its TensorBoard writer imports torch into the driver (some 3 s of CPU, 4 s
    # before the first trial starts); ibray's rows and report are the results.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    started_ray = _connect(address, module_env(spec))
    try:
        waits = _check_resources(spec, ray.cluster_resources(), embedded=embedded)
        if not embedded:  # trials may run on other machines than this one: do they share the root?
            if waits and isinstance(resolve(folder)[0], pafs.LocalFileSystem):
                raise SweepError(
                    f"results root {folder.rsplit('/', 1)[0]} is a local path, but the sweep waits for nodes the "
                    f"autoscaler adds, whose disks cannot be checked now; {SHARED_STORAGE_FIX}"
                )
            check_shared(folder)
        shared = None if data_on_workers else {key: ray.put(dataset) for key, dataset in datasets.items()}
        del datasets  # the object store holds them now
        with lock:
            # Checked again under the lock: another driver may have run the sweep meanwhile.
            existing = check_existing(spec, folder, resume, overwrite)
            if overwrite and existing is not None:
                clear_sweep_folder(folder)
            write_sweep_file(spec, folder)
            results, at_once, tune_fault = _fit(
                spec, folder, resume and existing is not None, data_dir, shared, view_every
            )
    finally:
        if started_ray:
            ray.shutdown()
    return _outcome(spec, folder, results, time.perf_counter() - started, at_once, tune_fault)


def _outcome(spec: SweepSpec, folder: str, results, seconds: float, at_once: int, tune_fault: str) -> SweepOutcome:
    """What the run did, from Tune's results and the trials' own records; prints the last line
    of the live view and verifies the trials' rows."""
    grid = {trial.trial_id() for trial in spec.trials}
    failed, nodes, storage = {}, {}, {}
    for result in results:
        trial_id = trial_of(result, grid)
        if not trial_id:
            continue
        if result.error is not None:
            failed[trial_id] = last_line(result.error)
        elif (result.metrics or {}).get(DATA_ERROR):
            failed[trial_id] = result.metrics[DATA_ERROR]
        elif (result.metrics or {}).get(STORAGE_ERROR):
            failed[trial_id] = storage[trial_id] = result.metrics[STORAGE_ERROR]
        if (result.metrics or {}).get("node"):
            nodes[trial_id] = result.metrics["node"]
    infos = trial_infos(spec, folder)
    statuses = {t: (info or {}).get("status", "absent") for t, info in infos.items()}
    failed = {t: m for t, m in failed.items() if statuses.get(t) != "complete"}
    # Tune ends a run early only when stopped (Ctrl-C, SIGUSR1): then some trials are neither
    # complete nor failed, although Tune may call them terminated.
    interrupted = not storage and any(statuses[t] != "complete" and t not in failed for t in statuses)
    print(final_line(spec, infos, seconds, interrupted, len(failed), at_once), flush=True)
    return SweepOutcome(
        name=spec.name,
        folder=folder,
        trials=len(spec.trials),
        complete=sum(s == "complete" for s in statuses.values()),
        ran=True,
        seconds=seconds,
        failed=failed,
        nodes=nodes,
        interrupted=interrupted,
        checks=verify([join(folder, TRIALS)]) if any(infos.values()) else [],
        at_once=at_once,
        storage=storage,
        tune_fault=tune_fault,
    )


def load_datasets(spec: SweepSpec, data_dir: str | None) -> dict[DataKey, Dataset]:
    """Every data set the sweep's trials train on, once each, split as the trials split it."""
    return {key: key.load(data_dir) for key in sorted({DataKey.of(trial) for trial in spec.trials})}


def _local_resources(spec: SweepSpec) -> dict[str, float]:
    """What an embedded Ray on this machine will offer, known before it starts. The GPUs are
    counted only for a sweep that asks for some: the driver runs no trial and starts without
    torch (seconds of import) otherwise."""
    gpus = 0.0
    if spec.resources["gpu"] > 0:
        import torch

        gpus = float(torch.cuda.device_count())
    return {"CPU": float(os.cpu_count() or 1), "GPU": gpus}


def _check_resources(spec: SweepSpec, available: dict, embedded: bool, where: str = "the Ray cluster") -> bool:
    """Refuse (embedded) or warn about (a cluster, which may autoscale) a trial's resources that
    `available` lacks; True when trials will wait for nodes the cluster does not have yet."""
    gpu, cpu = spec.resources["gpu"], spec.resources["cpu"]
    if gpu > 0 and available.get("GPU", 0) < gpu:
        message = f"{spec.path}: resources.gpu: {gpu:g} per trial, but {where} has {available.get('GPU', 0):g} GPUs"
        if embedded:
            raise SweepError(
                f"{message}; set resources: {{gpu: 0}} to train on CPUs, or join a GPU cluster with --address"
            )
        print(f"warning: {message}; trials wait until the autoscaler adds GPU nodes", flush=True)
        return True
    if cpu > available.get("CPU", 0):
        message = f"{spec.path}: resources.cpu: {cpu:g} per trial, but {where} has {available.get('CPU', 0):g} CPUs"
        if embedded:
            raise SweepError(f"{message}; lower resources.cpu, or join a larger cluster with --address")
        print(f"warning: {message}; trials wait until the autoscaler adds nodes", flush=True)
        return True
    return False


ADDRESS_TIMEOUT_S = 10.0  # to reach a head's port before Ray's own endless retries


def _host_port(address: str) -> tuple[str, str] | None:
    """(host without brackets, port) of a HOST:PORT address; None for `auto`, ray:// and the like."""
    host, colon, port = address.rpartition(":")
    if not colon or "://" in address or not port.isdigit():
        return None
    return host.strip("[]"), port


def _refuse_silent_address(address: str) -> None:
    """A HOST:PORT where nothing answers is refused at once (Ray would retry it forever,
    saying nothing); `auto` and ray:// addresses are left to Ray, which fails fast on them."""
    parts = _host_port(address)
    if parts is None:
        return
    host, port = parts
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=ADDRESS_TIMEOUT_S).close()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise SweepError(
            f"--address {address}: nothing answers there ({reason}); start the cluster's head there "
            f"(`ray start --head --port {port}`), give its address, or leave --address out for a local Ray"
        ) from None


def _refuse_another_cluster(address: str) -> None:
    """In a process already connected to a Ray cluster, a HOST:PORT naming another one is refused
    (Ray joins one cluster a process; the sweep would silently run on the first)."""
    parts = _host_port(address)
    if parts is None:
        return  # `auto` or ray://: the connected cluster
    host, port = parts
    current = ray.get_runtime_context().gcs_address
    current_host, _, current_port = current.rpartition(":")
    if port != current_port or host not in (current_host, "127.0.0.1", "localhost", ""):
        raise SweepError(
            f"--address {address}: this process is already connected to the Ray cluster at {current}, "
            "and Ray joins one cluster a process; run the sweep from a new process (`ibray sweep`), "
            "or give that cluster's address"
        )


def module_env(spec: SweepSpec) -> dict | None:
    """Ray's runtime environment for a sweep of own modules given as files: their folder as the
    workers' working directory, so that a node without the file gets it with the sweep (a pinned
    file missing at its path is looked for there, by name, and used only if its SHA-256 matches).
    None when no trial names a module file. Raises SweepError when the files lie in several
    folders: Ray ships one working directory."""
    folders = sorted(
        {
            os.path.dirname(ref.source)
            for trial in spec.trials
            if (ref := module_ref(trial.architecture)) and ref.is_file
        }
    )
    if not folders:
        return None
    if len(folders) > 1:
        raise SweepError(
            f"{spec.path}: architecture: the module files lie in {len(folders)} folders ({', '.join(folders)}); Ray "
            f"ships one folder to the cluster's nodes: put the files in one folder"
        )
    return {"working_dir": folders[0]}


def _connect(address: str | None, runtime_env: dict | None = None) -> bool:
    """Join `address`, or start an embedded local Ray; True when this call started Ray. A
    `runtime_env` (module_env's) goes with a join: an embedded Ray's workers read this machine's
    files where they are."""
    if ray.is_initialized():  # run_sweep called in a process already on a Ray: that one, and no other
        if address:
            _refuse_silent_address(address)
            _refuse_another_cluster(address)
        return False
    note = leftover_note(leftover_ray_processes())
    if note:
        print(note, flush=True)
    if address:
        _refuse_silent_address(address)
        ray.init(address=address, runtime_env=runtime_env)
    else:
        # a new instance, never someone else's; without the worker processes Ray starts ahead for
        # a first driver (one per CPU, ~0.7 s of CPU each): Tune's trials start their own
        ray.init(address="local", include_dashboard=False, _system_config={"prestart_worker_first_driver": False})
    return True


def _fit(spec: SweepSpec, folder: str, resume: bool, data_dir: str | None, datasets: dict | None, view_every: float):
    """Run Tune's experiment; returns (ResultGrid, the most trials running at once, the storage
    fault that kept Tune from saving its state or '')."""
    messages = TuneMessages(str(join(folder, TUNE)))
    with messages.attached():
        results = _tuner(spec, folder, resume, data_dir, datasets, view_every).fit()
    return results, most_running(spec.name), messages.storage_fault


def _tuner(
    spec: SweepSpec, folder: str, resume: bool, data_dir: str | None, datasets: dict | None, view_every: float
) -> tune.Tuner:
    """A fresh Tuner over the sweep's grid; with `resume`, its trials continue from their folders."""
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
            datasets=datasets,  # object refs: each trial fetches only its own data set
        ),
        {"cpu": spec.resources["cpu"], "gpu": spec.resources["gpu"]},
    )
    experiment = str(join(folder, TUNE))
    if resume:
        statuses = trial_statuses(spec, folder)
        done = sum(status == "complete" for status in statuses.values())
        print(
            f"resuming sweep {spec.name!r}: {done} of {len(spec.trials)} trials complete; the others continue from "
            f"their own checkpoints in {join(folder, TRIALS)}",
            flush=True,
        )
    filesystem, inner = resolve(experiment)
    if filesystem.get_file_info(inner).type != pafs.FileType.NotFound:
        # Tune's folder of an earlier run: nothing in it decides what runs, and left, its
        # checkpoints would mix with the new run's.
        filesystem.delete_dir(inner)
    return tune.Tuner(
        trainable,
        param_space=spec.param_space(),  # its {"grid_search": values} is what tune.grid_search returns
        # A trial's process imports Ray Tune and torch (some 5 s of CPU) before it trains; reused,
        # the next trial on it starts at once (a resumed sweep's complete trials each take a
        # moment, not a process). Nothing of a trial outlives it in the process that could change
        # the next one's numbers (ibray.device.own_code: compiled graphs are the trial's own).
        # Not with --data-on-workers: a node without the data ends each trial it gets at once,
        # and its process, reused, would take every pending trial in turn.
        tune_config=tune.TuneConfig(trial_dirname_creator=trial_dirname, reuse_actors=datasets is not None),
        run_config=tune.RunConfig(
            name=TUNE,
            storage_path=folder,
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            callbacks=[LiveView(spec.name, view_every), JsonLoggerCallback()],
            stop=StopOnStorageFault(),
            verbose=0,
        ),
    )
