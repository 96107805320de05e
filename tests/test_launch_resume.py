"""Kills, then --resume, on the session's Ray: trial workers SIGKILLed mid-run (one resumes
from its checkpoint, one's checkpoint is corrupt and fails clearly), and the driver SIGKILLed
mid-sweep, then --resume finishes only the rest. Every sweep is tiny."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading

from test_launch import LAYERS, epochs_run, infos, process_table, snapshot, sweep_file, table, wait_for

from ibray.cli import main
from ibray.records import METRICS_KEY, MI_KEY
from ibray.run import CHECKPOINT_FILE, run_trial
from ibray.sweep import load_sweep


def trial_workers() -> list[int]:
    """PIDs of Tune's trial processes (ray::ImplicitFunc) descending from this process (our Ray)."""
    parents, titles = process_table()

    def ours(pid: int) -> bool:
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == os.getpid():
                return True
        return False

    return [pid for pid, title in titles.items() if "ImplicitFunc" in title and ours(pid)]


def in_thread(function, *args, **kwargs):
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = function(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 (surfaced by the test)
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def test_killed_trials_resume_from_their_checkpoints_or_fail_clearly_on_a_corrupt_one(ray_cluster, tmp_path):
    from ibray.launch.launcher import run_sweep

    # two trials at once, one a node; both workers SIGKILLed mid-run. Tune retries each from its
    # last checkpoint: tanh's goes on, relu's checkpoints were corrupted first, so it fails clearly
    path = sweep_file(tmp_path, "killed", activation=["tanh", "relu"], epochs=80, max_failures=1)
    spec = load_sweep(path)
    resumes, corrupted = spec.trials
    assert (resumes.activation, corrupted.activation) == ("tanh", "relu")
    root = tmp_path / "root"
    thread, outcome = in_thread(run_sweep, spec, str(root), view_every=60)
    info = {t.trial_id(): root / "killed" / "trials" / t.trial_id() / "trial.json" for t in spec.trials}
    wait_for(lambda: min(epochs_run(i) for i in info.values()) >= 15, 120, "both trials to pass epoch 15")

    def corrupt() -> None:
        for checkpoint in (root / "killed" / "tune" / corrupted.trial_id()).rglob(CHECKPOINT_FILE):
            checkpoint.write_bytes(b"\x00garbage")

    corrupt()
    workers = trial_workers()
    assert len(workers) == 2
    for worker in workers:
        os.kill(worker, signal.SIGKILL)
    killed_at = epochs_run(info[resumes.trial_id()])
    corrupt()  # one the worker may have written just before it died
    thread.join(180)
    assert "error" not in outcome, outcome.get("error")
    result = outcome["value"]
    assert killed_at < 80 and result.complete == 1 and list(result.failed) == [corrupted.trial_id()]

    # the corrupt checkpoint: one clear message naming the trial
    message = result.failed[corrupted.trial_id()]
    assert "TrialStateError" in message and "is corrupt or unreadable" in message and corrupted.trial_id() in message
    assert f"failed {corrupted.trial_id()}: " in result.summary("killed.yaml")

    # the other: restarted from a checkpoint, not from scratch, with the rows of an uninterrupted
    # run (one thread, as Ray's one CPU gives it)
    attempts = [
        json.loads(line)
        for line in (root / "killed" / "tune" / resumes.trial_id() / "result.json").read_text().splitlines()
    ]
    assert 5 <= attempts[-1]["resumed_from"] <= killed_at
    run_trial(resumes, tmp_path / "reference", sweep="killed", threads=1)
    for name, key in (("mi", MI_KEY), ("metrics", METRICS_KEY)):
        resumed = table(root / "killed" / "trials" / resumes.trial_id(), name)
        clean = table(tmp_path / "reference", name)
        assert not resumed.select(key).is_duplicated().any()
        assert resumed.height == clean.height == 2 * 17 * (LAYERS if name == "mi" else 1)
        assert resumed.sort(key).equals(clean.sort(key))


def test_driver_killed_mid_sweep_then_resume_finishes_only_the_rest(ray_cluster, tmp_path, capsys):
    path = sweep_file(tmp_path, "driver", activation="tanh", seeds=3, seeds_per_trial=1, epochs=40)  # 3 trials
    root = tmp_path / "root"
    command = [sys.executable, "-m", "ibray.cli", "sweep", str(path), "--results", str(root)]
    folder = root / "driver"

    def partly_done() -> bool:
        statuses = [i["status"] for i in infos(folder).values()] if folder.exists() else []
        return "complete" in statuses and any(
            i["status"] == "running" and i["epochs_run"] >= 5 for i in infos(folder).values()
        )

    with open(tmp_path / "driver.log", "w") as log:
        driver = subprocess.Popen(
            [*command, "--address", ray_cluster.address, "--view-every", "1"], stdout=log, stderr=subprocess.STDOUT
        )
        try:
            # generous on a loaded machine; a driver that ends first fails at once, said below
            wait_for(
                lambda: partly_done() or driver.poll() is not None, 300, "one trial complete and another checkpointed"
            )
            assert driver.poll() is None, (
                f"the sweep ended before it could be killed: {(tmp_path / 'driver.log').read_text()[-2000:]}"
            )
        finally:
            driver.send_signal(signal.SIGKILL)
            driver.wait(30)
    wait_for(lambda: not trial_workers(), 60, "the dead driver's trials to end")
    assert json.loads((folder / "driver.lock").read_text())["pid"] == driver.pid  # left by the dead driver
    done = {t for t, i in infos(folder).items() if i["status"] == "complete"}
    assert 1 <= len(done) < 3
    before = {k: v for k, v in snapshot(folder / "trials").items() if any(t in k for t in done)}

    assert main(["sweep", str(path), "--results", str(root)]) == 2  # unfinished: needs --resume
    assert "pass --resume to finish it" in capsys.readouterr().err
    assert main(["sweep", str(path), "--results", str(root), "--resume", "--address", ray_cluster.address]) == 0
    out = capsys.readouterr().out
    assert f"taking over the lock of a driver that is gone (host {socket.gethostname()}, pid {driver.pid}, " in out
    # every trial that was not complete continues from its own checkpoint, whatever Tune saved
    assert (
        f"resuming sweep 'driver': {len(done)} of 3 trials complete; the others continue from their own checkpoints"
        in out
    )
    assert "3/3 trials complete" in out
    assert not (folder / "driver.lock").exists()
    assert {t: i["status"] for t, i in infos(folder).items()} == {
        t.trial_id(): "complete" for t in load_sweep(path).trials
    }
    # three trials on two CPUs: Tune reuses a trial's process for the next (a finished trial
    # returns at once, and the next one starts on its process without importing torch again)
    results = list((folder / "tune").glob("*/result.json"))
    pids = {json.loads(line)["pid"] for result in results for line in result.open()}
    assert len(results) == 3 and len(pids) <= 2, pids
    after = snapshot(folder / "trials")
    assert {k: v for k, v in after.items() if k in before} == before  # finished trials untouched
    mi = table(folder)
    assert not mi.select(MI_KEY).is_duplicated().any()
    assert mi.height == 3 * 9 * LAYERS  # 3 trials x 1 seed x epochs 0, 5, ..., 40
