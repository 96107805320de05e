"""One trial end to end: train, write Parquet as it goes, checkpoint, resume.

`run_trial` drives a Trainer, writes its rows every `write_every` epochs (a part file per
write, numbered by the write) and hands a checkpoint to a callback after each write, so a
caller (the `ibray trial` command, the Ray trainable) can resume from it. `run_resumable`
keeps the checkpoint in the trial's own folder, for runs without Ray. Knows nothing of Ray.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ibray.config import TrialConfig, binning_bins, check_sample_shape, own_module
from ibray.data import Dataset, load_pinned
from ibray.errors import TrialStateError
from ibray.measure import Measurement
from ibray.module_pin import pin_module
from ibray.own_module import changed_module
from ibray.records import (
    CHECKPOINT_FILE,
    TRIAL_FILE,
    ResultsWriter,
    list_parts,
    read_trial_info,
    remove_temporaries,
    write_trial_info,
)
from ibray.storage import is_uri, join, replace_atomically
from ibray.trainer import Trainer

PROGRESS_EVERY_S = 5.0  # seconds between light progress reports (no checkpoint)

__all__ = [
    "CHECKPOINT_FILE",
    "TrialStateError",
    "TrialSummary",
    "find_global_ranges",
    "load_checkpoint",
    "read_trial_info",
    "run_resumable",
    "run_trial",
    "save_checkpoint",
]


@dataclass
class TrialSummary:
    out: Path | str  # a local path, or the URI it was given
    trial: str
    seeds: int
    epochs: int
    restarts: dict[int, int]
    seconds: float
    final: dict[str, float]  # mean final train/test accuracy


def needs_global_ranges(config: TrialConfig) -> bool:
    return config.bin_bounds == "global" and any(binning_bins(e) for e in config.estimators)


def find_global_ranges(
    config: TrialConfig, dataset: Dataset, threads: int | None = None
) -> dict[tuple[int, int], tuple[float, float]]:
    """The binning range of each run: min and max over all its layers and epochs.

    Found by training once without measuring MI; training is deterministic, so the measuring
    run that follows goes through the very same states.
    """
    trainer = Trainer(config, dataset, measure_mi=False, threads=threads)
    measurements = [trainer.start()]
    while not trainer.done:
        measurements.append(trainer.step()[0])
    for measurement in measurements:
        measurement.wait()  # the ranges are gathered by the measurements
    return trainer.seen_ranges


def _write_info(out: str | Path, trainer: Trainer, sweep: str, parts: int) -> None:
    write_trial_info(
        out,
        sweep=sweep,
        trial=trainer.trial,
        status="complete" if trainer.done else "running",
        epochs_run=trainer.slowest_epoch,
        parts=parts,
        restarts=dict(zip(trainer.seeds, trainer.restarts)),
        config=trainer.config.to_dict(),
        layers=[spec.name for spec in trainer.model.layers] if own_module(trainer.config.architecture) else None,
    )


def run_trial(
    config: TrialConfig,
    out: str | Path,
    sweep: str = "",
    data_dir: str | Path | None = None,
    dataset: Dataset | None = None,
    state: dict | None = None,
    on_write: Callable[[dict, dict], None] | None = None,
    on_progress: Callable[[dict], None] | None = None,
    progress_every: float = PROGRESS_EVERY_S,
    threads: int | None = None,
) -> TrialSummary:
    """Train config's seeds, writing Parquet every `write_every` epochs under `out`.

    `out` is a local path or a filesystem URI (s3://..., gs://..., file://...).
    on_write(checkpoint, scalars) runs right after each write: `checkpoint` continues the run
    via run_trial(state=checkpoint); `scalars` are a few numbers for a progress report.
    on_progress(progress) runs every `progress_every` seconds, whatever the write cadence, with
    the slowest seed's `epoch` and the trial's `seed_epochs_done` and `seed_epochs_left` (the
    latter counts the whole remaining run of restarted seeds). `threads`: the CPU threads the
    trial may keep busy (see Trainer; None: its default).
    """
    started = time.perf_counter()
    out = out if is_uri(out) else Path(out)
    config = pin_module(config)  # an own module's file named but not pinned yet: read and pinned here
    if dataset is None:
        config, dataset = load_pinned(config, data_dir)  # so is a data file, by the one read
    check_sample_shape(config.architecture, dataset.name, dataset.sample_shape)  # conv: images
    trainer, writer, ranges, parts = _prepared(config, dataset, out, sweep, state, threads)
    last = _train(trainer, writer, out, sweep, ranges, parts, on_write, on_progress, progress_every)
    return TrialSummary(
        out=out,
        trial=trainer.trial,
        seeds=len(trainer.seeds),
        epochs=trainer.slowest_epoch,
        restarts={seed: r for seed, r in zip(trainer.seeds, trainer.restarts) if r},
        seconds=time.perf_counter() - started,
        final=_scalars(last, trainer.slowest_epoch, config.estimators[0]),
    )


def _prepared(config: TrialConfig, dataset: Dataset, out, sweep: str, state: dict | None, threads: int | None):
    """The trial's Trainer (fresh, or continued from `state`), its results writer with the parts
    after `state`'s removed, the global binning ranges and the number of writes so far; the
    trial's record says where it stands."""
    if state is not None:
        ranges = state.get("global_ranges")
        ranges = {(int(s), int(r)): (lo, hi) for s, r, lo, hi in ranges} if ranges else None
    else:
        ranges = find_global_ranges(config, dataset, threads) if needs_global_ranges(config) else None
    trainer = Trainer(config, dataset, sweep, global_ranges=ranges, threads=threads)
    remove_temporaries(out)
    writer = ResultsWriter(out)
    parts = 0  # writes so far: names the next part, so no two writes share a name
    if state is not None:
        trainer.load_state_dict(state["trainer"])
        if "parts" in state:
            parts = int(state["parts"])
            writer.remove_parts_after(parts)
        else:  # a checkpoint of the older naming: its parts stay, new ones cannot collide
            parts = len(list_parts(join(out, "mi")))
    else:
        writer.remove_parts_after(0)
        writer.add(trainer.start())
    # (a run resumed from its final checkpoint has nothing left to do but say so)
    _write_info(out, trainer, sweep, parts)
    return trainer, writer, ranges, parts


def _train(
    trainer: Trainer,
    writer: ResultsWriter,
    out,
    sweep: str,
    ranges,
    parts: int,
    on_write,
    on_progress,
    progress_every: float,
) -> Measurement | None:
    """Train to the end: write every `write_every` epochs (rows, then the record, then
    `on_write` with a checkpoint), report progress between writes; the last measurement."""
    config = trainer.config

    def checkpoint() -> dict:
        packed = [[s, r, lo, hi] for (s, r), (lo, hi) in ranges.items()] if ranges else None
        # "written": the slowest epoch at the last write, for progress reports of a resumed run
        return {
            "trainer": trainer.state_dict(),
            "parts": parts,
            "written": trainer.slowest_epoch,
            "global_ranges": packed,
        }

    last: Measurement | None = None
    last_progress = time.monotonic()
    while not trainer.done:
        measurement, discarded = trainer.step()
        for seed, restarts in discarded:
            writer.drop_seed(seed, restarts)
        writer.add(measurement)
        if not measurement.empty:
            last = measurement
        step = trainer.slowest_epoch
        if step % config.write_every == 0 or trainer.done:
            parts += 1
            writer.flush(parts, step)
            _write_info(out, trainer, sweep, parts)
            if on_write is not None:
                on_write(checkpoint(), _scalars(last, step, config.estimators[0]))
        elif on_progress is not None and time.monotonic() - last_progress >= progress_every:
            last_progress = time.monotonic()
            on_progress(trainer.progress())
    return last


def _scalars(last: Measurement | None, epoch: int, estimator: str) -> dict[str, float]:
    """A few numbers for progress reports: mean accuracies and losses over the seeds of the
    latest measurement, and the output layer's I(X;T), I(T;Y) by `estimator`."""
    scalars: dict[str, float] = {"epoch": epoch}
    if last is None:
        return scalars
    for key in ("train_acc", "test_acc", "train_loss", "test_loss"):
        if last.metrics.get(key):
            scalars[key] = float(np.mean(last.metrics[key]))
    mi = last.mi
    if mi:
        output = max(mi["layer"])
        rows = [
            i for i, (layer, e) in enumerate(zip(mi["layer"], mi["estimator"])) if layer == output and e == estimator
        ]
        for key in ("mi_xt", "mi_ty"):
            scalars[key] = float(np.mean([mi[key][i] for i in rows]))
    return scalars


# -- resumable trials on disk ----------------------------------------------------------------
def save_checkpoint(state: dict, path: Path) -> None:
    """Atomically replace `path` with the checkpoint."""
    replace_atomically(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint without executing pickled code (weights_only)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a damaged file
        raise TrialStateError(
            f"checkpoint {path} is corrupt or unreadable ({type(error).__name__}: {str(error)[:200]}); "
            f"delete it to restart the trial from scratch"
        ) from error


def run_resumable(
    config: TrialConfig,
    out: str | Path,
    sweep: str = "",
    data_dir: str | Path | None = None,
    overwrite: bool = False,
    on_write: Callable[[dict, dict], None] | None = None,
) -> TrialSummary | None:
    """Run a trial in `out`, continuing from `out/checkpoint.pt` if an earlier run stopped.

    Returns None when `out` already holds this trial, complete (nothing is redone).
    """
    out = Path(out)
    config, dataset = load_pinned(pin_module(config), data_dir)
    check_sample_shape(config.architecture, dataset.name, dataset.sample_shape)  # before --overwrite deletes
    info = read_trial_info(out)
    state = None
    if info is not None and not overwrite:
        if info.get("trial") != config.trial_id():
            changed = changed_module(info.get("config", {}).get("architecture"), config.architecture)
            if changed:
                raise TrialStateError(
                    f"{out}: {changed}; restore the file, or pick another --out (or pass --overwrite)"
                )
            raise TrialStateError(
                f"{out} holds results of trial {info.get('trial')!r}, not {config.trial_id()!r}; "
                f"pick another --out (or pass --overwrite to replace them)"
            )
        if info.get("status") == "complete":
            return None
        if (out / CHECKPOINT_FILE).exists():
            state = load_checkpoint(out / CHECKPOINT_FILE)
    elif info is not None and overwrite:
        for name in ("mi", "metrics", CHECKPOINT_FILE, TRIAL_FILE):
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()

    def write(checkpoint: dict, scalars: dict) -> None:
        save_checkpoint(checkpoint, out / CHECKPOINT_FILE)
        if on_write is not None:
            on_write(checkpoint, scalars)

    return run_trial(config, out, sweep=sweep, dataset=dataset, state=state, on_write=write)
