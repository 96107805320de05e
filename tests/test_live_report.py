"""The report rewritten while a sweep runs (`ibray sweep --report`, analysis.live): partial with
its completeness while trials run, complete at the end, written atomically; a failed build is
one line and the rewrites go on; a --report among the sweep's results is refused."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from analysis_fixtures import curves, write_sweep, write_trial
from test_report import facts_of

from analysis import report
from analysis.live import LiveReport
from ibray.cli import main


def running_sweep(root: Path) -> Path:
    """A sweep folder of two trials: trial000 complete (seeds 0, 1), trial-run at epoch 8 of 20."""
    folder = write_sweep(root, "s", 1, 2, 20, layers=2)
    mi, metrics = curves([5], epochs=8, layers=2, sweep="s", trial="trial-run")
    write_trial(folder / "trials" / "trial-run", mi, metrics, {"seeds": [5], "epochs": 20}, status="running")
    return folder


def test_a_partial_results_folder_gives_a_report_marked_partial_with_its_completeness(tmp_path):
    folder = running_sweep(tmp_path / "results")
    built = report.build([folder], tmp_path / "r.html", watch=300, trials=3)  # the sweep has a third, not started
    assert (built.trials_complete, built.trials, built.complete) == (1, 3, False)
    assert built.state().startswith("partial, 1 of 3 trials complete, ")
    page = built.path.read_text(encoding="utf-8")
    facts = facts_of(page)
    assert facts["badge"] == "partial" and facts["trials"] == "1 of 3 complete (2 started)"
    assert facts["completeness"] == "1 group(s) lack repetitions at some epochs"
    assert '<meta http-equiv="refresh" content="300">' in page and "Rewritten every 300 s" in page
    # without the sweep's grid, the report knows of the trials that wrote something
    assert facts_of(report.build([folder], tmp_path / "r2.html").path.read_text())["trials"] == "1 of 2 complete"
    # once every trial of the grid is complete: complete, no reloading
    mi, metrics = curves([5], epochs=20, layers=2, sweep="s", trial="trial-run")
    write_trial(folder / "trials" / "trial-run", mi, metrics, {"seeds": [5], "epochs": 20}, status="complete")
    built = report.build([folder], tmp_path / "r.html", watch=300, trials=2)
    page = built.path.read_text(encoding="utf-8")
    assert built.complete and facts_of(page)["badge"] == "complete" and facts_of(page)["trials"] == "2 of 2 complete"
    assert 'http-equiv="refresh"' not in page and "Rewritten every" not in page


def wait_for(condition, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "not within the time given"
        time.sleep(0.2)


@pytest.mark.slow
def test_the_live_report_is_rewritten_partial_then_final_and_complete(tmp_path, capsys):
    folder = running_sweep(tmp_path / "results")
    out = tmp_path / "live" / "report.html"
    live = LiveReport(str(folder), str(out), every=1, trials=2).start()
    try:
        wait_for(lambda: live.written >= 1)
        page = out.read_text(encoding="utf-8")
        assert page.endswith("</html>\n")
        assert facts_of(page)["badge"] == "partial" and facts_of(page)["trials"] == "1 of 2 complete"
        assert '<meta http-equiv="refresh" content="1">' in page
        mi, metrics = curves([5], epochs=20, layers=2, sweep="s", trial="trial-run")
        write_trial(folder / "trials" / "trial-run", mi, metrics, {"seeds": [5], "epochs": 20}, status="complete")
    finally:
        assert live.final()
    page = out.read_text(encoding="utf-8")
    assert facts_of(page)["badge"] == "complete" and facts_of(page)["trials"] == "2 of 2 complete"
    assert facts_of(page)["epochs"] == "20" and 'http-equiv="refresh"' not in page
    lines = capsys.readouterr().out.splitlines()
    assert f"report {out}: rewritten (partial, 1 of 2 trials complete, " in lines[0]
    assert lines[-1].startswith(f"report {out}: final (complete, 2 of 2 trials complete, ")
    assert live.failed == 0 and sorted(p.name for p in out.parent.iterdir()) == ["report.html"]  # no temporary file
    written = live.written
    time.sleep(2.5)
    assert live.written == written  # stopped: no more rewrites


@pytest.mark.slow
def test_a_failed_build_is_one_line_and_the_rewrites_go_on(tmp_path, capsys):
    folder = tmp_path / "results" / "s"
    folder.mkdir(parents=True)  # the sweep has started: nothing written yet
    out = tmp_path / "report.html"
    live = LiveReport(str(folder), str(out), every=1, trials=1).start()
    try:
        wait_for(lambda: live.failed >= 2)
        assert not out.exists()
        mi, metrics = curves([0], epochs=5, layers=2, sweep="s", trial="t0")
        write_trial(folder / "trials" / "t0", mi, metrics, {"seeds": [0], "epochs": 10}, status="running")
        wait_for(lambda: live.written >= 1)
    finally:
        live.stop()
    lines = capsys.readouterr().out.splitlines()
    failures = [line for line in lines if "not rewritten this time" in line]
    assert len(failures) >= 2 and all(
        line.startswith(f"report {out}: not rewritten this time: {folder}: no ibray results here") for line in failures
    )
    assert facts_of(out.read_text(encoding="utf-8"))["badge"] == "partial"


def sweep_file(folder: Path, name: str, **keys) -> Path:
    tiny = {"seeds": 2, "epochs": 10, "learning_rate": 0.003, "mi_every": 5, "write_every": 5}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, **tiny, **keys}, sort_keys=False))
    return path


def test_a_report_among_the_sweeps_results_or_a_bad_interval_is_refused_before_anything_runs(tmp_path, capsys):
    path = sweep_file(tmp_path, "live", activation=["tanh", "relu"])
    root = tmp_path / "root"
    for flags, message in (
        (["--report", str(root / "live" / "report.html")], f"--report {root / 'live' / 'report.html'}: is inside"),
        (["--report", str(root / "live" / "trials" / "r.html")], "inside the results"),
        (["--report", str(tmp_path / "r.html"), "--report-every", "0"], "--report-every 0: is not allowed"),
        (["--report", str(tmp_path)], "names a folder"),
    ):
        assert main(["sweep", str(path), "--results", str(root), *flags]) == 2, flags
        err = capsys.readouterr().err
        assert err.startswith("ibray: error: ") and err.count("\n") == 1 and message in err, err
    assert not root.exists() and not (tmp_path / "r.html").exists()
