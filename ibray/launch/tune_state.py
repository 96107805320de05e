"""What the launcher reads of Tune's own records: whether a saved experiment state can be
restored, the trial behind a Tune result, trials Tune should never have started, and Tune's
log lines that the driver's own lines replace. Imported by the launcher only (imports ray).

Tune's experiment state is a pickle that Tune writes itself: it is restored only when its
plain-JSON part agrees with the sweep (`tune_state_problem`), and only from a results root the
user trusts. Trial checkpoints hold tensors only (torch.load weights_only=True).
"""

from __future__ import annotations

import contextlib
import json
import logging
import pickletools
import re
from pathlib import PurePosixPath

import pyarrow.fs as pafs
from ray import tune

from ibray.config import TrialConfig
from ibray.records import join, read_text, resolve
from ibray.sweep import SweepSpec
from ibray.launch.outcome import StrayTrialError, grid_key, storage_fault


def tune_state_problem(spec: SweepSpec, experiment: str, statuses: dict[str, str]) -> str | None:
    """Why Tune's experiment state in `experiment` cannot be restored, or None when it can.

    Reads the newest experiment_state-*.json as plain JSON (nothing unpickled): every trial in
    it must be one of the grid's, once, a trial Tune counts as finished must be complete on
    disk, and the checkpoint Tune would restore an unfinished trial from must still exist. Tune
    creates trials lazily, so the state may list fewer than the grid. A format this does not
    know reads as unusable: the rebuilt run is correct, only slower to start.
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
        for trial_json, runtime_json in state["trial_data"]:
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
            gone = _missing_checkpoint(filesystem, runtime_json) if trial["status"] != "TERMINATED" else None
            if gone is not None:
                return f"{newest} resumes trial {trial_id} from {gone}, which is no longer in storage"
        return None
    except Exception as error:  # noqa: BLE001 (whatever is wrong with it, it is unusable)
        return f"unreadable: {type(error).__name__}: {str(error)[:200]}"


def _missing_checkpoint(filesystem, runtime_json: str) -> str | None:
    """The checkpoint Tune would restore a trial from when it is gone from storage, else None.

    It goes when the driver dies after the trial reported newer checkpoints (Tune keeps
    num_to_keep of them) but before Tune saved its state again: Tune would then fail that trial
    on every retry. The names are read from the checkpoint manager, a pickle within the JSON,
    with pickletools: as data, never unpickled."""
    manager = json.loads(runtime_json).get("checkpoint_manager") or {}
    if manager.get("_type") != "CLOUDPICKLE_FALLBACK":
        return None
    paths = [
        arg
        for _opcode, arg, _position in pickletools.genops(bytes.fromhex(manager["value"]))
        if isinstance(arg, str) and re.search(r"/checkpoint_\d+$", arg)
    ]
    if not paths:
        return None
    latest = max(paths, key=lambda path: int(path.rsplit("_", 1)[1]))  # Tune numbers them in order
    return latest if filesystem.get_file_info(latest).type == pafs.FileType.NotFound else None


class TuneMessages(logging.Filter):
    """Tune's log lines that the live view and the driver's own lines replace: they tell a user
    to call Tuner.restore() or repeat what the summary says, and tracebacks of Tune failing to save
    its own state on a full or read-only disk (noted in `storage_fault`; the trials report the same
    fault themselves). Also notes a failed restore (Tune then restarts the grid it was given, and
    says so with a traceback)."""

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
        "Restoring the run from the latest experiment state file",
        "Restarting experiment",
    )

    def __init__(self, experiment: str) -> None:
        super().__init__()
        self.experiment = experiment
        self.restore_failed = False
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


def trial_of(result, grid: set[str]) -> str:
    """The trial id of a Tune result ('' for a stray). A trial that never reported has no
    metrics: then its folder's name tells, less the suffix Tune adds when the name is taken."""
    reported = (result.metrics or {}).get("trial")
    if reported:
        return reported
    name = PurePosixPath(str(result.path)).name if result.path else ""
    name = name if name in grid else re.sub(r"_[0-9a-f]{4}$", "", name)
    return name if name in grid else ""


def is_stray(result) -> bool:
    """A trial the trainable refused: its config is not a grid point."""
    return isinstance(result.error, StrayTrialError) or "StrayTrialError" in str(result.error or "")


def last_line(error: BaseException) -> str:
    """The most telling line of a trial's error (Tune wraps the trainable's exception)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error" in line.split(":")[0] or "Exception" in line.split(":")[0]:
            return line[:500]
    return (lines[-1] if lines else type(error).__name__)[:500]
