"""The sweep's live view: a line every few seconds while Tune runs, and the run's last line.

    [quickstart 1:02] trials: 1 done, 2 running, 1 pending, at most 2 at once | seed-epochs ... | ... left
    [quickstart 1:50] ended: 4 of 4 trials done, at most 2 at once | seed-epochs 40,000/40,000 written

"at most N at once" is the largest number of trials Tune had RUNNING together: how many the
cluster's resources let run side by side. Imported by the launcher only (a Tune callback:
imports ray).
"""

from __future__ import annotations

import time

from ray import tune

from ibray.launch.outcome import DATA_ERROR, STORAGE_ERROR
from ibray.launch.tune_state import trial_dirname
from ibray.sweep import SweepSpec

VIEW_EVERY_S = 10.0

# sweep -> most trials RUNNING at once in this process's latest run of it. Kept here, not only
# on the view: a restored run calls the view Tune unpickled from its state, not the driver's.
_MOST_RUNNING: dict[str, int] = {}


def most_running(sweep: str) -> int:
    """The most trials the latest run of `sweep` in this process had running at once."""
    return _MOST_RUNNING.get(sweep, 0)


class StopOnStorageFault(tune.Stopper):
    """Stops every trial once one reports that the results root is full or read-only: the
    others write to the same storage and would fail alike, each after its retries."""

    def __init__(self) -> None:
        self.fault = False

    def __getstate__(self) -> dict:  # a run restored by --resume starts without the old fault
        return {"fault": False}

    def __call__(self, trial_id: str, result: dict) -> bool:
        self.fault = self.fault or bool(result.get(STORAGE_ERROR))
        return self.fault

    def stop_all(self) -> bool:
        return self.fault


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
        _MOST_RUNNING[self.sweep] = 0

    def on_trial_result(self, iteration, trials, trial, result, **_info) -> None:
        if result.get(STORAGE_ERROR):
            print(
                f"[{self.sweep}] trial {trial_dirname(trial)} cannot write its results: {result[STORAGE_ERROR]}; "
                f"stopping the sweep (no retry can succeed until there is room)",
                flush=True,
            )
            return
        if result.get(DATA_ERROR):
            print(
                f"[{self.sweep}] trial {trial_dirname(trial)} cannot load its data on node {result.get('node', '?')}: "
                f"{result[DATA_ERROR]} (not retried: it fails the same way every time)",
                flush=True,
            )
            return
        seeds = int(result.get("seeds", 0))
        done = int(result.get("seed_epochs_done", seeds * int(result.get("epoch", 0))))
        start = int(result.get("resumed_seed_epochs", seeds * int(result.get("resumed_from", 0))))
        self.work += max(done - self.done.get(trial.trial_id, start), 0)
        self.done[trial.trial_id] = done

    def on_trial_recover(self, iteration, trials, trial, **_info) -> None:
        self.done.pop(trial.trial_id, None)
        reached = (trial.last_result or {}).get("epoch", 0)
        print(
            f"[{self.sweep}] trial {trial_dirname(trial)} failed at epoch >= {reached}; "
            f"Tune retries it from its last checkpoint",
            flush=True,
        )

    def on_trial_error(self, iteration, trials, trial, **_info) -> None:
        print(f"[{self.sweep}] trial {trial_dirname(trial)} failed and is out of retries", flush=True)

    def on_step_end(self, iteration, trials, **_info) -> None:
        running = sum(trial.status == "RUNNING" for trial in trials)
        _MOST_RUNNING[self.sweep] = max(_MOST_RUNNING.get(self.sweep, 0), running)
        now = time.monotonic()
        if now - self.last_print >= self.every:
            self.last_print = now
            print(self.line(trials), flush=True)

    def line(self, trials) -> str:
        rows = [(trial.status, trial.config or {}, trial.last_result or {}) for trial in trials]
        return progress_line(self.sweep, time.monotonic() - self.started, self.work, rows, most_running(self.sweep))


def progress_line(sweep: str, elapsed: float, work: float, trials: list[tuple[str, dict, dict]], at_once: int) -> str:
    """The live line from (Tune status, config, last result) of each trial, and the most
    trials that ran at once so far.

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
    eta = clock(left / rate) if rate > 0 else "?"
    return (
        f"[{sweep} {clock(elapsed)}] trials: {counts['TERMINATED']} done, {counts['RUNNING']} running, "
        f"{counts['PENDING'] + counts['PAUSED']} pending"
        + (f", {counts['ERROR']} failed" if counts["ERROR"] else "")
        + f", at most {at_once} at once"
        + f" | seed-epochs {done_epochs:,}/{total_epochs:,} | {rate:.1f} seed-epochs/s | ~{eta} left"
    )


def final_line(
    spec: SweepSpec, infos: dict[str, dict | None], seconds: float, interrupted: bool, failed: int, at_once: int
) -> str:
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
        f"[{spec.name} {clock(seconds)}] {'interrupted' if interrupted else 'ended'}: "
        f"{complete} of {len(infos)} trials done"
        + (f", {failed} failed" if failed else "")
        + (f", {unfinished} unfinished" if unfinished > 0 else "")
        + f", at most {at_once} at once"
        + f" | seed-epochs {written:,}/{total:,} written"
    )


def clock(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"
