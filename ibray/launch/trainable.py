"""The Ray Tune function trainable: one trial of a sweep, i.e. one grid point and one block of seeds.

A plain function of a flat config (TrialConfig's keys). It restores from `tune.get_checkpoint()`
first, trains with `ibray.run.run_trial`, writes Parquet under
`<trials_root>/<trial_id>/` and, at every write (every `write_every` epochs), hands Tune a
checkpoint (`checkpoint.pt`, loadable with torch.load(weights_only=True)) and a few scalars:
epoch, accuracies, the output layer's I(X;T), I(T;Y) (mean over seeds, first estimator),
seed-epochs done and left (restarted seeds count again) and the seconds spent so far on
checkpoints and reports (report_seconds, for the benchmark). Between writes, when the training
loop offers progress callbacks, it reports the seed-epochs alone, without a checkpoint, so the
sweep's live view moves even when writes are far apart. Per-layer rows never go through Tune.

Each write also keeps a copy of the checkpoint beside the trial's rows
(`<trials_root>/<trial_id>/checkpoint.pt`, the layout of `ibray trial`): that copy is what a
resumed sweep continues from (the launcher starts a fresh Tuner every time). Within one run,
Tune's retry of a failed trial hands it its last checkpoint, the same state.

Data: the launcher loads each data set once, on the driver, and hands it over through Ray's
object store (`datasets`: DataKey -> ObjectRef), so a worker node needs no data files and no
download. With `datasets` None (`ibray sweep --data-on-workers`) the trial loads its data from
its node's own data directory; a data set missing or damaged there is the same on every retry,
so the trial reports the error once (DATA_ERROR) and ends instead of raising it, which Tune
would retry `max_failures` times.

Resources: a trial keeps busy no more CPUs than Ray gave it (its assigned resources): with one
CPU it measures inline, with two or more one thread trains and one measures (see
ibray.trainer); with a fraction of a GPU, torch's allocator is capped at that fraction of the
GPU's memory, so trials that share a GPU cannot starve each other of it.

torch and the trainer (ibray.run) are imported where a trial runs, not with this module: the
driver, which imports it to hand Tune the trainable, starts without them. One process may run
several trials in turn (the launcher's reuse_actors): nothing here keeps state between calls.

A trial whose results folder already says "complete" returns at once without touching
anything, so a resumed sweep never reruns or rewrites a finished trial, even when Tune's own
record of it is older than the results. A config that is not one of the sweep's grid points
(a guard: the launcher only ever hands Tune the grid) is refused before anything is written.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import ray
from ray import tune

from ibray.config import ConfigError, TrialConfig
from ibray.data import DataKey
from ibray.dataset import Dataset
from ibray.errors import DataError, StrayTrialError, TrialStateError
from ibray.launch.outcome import DATA_ERROR, STORAGE_ERROR, grid_key, storage_fault
from ibray.records import CHECKPOINT_FILE, read_trial_info
from ibray.storage import is_uri, join, replace_atomically, resolve

CHECKPOINT_PREFIX = "ibray-checkpoint-"  # temporary folders: ibray-checkpoint-<pid>-<random>


def checkpoint_folder() -> tempfile.TemporaryDirectory:
    """A temporary folder for a checkpoint on its way to Tune, named by this process's pid so
    that one left by a killed worker is known as such (`remove_orphaned_checkpoint_folders`)."""
    return tempfile.TemporaryDirectory(prefix=f"{CHECKPOINT_PREFIX}{os.getpid()}-")


def remove_orphaned_checkpoint_folders(root: str | Path | None = None) -> list[Path]:
    """Delete the checkpoint folders in `root` (default: the temporary directory) whose process
    is gone: a worker killed with SIGKILL cannot remove its own (1.3 MB each on MNIST)."""
    removed = []
    for folder in Path(root or tempfile.gettempdir()).glob(f"{CHECKPOINT_PREFIX}*-*"):
        pid = folder.name[len(CHECKPOINT_PREFIX) :].split("-", 1)[0]
        if not pid.isdigit() or pid == str(os.getpid()):
            continue
        try:
            os.kill(int(pid), 0)
            continue  # alive (its own, or a reused pid: left for later)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
        except PermissionError:
            continue  # another user's live process
    return removed


def train_trial(
    config: dict,
    sweep: str,
    trials_root: str,
    data_dir: str | None = None,
    grid: dict[str, str] | None = None,
    progress_every: float | None = None,
    datasets: dict | None = None,
) -> None:
    """Train one trial of sweep `sweep`; results under `<trials_root>/<trial_id>/`.

    `grid` maps the sweep's trial ids to their grid_key; a config not in it is refused.
    `progress_every`: seconds between progress reports (None: the training loop's default).
    `datasets`: DataKey -> ObjectRef of the Dataset, put by the driver; None: load the data
    from this node's `data_dir`.
    """
    # Ray logs every persisted checkpoint at INFO; the sweep's live view says enough.
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    trial = grid_point(config, sweep, grid)
    remove_orphaned_checkpoint_folders()
    out = join(trials_root, trial.trial_id())
    total = trial.prefit_epochs + trial.epochs
    seeds = len(trial.seeds)
    threads = honour_allocation(ray.get_runtime_context().get_assigned_resources())
    fixed = {
        "trial": trial.trial_id(),
        "seeds": seeds,
        "total_epochs": total,
        "node": ray.get_runtime_context().get_node_id(),
        "threads": threads,
    }
    if trial_complete(out, trial.trial_id()):
        done = {"epoch": total, "seed_epochs_done": seeds * total, "seed_epochs_left": 0}
        tune.report({**fixed, **done, "resumed_from": total, "resumed_seed_epochs": seeds * total})
        return
    try:
        dataset = trial_dataset(trial, datasets, data_dir)
    except DataError as error:
        tune.report({**fixed, DATA_ERROR: f"DataError: {error}"})
        return
    state = restore_state(tune.get_checkpoint(), trial.trial_id())
    if state is None:  # a fresh Tune run: the trial's own copy, if an earlier run left one
        state = restore_copy(out, trial.trial_id())
    slot_epochs = list(state["trainer"]["slot_epoch"]) if state is not None else [0] * seeds
    fixed.update(resumed_from=min(slot_epochs), resumed_seed_epochs=sum(slot_epochs))
    reporting = [0.0]  # seconds spent in checkpoints and reports so far: Ray's share of the trial
    from ibray.run import run_trial, save_checkpoint  # torch and the trainer: see the module's docstring

    def report(checkpoint: dict, scalars: dict) -> None:
        started = time.perf_counter()
        metrics = {**fixed, **seed_epochs(checkpoint, total), **scalars}
        with checkpoint_folder() as folder:
            save_checkpoint(checkpoint, Path(folder) / CHECKPOINT_FILE)
            keep_copy(Path(folder) / CHECKPOINT_FILE, out)
            tune.report(
                {**metrics, "report_seconds": reporting[0] + time.perf_counter() - started},
                checkpoint=tune.Checkpoint.from_directory(folder),
            )
        reporting[0] += time.perf_counter() - started

    def progress(scalars: dict) -> None:
        started = time.perf_counter()
        tune.report({**fixed, **scalars})
        reporting[0] += time.perf_counter() - started

    extra = {"progress_every": progress_every} if progress_every is not None else {}
    try:
        run_trial(
            trial,
            out,
            sweep=sweep,
            dataset=dataset,
            state=state,
            on_write=report,
            on_progress=progress,
            threads=threads,
            **extra,
        )
    except Exception as error:
        fault = storage_fault(error, str(out))
        if fault is None:
            raise  # Tune retries it from its last checkpoint
        # Reported once, not raised: a retry on a disk that stays full fails the same way.
        # What was written stays whole (every write is atomic); --resume continues from it.
        tune.report({**fixed, STORAGE_ERROR: fault})


def honour_allocation(assigned: dict[str, float]) -> int:
    """Make this process use what Ray assigned to the trial (`get_assigned_resources()`, e.g.
    {"CPU": 2.0, "GPU": 0.5}); returns the CPU threads the trial's Trainers may keep busy
    (run_trial's `threads`)."""
    threads = max(int(assigned.get("CPU", 1)), 1)  # a fraction of a CPU still runs one thread
    gpu = assigned.get("GPU", 0.0)
    if 0 < gpu < 1:
        import torch

        if torch.cuda.is_available():
            # Ray shares a GPU by bookkeeping only; the cap makes a trial that outgrows its share
            # fail alone (out of memory) instead of starving the trials beside it.
            torch.cuda.set_per_process_memory_fraction(gpu)
    return threads


def trial_dataset(trial: TrialConfig, datasets: dict | None, data_dir: str | None) -> Dataset:
    """The trial's Dataset: from the driver through Ray's object store, or (datasets None) loaded
    from this node's data directory; raises DataError when it cannot be loaded."""
    if datasets is None:
        return DataKey.of(trial).load(data_dir)
    shared = ray.get(datasets[DataKey.of(trial)])
    # Ray hands out read-only views of its shared memory, and torch warns about tensors on
    # read-only memory: the trial trains on its own copy (MNIST: about 220 MB, for its lifetime).
    arrays = {}
    for field in dataclasses.fields(shared):
        value = getattr(shared, field.name)
        if isinstance(value, np.ndarray):
            arrays[field.name] = np.array(value)
    return dataclasses.replace(shared, **arrays)


def grid_point(config: dict, sweep: str, grid: dict[str, str] | None) -> TrialConfig:
    """The TrialConfig of `config`; raises StrayTrialError unless it is one of `grid`'s points."""
    try:
        trial = TrialConfig.from_dict(config)
    except (ConfigError, TypeError, ValueError) as error:
        if grid is None:
            raise
        problem = f"not a trial config: {error}"
    else:
        if grid is None or grid.get(trial.trial_id()) == grid_key(trial):
            return trial
        problem = f"trial {trial.trial_id()} is not one of its {len(grid)} grid points"
    raise StrayTrialError(
        f"sweep {sweep!r}: Tune started a trial whose config is not in sweep.yaml's grid ({problem}; config "
        f"{json.dumps(config, sort_keys=True, default=str)[:300]}); nothing was run"
    )


def seed_epochs(checkpoint: dict, total: int) -> dict[str, int]:
    """Seed-epochs done and left at a checkpoint; a restarted seed's left counts from its restart."""
    epochs = [int(e) for e in checkpoint["trainer"]["slot_epoch"]]
    return {"seed_epochs_done": sum(epochs), "seed_epochs_left": sum(max(total - e, 0) for e in epochs)}


def trial_complete(out, trial_id: str) -> bool:
    try:
        info = read_trial_info(out)
    except TrialStateError:
        return False  # a damaged record: the trial runs again and rewrites it
    return info is not None and info.get("trial") == trial_id and info.get("status") == "complete"


def restore_state(checkpoint: tune.Checkpoint | None, trial_id: str) -> dict | None:
    """The run_trial state in Tune's checkpoint, or None; raises TrialStateError if unusable."""
    if checkpoint is None:
        return None
    from ibray.run import load_checkpoint

    with checkpoint.as_directory() as folder:
        path = Path(folder) / CHECKPOINT_FILE
        if not path.exists():
            raise TrialStateError(
                f"trial {trial_id}: Tune checkpoint {checkpoint.path} holds no {CHECKPOINT_FILE}; "
                f"rerun the sweep with --overwrite to start it over"
            )
        try:
            return load_checkpoint(path)
        except TrialStateError as error:
            raise TrialStateError(f"trial {trial_id}: Tune checkpoint {checkpoint.path}: {error}") from error


def keep_copy(checkpoint: Path, out: str | Path) -> None:
    """Replace `<out>/checkpoint.pt` with the file `checkpoint`, atomically (one PUT on object stores)."""
    filesystem, inner = resolve(join(out, CHECKPOINT_FILE))
    if isinstance(filesystem, pafs.LocalFileSystem):
        replace_atomically(Path(inner), lambda tmp: shutil.copyfile(checkpoint, tmp))
        return
    filesystem.create_dir(inner.rsplit("/", 1)[0], recursive=True)
    with filesystem.open_output_stream(inner) as sink:
        sink.write(checkpoint.read_bytes())


def restore_copy(out: str | Path, trial_id: str) -> dict | None:
    """The state in the trial's own `<out>/checkpoint.pt`, or None when there is none."""
    from ibray.run import load_checkpoint

    where = join(out, CHECKPOINT_FILE)
    filesystem, inner = resolve(where)
    if filesystem.get_file_info(inner).type != pafs.FileType.File:
        return None
    try:
        if isinstance(filesystem, pafs.LocalFileSystem):
            return load_checkpoint(Path(inner))
        with checkpoint_folder() as folder:
            local = Path(folder) / CHECKPOINT_FILE
            with filesystem.open_input_stream(inner) as source:
                local.write_bytes(source.read())
            return load_checkpoint(local)
    except TrialStateError as error:
        name = where if is_uri(where) else str(where)
        raise TrialStateError(
            f"trial {trial_id}: its own checkpoint {name} is corrupt or unreadable ({str(error.__cause__)[:200]}); "
            f"delete it to restart the trial from scratch"
        ) from error
