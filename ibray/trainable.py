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

import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
from ray import tune

from ibray.config import TrialConfig
from ibray.records import join, read_text
from ibray.train import (
    CHECKPOINT_FILE,
    TrialStateError,
    load_checkpoint,
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
    written = [int(state["written"]) if state is not None else -1]
    reporting = [0.0]  # seconds spent in checkpoints and reports so far: Ray's share of the trial

    def report(checkpoint: dict, scalars: dict) -> None:
        started = time.perf_counter()
        part = join(out, "mi", f"part-{written[0] + 1:06d}-{int(checkpoint['written']):06d}.parquet")
        written[0] = int(checkpoint["written"])
        metrics = {**fixed, **scalars, **output_information(part, trial.estimators[0]), "resumed_from": resumed_from}
        with tempfile.TemporaryDirectory(prefix="ibray-checkpoint-") as folder:
            save_checkpoint(checkpoint, Path(folder) / CHECKPOINT_FILE)
            tune.report(
                {**metrics, "report_seconds": reporting[0] + time.perf_counter() - started},
                checkpoint=tune.Checkpoint.from_directory(folder),
            )
        reporting[0] += time.perf_counter() - started

    run_trial(trial, out, sweep=sweep, data_dir=data_dir, state=state, on_write=report)


def trial_complete(out, trial_id: str) -> bool:
    text = read_text(join(out, "trial.json"))
    if text is None:
        return False
    try:
        info = json.loads(text)
    except ValueError:
        return False  # a damaged record: the trial runs again and rewrites it
    return info.get("trial") == trial_id and info.get("status") == "complete"


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


def output_information(part, estimator: str) -> dict[str, float]:
    """Mean I(X;T), I(T;Y) of the output layer at the latest epoch of a freshly written part."""
    try:
        table = pq.read_table(str(part), columns=["phase", "epoch", "layer", "estimator", "mi_xt", "mi_ty"])
    except (OSError, ValueError):
        return {}
    table = table.filter(pc.equal(table["estimator"], estimator))
    if table.num_rows == 0:
        return {}
    table = table.filter(pc.equal(table["layer"], pc.max(table["layer"])))
    phase = "train" if pc.any(pc.equal(table["phase"], "train")).as_py() else "prefit"
    table = table.filter(pc.equal(table["phase"], phase))
    table = table.filter(pc.equal(table["epoch"], pc.max(table["epoch"])))
    return {
        "mi_xt": float(np.mean(table["mi_xt"].to_numpy())),
        "mi_ty": float(np.mean(table["mi_ty"].to_numpy())),
    }
