"""Running a sweep on Ray Tune: results layout, Ray, Tuner, resources, resume and the live view.

    <root>/<sweep>/sweep.yaml                     the sweep file as given
    <root>/<sweep>/trials/<trial_id>/{mi,metrics,trial.json}   Parquet rows of each trial
    <root>/<sweep>/tune/                          Tune's experiment state and trial checkpoints

`root` is a local path or any filesystem URI pyarrow resolves (s3://, gs://, file://); Tune's
storage_path is the sweep's folder, so checkpoints and results share one place that every
node of a cluster can reach. Everything a sweep writes lies under its own folder: two sweeps of
different names under one root never touch each other's files.

A finished sweep is not run again (unless `overwrite`); an unfinished one needs `resume`, which
restores Tune's experiment (finished trials stay finished, the others continue from their last
checkpoints). Tune's experiment state is a pickle that Tune writes itself: restore only from a
results root you trust. Trial checkpoints hold tensors only (torch.load weights_only=True).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import pyarrow.fs as pafs
import ray
from ray import tune

from ibray.config import TrialConfig
from ibray.data import load_dataset
from ibray.records import is_uri, join, read_text, resolve, write_text_atomic
from ibray.sweep import SweepError, SweepSpec, parse_sweep
from ibray.train import TrialStateError, read_trial_info
from ibray.trainable import train_trial

SWEEP_FILE = "sweep.yaml"
TRIALS = "trials"
TUNE = "tune"
VIEW_EVERY_S = 10.0


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
        lines.append(f"report: ibray report {self.folder} -o report-{self.name}.html")
        return "\n".join(lines)


def sweep_folder(spec: SweepSpec, root: str) -> str:
    """<root>/<name>: a URI, or an absolute local path (Tune wants one)."""
    if is_uri(root):
        return str(join(root, spec.name))
    _, absolute = resolve(root)
    return str(join(absolute, spec.name))


def trial_statuses(spec: SweepSpec, folder: str) -> dict[str, str]:
    """trial id -> status in its trial.json ('complete', 'running'), 'absent' when none."""
    statuses = {}
    for trial in spec.trials:
        try:
            info = read_trial_info(join(folder, TRIALS, trial.trial_id()))
        except TrialStateError:
            info = None  # damaged: as good as absent, the trial runs again
        statuses[trial.trial_id()] = info.get("status", "absent") if info else "absent"
    return statuses


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
    filesystem, inner = resolve(folder)
    trials = spec.trials
    if overwrite:
        if read_text(join(folder, SWEEP_FILE)) is not None:  # only ever a sweep's own folder
            filesystem.delete_dir(inner)
        else:
            _check_existing(spec, folder, resume)  # refuses a folder that is not a sweep's
    else:
        statuses = _check_existing(spec, folder, resume)
        if statuses and all(s == "complete" for s in statuses.values()):
            return SweepOutcome(spec.name, folder, len(trials), len(trials), ran=False)
    if address is None:  # the embedded Ray trains here: its data must be here (else exit 2 now)
        for dataset in sorted({trial.dataset for trial in trials}):
            load_dataset(dataset, data_dir)
    write_text_atomic(spec.text, join(folder, SWEEP_FILE))

    # The live view replaces Tune's tables; snapshots forced by frequent checkpoints are wanted
    # (they keep the experiment state fresh for --resume), so their warning is noise.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    started_ray = _connect(address)
    try:
        _check_resources(spec, embedded=address is None and started_ray)
        results = _tuner(spec, folder, resume, data_dir, view_every).fit()
        failed, nodes = {}, {}
        for result in results:
            trial_id = TrialConfig.from_dict(result.config).trial_id()
            if result.error is not None:
                failed[trial_id] = _last_line(result.error)
            if result.metrics and result.metrics.get("node"):
                nodes[trial_id] = result.metrics["node"]
    finally:
        if started_ray:
            ray.shutdown()
    statuses = trial_statuses(spec, folder)
    complete = sum(s == "complete" for s in statuses.values())
    failed = {t: m for t, m in failed.items() if statuses.get(t) != "complete"}
    return SweepOutcome(spec.name, folder, len(trials), complete, True, time.perf_counter() - started, failed, nodes)


def _check_existing(spec: SweepSpec, folder: str, resume: bool) -> dict[str, str] | None:
    """The statuses of an earlier run of this sweep in `folder`, None when there is none."""
    stored = read_text(join(folder, SWEEP_FILE))
    if stored is None:
        filesystem, inner = resolve(folder)
        entries = filesystem.get_file_info(pafs.FileSelector(inner, allow_not_found=True))
        if entries:
            raise SweepError(
                f"{folder} exists but holds no {SWEEP_FILE}, so it is not a sweep's folder; "
                f"pick another results root or sweep name"
            )
        return None
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


def _connect(address: str | None) -> bool:
    """Join `address`, or start an embedded local Ray; True when this call started Ray."""
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address)
    else:
        ray.init(address="local", include_dashboard=False)  # a new instance, never someone else's
    return True


def _check_resources(spec: SweepSpec, embedded: bool) -> None:
    available = ray.cluster_resources()
    gpu, cpu = spec.resources["gpu"], spec.resources["cpu"]
    if gpu > 0 and available.get("GPU", 0) < gpu:
        message = (
            f"{spec.path}: resources.gpu: {gpu:g} per trial, but the Ray cluster has "
            f"{available.get('GPU', 0):g} GPUs"
        )
        if embedded:
            raise SweepError(f"{message}; set resources: {{gpu: 0}} to train on CPUs, or join a GPU cluster with --address")
        print(f"warning: {message}; trials wait until the autoscaler adds GPU nodes", flush=True)
    elif cpu > available.get("CPU", 0):
        message = f"{spec.path}: resources.cpu: {cpu:g} per trial, but the Ray cluster has {available.get('CPU', 0):g} CPUs"
        if embedded:
            raise SweepError(f"{message}; lower resources.cpu")
        print(f"warning: {message}; trials wait until the autoscaler adds nodes", flush=True)


def _tuner(spec: SweepSpec, folder: str, resume: bool, data_dir: str | None, view_every: float) -> tune.Tuner:
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, sweep=spec.name, trials_root=str(join(folder, TRIALS)), data_dir=data_dir),
        {"cpu": spec.resources["cpu"], "gpu": spec.resources["gpu"]},
    )
    experiment = str(join(folder, TUNE))
    if resume and tune.Tuner.can_restore(experiment):
        print(f"resuming sweep {spec.name!r} from {experiment}", flush=True)
        return tune.Tuner.restore(experiment, trainable, resume_unfinished=True, resume_errored=True)
    filesystem, inner = resolve(experiment)
    if filesystem.get_file_info(inner).type != pafs.FileType.NotFound:
        # Left by a run stopped before Tune saved its state: nothing in it can be resumed.
        filesystem.delete_dir(inner)
    param_space = {
        key: tune.grid_search(value["grid_search"]) if isinstance(value, dict) and "grid_search" in value else value
        for key, value in spec.param_space().items()
    }
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
    )


def trial_dirname(trial) -> str:
    """Tune's folder of a trial is named by its trial id, like its results folder."""
    return TrialConfig.from_dict(trial.config).trial_id()


