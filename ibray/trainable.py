"""The Ray Tune function trainable: one trial of a sweep, i.e. one grid point and one block of seeds.

A plain function of a flat config (TrialConfig's keys). It restores from `tune.get_checkpoint()`
first, trains with `ibray.train.run_trial`, writes Parquet under
`<trials_root>/<trial_id>/` and, at every write (every `write_every` epochs), hands Tune a
checkpoint (`checkpoint.pt`, loadable with torch.load(weights_only=True)) and a few scalars:
epoch, accuracies, the output layer's I(X;T), I(T;Y) (mean over seeds, first estimator) and
the seconds spent so far on checkpoints and reports (report_seconds, for the benchmark).
Per-layer rows never go through Tune.

A trial whose results folder already says "complete" returns at once without touching
anything, so a resumed sweep never reruns or rewrites a finished trial, even when Tune's own
record of it is older than the results.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import ray
from ray import tune

from ibray.config import TrialConfig
from ibray.records import join
from ibray.train import (
    CHECKPOINT_FILE,
    TrialStateError,
    load_checkpoint,
    read_trial_info,
    run_trial,
    save_checkpoint,
)


def train_trial(config: dict, sweep: str, trials_root: str, data_dir: str | None = None) -> None:
    """Train one trial of sweep `sweep`; results under `<trials_root>/<trial_id>/`."""
    # Ray logs every persisted checkpoint at INFO; the sweep's live view says enough.
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    trial = TrialConfig.from_dict(config)
    out = join(trials_root, trial.trial_id())
    total = trial.prefit_epochs + trial.epochs
    fixed = {"seeds": len(trial.seeds), "total_epochs": total, "node": ray.get_runtime_context().get_node_id()}
    if trial_complete(out, trial.trial_id()):
        tune.report({**fixed, "epoch": total, "resumed_from": total})
        return
    state = restore_state(tune.get_checkpoint(), trial.trial_id())
    resumed_from = int(state["written"]) if state is not None else 0
    reporting = [0.0]  # seconds spent in checkpoints and reports so far: Ray's share of the trial

    def report(checkpoint: dict, scalars: dict) -> None:
        started = time.perf_counter()
        metrics = {**fixed, **scalars, "resumed_from": resumed_from}
        with tempfile.TemporaryDirectory(prefix="ibray-checkpoint-") as folder:
            save_checkpoint(checkpoint, Path(folder) / CHECKPOINT_FILE)
            tune.report(
                {**metrics, "report_seconds": reporting[0] + time.perf_counter() - started},
                checkpoint=tune.Checkpoint.from_directory(folder),
            )
        reporting[0] += time.perf_counter() - started

    run_trial(trial, out, sweep=sweep, data_dir=data_dir, state=state, on_write=report)


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
