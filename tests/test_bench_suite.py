"""benchmarks/bench_suite.py's account of where the suite's CPU goes: each kind of process named
from its title, and a child's CPU time counted where it belongs, once."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from bench_suite import CpuByKind, process_kind  # noqa: E402 (the folder above is not a package)


def test_each_process_is_named_by_its_kind():
    venv = "/repo/.venv/bin/python"
    titles = {
        "ray::ImplicitFunc.train": "Tune trial workers",
        "ray::IDLE": "Ray workers that ran no trial",
        "ray::_probe_node": "Ray workers that ran no trial",
        "ray::DashboardAgent --foo": "Ray daemons",
        f"{venv} -m pytest -q": "test processes",
        f"{venv} -c import sys;exec(eval(sys.stdin.readline()))": "test processes",
        f"{venv} -m analysis.live /tmp/pytest-of-root/x/results -o r.html --every 5": "report builds",
        f"{venv} /repo/.venv/bin/ibray report /tmp/pytest-of-root/r -o r.html --watch 1": "report builds",
        f"{venv} -m ibray.cli sweep /tmp/pytest-of-root/s.yaml --address 10.0.0.1:6379": "drivers and CLIs the tests start",
        "/usr/lib/chromium/chromium --type=renderer": "browser",
    }
    for title, kind in titles.items():
        assert process_kind(title, "python" if "python" in title else title.split("/")[-1][:15]) == kind, title
    assert process_kind("/repo/.venv/lib/python3.11/site-packages/ray/core/src/ray/raylet/raylet --x", "raylet") == (
        "Ray daemons"
    )
    assert process_kind("", "cc1") == "compiler" and process_kind("", "kworker/0:1") == "other"


def test_a_childs_cpu_is_counted_once_under_its_kind():
    # a parent that starts a child spending one second of CPU then idling a second (so that a
    # sample sees all of it: a process is counted at its last sample), then both end
    busy = "import time; t = time.process_time()\nwhile time.process_time() - t < 1.0: pass\ntime.sleep(1.0)"
    parent = subprocess.Popen(
        [sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', {busy!r}])"]
    )
    sampler = CpuByKind(parent.pid)
    parent.wait(60)
    time.sleep(0.1)
    by_kind = sampler.stop()
    assert list(by_kind) == ["drivers and CLIs the tests start"]
    # the child's second, plus the start of two interpreters (no imports beyond subprocess)
    assert 1.0 <= by_kind["drivers and CLIs the tests start"] <= 1.6, by_kind
