"""What the launcher reads of Tune's own records: the trial behind a Tune result, its error's
last line, a trial's folder name, and Tune's log lines that the driver's own lines replace.

Tune's experiment state is never restored: each trial's folder (trial.json, checkpoint.pt, its
Parquet parts) is the whole resume state, and `--resume` runs a fresh Tuner over the same grid
(ibray.launch.launcher). Nothing Tune saved is read back, so a damaged or foreign Tune state
cannot change what runs. Trial checkpoints hold tensors only (torch.load weights_only=True).
"""

from __future__ import annotations

import contextlib
import logging
import re
from pathlib import PurePosixPath

from ibray.config import TrialConfig
from ibray.launch.outcome import storage_fault


class TuneMessages(logging.Filter):
    """Tune's log lines that the live view and the driver's own lines replace: they tell a user
    to call Tuner.restore() or repeat what the summary says, and tracebacks of Tune failing to save
    its own state on a full or read-only disk (noted in `storage_fault`; the trials report the same
    fault themselves)."""

    LOGGERS = (
        "ray.tune.tune",
        "ray.tune.execution.tune_controller",
        "ray.tune.analysis.experiment_analysis",
        "ray.tune.execution.experiment_state",  # its copy of the state to storage_path
        "ray.train._internal.storage",
    )
    DROPPED = (
        "Failed to fetch metrics",  # trials stopped before their first report
        "Stop signal received",
        "Experiment has been interrupted",
        "Trials did not complete",
        "Wrote the latest version of all result files",
    )

    def __init__(self, experiment: str) -> None:
        super().__init__()
        self.experiment = experiment
        self.storage_fault = ""  # Tune could not save its state on a full or read-only disk

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
        fault = storage_fault(record.exc_info[1], self.experiment) if record.exc_info else None
        if fault:  # a traceback of a fault that the trials or the summary name in one line
            self.storage_fault = self.storage_fault or fault
            return False
        return not message.startswith(self.DROPPED)


def trial_dirname(trial) -> str:
    """Tune's folder of a trial is named by its trial id, like its results folder."""
    try:
        return TrialConfig.from_dict(trial.config).trial_id()
    except Exception:  # noqa: BLE001 (not a config of ibray's: the trainable refuses it)
        return f"stray-{trial.trial_id}"


def trial_of(result, grid: set[str]) -> str:
    """The trial id of a Tune result ('' for a stray). A trial that never reported has no
    metrics: then its folder's name tells, less the suffix Tune adds when the name is taken."""
    reported = (result.metrics or {}).get("trial")
    if reported:
        return reported
    name = PurePosixPath(str(result.path)).name if result.path else ""
    name = name if name in grid else re.sub(r"_[0-9a-f]{4}$", "", name)
    return name if name in grid else ""


def last_line(error: BaseException) -> str:
    """The most telling line of a trial's error (Tune wraps the trainable's exception)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error" in line.split(":")[0] or "Exception" in line.split(":")[0]:
            return line[:500]
    return (lines[-1] if lines else type(error).__name__)[:500]
