"""ibray from Python, for a notebook: run one trial, read results as Polars DataFrames.

    from ibray.api import rows, run

    summary = run(dataset="synthetic12", bits=8, seeds="0-4", epochs=50, out="results/nb")
    mi, metrics = rows("results/nb")

`run` is `ibray trial` as a function (the same config, pinning, checks, lock and resumption;
no Ray), `rows` reads any results folders, a trial's, a sweep's or a root of sweeps, through
analysis.load (duplicates and superseded restarts dropped, as the report sees them).
Problems raise the command's errors (ConfigError, DataError, TrialStateError) with the same
one-line messages.
"""

from __future__ import annotations

from pathlib import Path

from ibray.config import TrialConfig, check_sample_shape
from ibray.run import TrialSummary

__all__ = ["TrialConfig", "TrialSummary", "rows", "run"]

# Fields that hold a tuple: a string is read as `ibray trial` reads the flag, comma-separated.
_LIST_FIELDS = ("estimators", "measure")


def run(
    config: TrialConfig | dict | None = None,
    out: str | Path = "results/trial",
    *,
    data_dir: str | Path | None = None,
    overwrite: bool = False,
    **fields,
) -> TrialSummary | None:
    """Train one trial into the folder `out`, as `ibray trial --out out` does, and return its
    summary (trial id, seeds, epochs, restarts, seconds, final accuracies).

    The trial is `config` (a TrialConfig, or a dict of its fields) with `fields` on top, or
    `fields` alone: any TrialConfig field by name (dataset, architecture, activation, bits,
    seeds as '0-4' or a list, epochs, learning_rate, measure, ...); estimators and measure also
    take 'a,b'. A data file or module file is pinned by its SHA-256 here. An `out` that holds
    an interrupted run of the same trial continues it; one that holds it complete is left
    alone and None is returned (overwrite=True trains it again); one that holds another trial
    is refused. `data_dir`: where the built-in data sets are (default: $IBRAY_DATA_DIR, else
    ~/.cache/ibray).
    """
    from ibray.data import pin_dataset_shape
    from ibray.module_pin import pin_module
    from ibray.records import trial_lock
    from ibray.run import run_resumable

    values = dict(config.to_dict() if isinstance(config, TrialConfig) else config or {})
    values.update(fields)
    for key in _LIST_FIELDS:
        if isinstance(values.get(key), str):
            values[key] = tuple(part.strip() for part in values[key].split(",") if part.strip())
    trial, shape = pin_dataset_shape(TrialConfig.from_dict(values))
    if shape is not None:
        check_sample_shape(trial.architecture, trial.dataset, shape)
    trial = pin_module(trial)
    with trial_lock(out):
        return run_resumable(trial, out, data_dir=data_dir, overwrite=overwrite)


def rows(*paths: str | Path):
    """(mi, metrics): the MI rows (one per seed, phase, epoch, estimator and layer) and the
    metrics rows (one per seed, phase and epoch) of every trial below `paths` (trial, sweep or
    results folders, or s3:// and other URIs), as Polars DataFrames with the Parquet schema's
    columns (README, Results)."""
    from analysis.load import load  # Polars: only here, so that `run` needs none

    if not paths:
        raise TypeError("rows() needs a results folder, e.g. rows('results/trial')")
    results = load(list(paths))
    return results.mi.collect(), results.metrics.collect()