class LiveView(tune.Callback):
    """Prints a line every few seconds: trials done/running/pending, seed-epochs, rate, time left.

    Holds plain data only: Tune pickles it with the experiment, and `setup` resets it when a
    restored experiment starts again.
    """

    def __init__(self, sweep: str, every: float = VIEW_EVERY_S) -> None:
        self.sweep = sweep
        self.every = every
        self.setup()

    def setup(self, **_info) -> None:
        self.started = time.monotonic()
        self.last_print = self.started
        self.work = 0  # seed-epochs trained since this run started, retried ones included
        self.epoch: dict[str, int] = {}  # trial -> last epoch reported by its current attempt

    def on_trial_result(self, iteration, trials, trial, result, **_info) -> None:
        epoch, seeds = int(result.get("epoch", 0)), int(result.get("seeds", 0))
        previous = self.epoch.get(trial.trial_id, int(result.get("resumed_from", 0)))
        self.work += seeds * max(epoch - previous, 0)
        self.epoch[trial.trial_id] = epoch

    def on_trial_recover(self, iteration, trials, trial, **_info) -> None:
        self.epoch.pop(trial.trial_id, None)
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

    def on_experiment_end(self, trials, **_info) -> None:
        print(self.line(trials), flush=True)

    def line(self, trials) -> str:
        counts = {"TERMINATED": 0, "RUNNING": 0, "PENDING": 0, "ERROR": 0, "PAUSED": 0}
        done_epochs = total_epochs = left = 0
        for trial in trials:
            counts[trial.status] = counts.get(trial.status, 0) + 1
            seeds = len(trial.config.get("seeds", ()))
            total = int(trial.config.get("epochs", 0)) + int(trial.config.get("prefit_epochs", 0))
            reached = total if trial.status == "TERMINATED" else int((trial.last_result or {}).get("epoch", 0))
            done_epochs += seeds * reached
            total_epochs += seeds * total
            if trial.status != "ERROR":
                left += seeds * (total - reached)
        elapsed = time.monotonic() - self.started
        rate = self.work / elapsed if elapsed > 0 else 0.0
        eta = _clock(left / rate) if rate > 0 else "?"
        return (
            f"[{self.sweep} {_clock(elapsed)}] trials: {counts['TERMINATED']} done, {counts['RUNNING']} running, "
            f"{counts['PENDING'] + counts['PAUSED']} pending"
            + (f", {counts['ERROR']} failed" if counts["ERROR"] else "")
            + f" | seed-epochs {done_epochs:,}/{total_epochs:,} | {rate:.1f} seed-epochs/s | ~{eta} left"
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
