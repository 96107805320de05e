"""The report rewritten while a sweep runs: `ibray sweep FILE --report PATH`.

This module owns the live report. A `LiveReport` runs in the sweep's driver: a background
thread that, every `every` seconds, builds the report from what the trials have written so far
in a child process (`python -m analysis.live`, at a lower CPU priority, in a session of its own
so that the terminal's Ctrl-C goes to the sweep only), and once more, final, when the sweep
ends. The child writes the file as `ibray report --watch` does: atomically (a temporary file
beside it, then renamed over it), marked *partial* with how many of the sweep's trials are
complete, the page reloading itself until the last one is.

A build that fails (nothing written yet, a full disk, any error of the report) prints one line
and leaves the earlier report as it was; the sweep goes on. Nothing here can stop the sweep: the
work runs in another process, and the thread only waits for it.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

DEFAULT_EVERY_S = 300
NICE = 10  # added to a build's CPU niceness: the trials come first
STOP_WAIT_S = 10  # for a build stopped at the end of the sweep to clean up before it is killed
PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])  # where `analysis` is, for the child


class LiveReport:
    """Rewrites the report at `out` from the results at `results` (a sweep's folder, path or
    URI) every `every` seconds between `start` and `stop`; `final` writes it once more.
    `trials`: how many trials the sweep has (the report is partial until all are complete)."""

    def __init__(self, results: str, out: str, every: int = DEFAULT_EVERY_S, trials: int | None = None) -> None:
        self.results, self.out, self.every, self.trials = str(results), str(out), int(every), trials
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._child: subprocess.Popen | None = None
        self._thread = threading.Thread(target=self._loop, name="ibray-live-report", daemon=True)
        self.written = 0  # reports written, partial and final
        self.failed = 0  # builds that failed

    def start(self) -> LiveReport:
        self._thread.start()
        return self

    def stop(self) -> None:
        """End the rewrites: no build starts after this, and one in progress is stopped (the
        report it would have replaced stays as it was)."""
        with self._lock:
            self._stopping.set()
            child = self._child
        if child is not None and child.poll() is None:
            child.terminate()  # the child turns SIGTERM into an exit that removes its temporary file
            try:
                child.wait(timeout=STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if self._thread.is_alive():
            self._thread.join()

    def final(self) -> bool:
        """Stop the rewrites and build the report once more, now; True when it was written."""
        self.stop()
        return self._build(final=True)

    def _loop(self) -> None:
        while not self._stopping.wait(self.every):
            self._build(final=False)

    def _build(self, final: bool) -> bool:
        command = [sys.executable, "-m", "analysis.live", self.results, "-o", self.out, "--every", str(self.every)]
        if self.trials is not None:
            command += ["--trials", str(self.trials)]
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_ROOT, environment.get("PYTHONPATH")]))
        with self._lock:
            if self._stopping.is_set() and not final:
                return False
            try:
                child = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env=environment,
                    start_new_session=True,
                )
            except OSError as error:
                return self._say_failed(f"cannot start its build ({error.strerror or error})")
            self._child = child
        try:
            os.setpriority(os.PRIO_PROCESS, child.pid, min(os.getpriority(os.PRIO_PROCESS, 0) + NICE, 19))
        except OSError:
            pass  # it then runs at the driver's priority: slower for the trials, still correct
        stdout, stderr = child.communicate()
        with self._lock:
            self._child = None
        if child.returncode == 0:
            self.written += 1
            print(f"report {self.out}: {'final' if final else 'rewritten'} ({stdout.strip()})", flush=True)
            return True
        if self._stopping.is_set() and not final:
            return False  # stopped by `stop`: not a failure
        lines = [line.strip() for line in stderr.splitlines() if line.strip()]
        return self._say_failed(lines[-1] if lines else f"its build exited with code {child.returncode}")

    def _say_failed(self, why: str) -> bool:
        self.failed += 1
        print(f"report {self.out}: not rewritten this time: {why.removeprefix('ibray report: error: ')}", flush=True)
        return False


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds: write_atomically removes its temporary file


def main(argv: list[str] | None = None) -> int:
    """One build of the live report (LiveReport's child): prints its state, or one line on
    stderr and exit code 2."""
    # Here: the driver imports this module without the report's weight (Polars, Altair).
    from analysis.load import ResultsError
    from analysis.output import OutputError
    from analysis.report import build

    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    parser = argparse.ArgumentParser(prog="python -m analysis.live", description="Build a sweep's live report once.")
    parser.add_argument("results", help="the sweep's folder (a path or URI)")
    parser.add_argument("-o", "--output", required=True, help="the HTML file to write")
    parser.add_argument("--every", type=int, required=True, help="the seconds between rewrites, said on the page")
    parser.add_argument("--trials", type=int, default=None, help="the sweep's trials in all")
    args = parser.parse_args(argv)
    try:
        built = build([args.results], args.output, watch=args.every, trials=args.trials)
    except (ResultsError, OutputError) as error:
        print(f"ibray report: error: {error}", file=sys.stderr)
        return 2
    print(built.state())
    return 0


if __name__ == "__main__":
    sys.exit(main())
