"""Launching sweeps robustly: a second driver refused while the first runs, Ctrl-C (before any
trial reported, and mid-run), Tune's experiment state damaged then --resume, --resume with
nothing to resume, results roots that cannot be written, resources an embedded Ray lacks, the
driver lock's staleness rules, trials Tune should never have started, and the live line's time
left. Real files, real processes, the session's real Ray; every sweep is tiny."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_launch import LAYERS, epochs_run, infos, sweep_file, table, wait_for

from ibray.cli import main
from ibray.records import MI_KEY
from ibray.sweep import load_sweep

CLI = [sys.executable, "-m", "ibray.cli", "sweep"]
# `ibray sweep` that says at its end whether torch was imported into it (Tune's fit included)
CLI_SAYING_TORCH = [
    sys.executable,
    "-c",
    "import sys; from ibray.cli import main; code = main(sys.argv[1:]); "
    "print('torch imported:', 'torch' in sys.modules); sys.exit(code)",
    "sweep",
]


def own_lines(text: str) -> list[str]:
    """The lines ibray itself wrote to stderr (Ray's log lines and workers' output aside)."""
    return [line for line in text.splitlines() if line.startswith("ibray:")]


def driver_tracebacks(text: str) -> list[str]:
    """Tracebacks of the driver itself; Ray prefixes a worker's lines with its pid."""
    return [line for line in text.splitlines() if "Traceback" in line and "pid=" not in line]


# -- without Ray work ---------------------------------------------------------------------------
def test_a_config_outside_the_grid_is_refused_before_anything_is_written(tmp_path):
    from ibray.errors import StrayTrialError
    from ibray.launch.outcome import grid_key
    from ibray.launch.trainable import train_trial

    spec = load_sweep(sweep_file(tmp_path, "grid", activation=["tanh", "relu"]))
    grid = {trial.trial_id(): grid_key(trial) for trial in spec.trials}
    trials_root = tmp_path / "root" / "grid" / "trials"
    empty = {}  # what Tune hands over when it restarts after failing to load its state
    other_cadence = {**spec.trials[0].to_dict(), "write_every": 2}  # same trial id, another config
    unknown_key = {**spec.trials[0].to_dict(), "colour": "red"}
    for config, why in (
        (empty, r"trial synthetic12-syn-tanh-8b-\w+ is not one of its 2 grid points"),
        (other_cadence, rf"trial {spec.trials[0].trial_id()} is not one of its 2 grid points"),
        (unknown_key, r"not a trial config: unknown key\(s\) \['colour'\]"),
    ):
        with pytest.raises(
            StrayTrialError,
            match=rf"sweep 'grid': Tune started a trial whose config is not in sweep.yaml's grid \({why}",
        ):
            train_trial(config, sweep="grid", trials_root=str(trials_root), grid=grid)
    assert not trials_root.exists()


def test_results_roots_that_cannot_be_written_exit_2_before_anything_is_written(tmp_path, capsys):
    path = sweep_file(tmp_path, "nowhere")
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    cases = [
        (a_file, f"results root {a_file}: {a_file} is a file, not a folder"),
        (a_file / "below", f"results root {a_file / 'below'}: {a_file} is a file, not a folder"),
        (Path("/proc/ibray-results"), "results root /proc/ibray-results is under /proc, the kernel's, not a disk"),
        (a_file.as_uri(), f"results root {a_file} is a file, not a folder"),
    ]
    if os.geteuid() != 0:  # root writes through any permission bits
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        cases.append(
            (locked / "results", f"results root {locked / 'results'} is not writable ({locked}: Permission denied)")
        )
    before = sorted(tmp_path.rglob("*"))
    for root, message in cases:
        assert main(["sweep", str(path), "--results", str(root)]) == 2
        err = capsys.readouterr().err
        assert err == f"ibray: error: {message}; pass another --results\n"
    assert sorted(tmp_path.rglob("*")) == before and a_file.read_text() == "not a folder"


def test_resources_an_embedded_ray_lacks_are_refused_before_anything_is_written(tmp_path):
    cpus, gpus = os.cpu_count(), torch.cuda.device_count()
    many_cpus = sweep_file(tmp_path, "cpus", resources={"cpu": cpus + 1})
    many_gpus = sweep_file(tmp_path, "gpus", resources={"gpu": gpus + 1})
    root = tmp_path / "results"
    # One process, no Ray in it yet: the embedded case. Both refusals come before Ray starts.
    script = (
        "import sys; from ibray.cli import main; "
        f"print(main(['sweep', {str(many_cpus)!r}, '--results', {str(root)!r}]), "
        f"main(['sweep', {str(many_gpus)!r}, '--results', {str(root)!r}]), 'ray' in sys.modules and "
        "__import__('ray').is_initialized())"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert run.stdout.splitlines()[-1] == "2 2 False", run.stdout + run.stderr
    assert own_lines(run.stderr) == [
        f"ibray: error: {many_cpus}: resources.cpu: {cpus + 1} per trial, but this machine has {cpus} CPUs; "
        f"lower resources.cpu, or join a larger cluster with --address",
        f"ibray: error: {many_gpus}: resources.gpu: {gpus + 1} per trial, but this machine has {gpus} GPUs; "
        f"set resources: {{gpu: 0}} to train on CPUs, or join a GPU cluster with --address",
    ]
    assert not root.exists()  # so the corrected file runs, instead of being called unfinished


def test_a_driver_lock_is_stale_only_when_its_driver_is_gone(tmp_path, monkeypatch, capsys):
    from ibray import driver_lock
    from ibray.driver_lock import DriverLock, lock_is_stale, read_lock
    from ibray.sweep import SweepError

    here, now = socket.gethostname(), time.time()
    me = {"host": here, "pid": os.getpid(), "pid_start": driver_lock.process_start(os.getpid()), "heartbeat": now}
    gone = subprocess.Popen(["true"])  # its pid is free once it is reaped
    gone.wait()
    assert not lock_is_stale(me)
    assert lock_is_stale({**me, "pid": gone.pid})  # dead on this host: stale at once
    assert lock_is_stale({**me, "pid_start": "1"})  # this pid, but another process's start: reused
    assert lock_is_stale({**me, "heartbeat": now - driver_lock.STALE_AFTER_S - 1})
    elsewhere = {"host": "elsewhere", "pid": gone.pid, "heartbeat": now - 5}
    assert not lock_is_stale(elsewhere)  # another host's pid says nothing here: the heartbeat tells
    assert lock_is_stale({**elsewhere, "heartbeat": now - driver_lock.STALE_AFTER_S - 1})
    assert lock_is_stale({"host": here}) and read_lock(tmp_path / "none.lock") is None

    # Works on a URI root too; refreshes its heartbeat; an error inside releases it.
    monkeypatch.setattr(driver_lock, "HEARTBEAT_S", 0.1)
    spec = load_sweep(sweep_file(tmp_path, "locked"))
    folder = (tmp_path / "root" / "locked").as_uri()
    lock_path = tmp_path / "root" / "locked" / "driver.lock"
    lock_path.parent.mkdir(parents=True)
    lock_path.write_text(json.dumps(elsewhere | {"heartbeat": now - 3600, "started": now - 7200}))
    with pytest.raises(RuntimeError, match="boom"), DriverLock(spec, folder):
        first = json.loads(lock_path.read_text())
        assert (first["host"], first["pid"], first["sweep"]) == (here, os.getpid(), "locked")
        wait_for(lambda: json.loads(lock_path.read_text())["heartbeat"] > first["heartbeat"], 10, "a heartbeat")
        with pytest.raises(
            SweepError, match=rf"sweep 'locked' is being run by another driver \(host {here}, pid {os.getpid()}, since "
        ):
            DriverLock(spec, folder).refuse_if_held()
        raise RuntimeError("boom")
    assert not lock_path.exists()
    assert (
        f"taking over the lock of a driver that is gone (host elsewhere, pid {gone.pid}, since "
        in capsys.readouterr().out
    )


def test_a_sweep_locked_by_a_driver_on_another_host_is_refused(tmp_path, capsys):
    path = sweep_file(tmp_path, "busy")
    folder = tmp_path / "root" / "busy"
    folder.mkdir(parents=True)
    started = time.time() - 60
    lock = {"sweep": "busy", "host": "node-7", "pid": 4242, "started": started, "heartbeat": time.time()}
    (folder / "driver.lock").write_text(json.dumps(lock))
    since = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started))
    for flags in ([], ["--resume"], ["--overwrite"]):
        assert main(["sweep", str(path), "--results", str(tmp_path / "root"), *flags]) == 2
        err = capsys.readouterr().err
        assert err.startswith(
            f"ibray: error: sweep 'busy' is being run by another driver (host node-7, pid 4242, since {since}, heartbeat "
        )
        assert err.endswith(f"wait for it to end, or stop it (Ctrl-C) and run `ibray sweep {path} --resume`\n")
        assert err.count("\n") == 1
    assert sorted(p.name for p in folder.iterdir()) == ["driver.lock"]


def test_the_live_line_counts_restarted_seed_epochs_in_the_time_left():
    from ibray.launch.live_view import progress_line

    config = {"seeds": [0, 1], "epochs": 100}
    # 2 seeds of 100 epochs: the slowest at epoch 40, but one seed restarted, so 150 are left
    restarted = {"epoch": 40, "seed_epochs_done": 50, "seed_epochs_left": 150}
    line = progress_line(
        "s", elapsed=10, work=50, trials=[("RUNNING", config, restarted), ("PENDING", config, {})], at_once=1
    )
    assert (
        line
        == "[s 0:10] trials: 0 done, 1 running, 1 pending, at most 1 at once | seed-epochs 50/400 | 5.0 seed-epochs/s | ~1:10 left"
    )
    # a trial that reports only at writes: the epoch reached tells
    line = progress_line(
        "s", elapsed=10, work=80, trials=[("RUNNING", config, {"epoch": 40}), ("TERMINATED", config, {})], at_once=2
    )
    assert (
        line
        == "[s 0:10] trials: 1 done, 1 running, 0 pending, at most 2 at once | seed-epochs 280/400 | 8.0 seed-epochs/s | ~0:15 left"
    )


# -- on the session's Ray ----------------------------------------------------------------------
def test_a_second_driver_is_refused_then_ctrl_c_then_tune_state_decides_nothing(ray_cluster, tmp_path, capsys):
    # one trial (each trial worker costs seconds), long enough that Ctrl-C comes before its end
    path = sweep_file(tmp_path, "duo", activation="tanh", seeds=1, epochs=200, mi_every=20, write_every=20)
    spec = load_sweep(path)
    root = tmp_path / "root"
    folder = root / "duo"
    command = [*CLI, str(path), "--results", str(root)]
    log, err = tmp_path / "first.out", tmp_path / "first.err"
    with open(log, "w") as out, open(err, "w") as errors:
        first = subprocess.Popen(
            [*command, "--resume", "--address", ray_cluster.address, "--view-every", "1"], stdout=out, stderr=errors
        )
    try:
        wait_for((folder / "driver.lock").exists, 120, "the first driver's lock")
        lock = json.loads((folder / "driver.lock").read_text())
        assert (lock["host"], lock["pid"]) == (socket.gethostname(), first.pid)

        # a second driver, even one that would delete or resume the run, is refused at once
        for flag in ("--overwrite", "--resume"):
            assert main([*command[3:], flag]) == 2
            (refusal,) = own_lines(capsys.readouterr().err)
            assert refusal.startswith(
                f"ibray: error: sweep 'duo' is being run by another driver (host {socket.gethostname()}, pid {first.pid}, since "
            )
            assert f"run `ibray sweep {path} --resume`" in refusal
        # epoch 40: the trial's report at epoch 20 (with its checkpoint) has reached Tune's state
        wait_for(lambda: any(i.get("epochs_run", 0) >= 40 for i in infos(folder).values()), 120, "a checkpoint")
        assert first.poll() is None and all(i["status"] == "running" for i in infos(folder).values())
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(120)
    stdout, stderr = log.read_text(), err.read_text()
    assert first.returncode == 130, stdout[-3000:] + stderr[-3000:]
    assert f"no earlier run of sweep 'duo' in {folder}: nothing to resume, starting it fresh" in stdout
    assert own_lines(stderr) == [f"ibray: interrupted; run `ibray sweep {path} --resume` to finish the sweep"]
    assert not driver_tracebacks(stderr) and "TypeError" not in stderr
    done = sum(i["status"] == "complete" for i in infos(folder).values())
    last = [line for line in stdout.splitlines() if line.startswith("[duo ")][-1]
    assert re.fullmatch(
        r"\[duo \d+:\d\d\] interrupted: 0 of 1 trials done, 1 unfinished, at most 1 at once \| seed-epochs [\d,]+/200 written",
        last,
    )
    assert done == 0 and not (folder / "driver.lock").exists()

    # Tune's own state decides nothing: its checkpoints gone (a driver killed after Tune dropped
    # them, num_to_keep) and every JSON file of its state damaged, --resume runs the same grid,
    # each trial from its own folder
    reached = {t: i["epochs_run"] for t, i in infos(folder).items()}
    unfinished = [t for t, i in infos(folder).items() if i["status"] != "complete"]
    checkpoints = [c for t in unfinished for c in (folder / "tune" / t).glob("checkpoint_*")]
    assert checkpoints
    for checkpoint in checkpoints:
        shutil.rmtree(checkpoint)
    for state in (folder / "tune").glob("*.json"):
        state.write_text("garbage")
    assert main([*command[3:], "--resume", "--view-every", "60"]) == 0
    out = capsys.readouterr().out
    assert "resuming sweep 'duo': 0 of 1 trials complete; the others continue from their own checkpoints" in out
    assert "Tune" not in out
    assert "sweep 'duo': 1/1 trials complete" in out
    grid = {t.trial_id() for t in spec.trials}
    assert {p.name for p in (folder / "trials").iterdir()} == grid  # no trial of default settings
    assert {p.name for p in (folder / "tune").iterdir() if p.is_dir()} == grid
    ((trial_id, epoch),) = reached.items()
    assert 40 <= epoch < 200
    # it went on from its own checkpoint (written every 20 epochs, the last before Ctrl-C), not from scratch
    reports = [json.loads(line) for line in (folder / "tune" / trial_id / "result.json").read_text().splitlines()]
    assert 20 <= reports[-1]["resumed_from"] <= epoch, (epoch, reports[-1]["resumed_from"])
    mi = table(folder)
    assert set(mi["trial"]) == grid and not mi.select(MI_KEY).is_duplicated().any()
    assert mi.height == 11 * LAYERS  # 1 trial x 1 seed x epochs 0, 20, ..., 200


def test_ctrl_c_before_any_trial_reports(ray_cluster, tmp_path):
    # one trial: its worker's start is what Ctrl-C interrupts (each trial worker costs seconds)
    path = sweep_file(tmp_path, "early", activation="tanh", epochs=300, write_every=300, mi_every=50)
    root = tmp_path / "root"
    folder = root / "early"
    log, err = tmp_path / "early.out", tmp_path / "early.err"
    with open(log, "w") as out, open(err, "w") as errors:
        driver = subprocess.Popen(  # the driver's own imports are checked too: it needs no torch
            [*CLI_SAYING_TORCH, str(path), "--results", str(root), "--address", ray_cluster.address]
            + ["--view-every", "0.2"],
            stdout=out,
            stderr=errors,
        )
    try:
        wait_for(lambda: "[early " in log.read_text(), 120, "Tune's loop to run")  # its live line
        assert not list(folder.glob("tune/*/result.json"))  # no trial has reported
    finally:
        driver.send_signal(signal.SIGINT)
        driver.wait(120)
    stdout, stderr = log.read_text(), err.read_text()
    assert driver.returncode == 130, stdout[-3000:] + stderr[-3000:]
    assert own_lines(stderr) == [f"ibray: interrupted; run `ibray sweep {path} --resume` to finish the sweep"]
    assert not driver_tracebacks(stderr) and "TypeError" not in stderr
    last = [line for line in stdout.splitlines() if line.startswith("[early ")][-1]
    assert re.search(
        r"\] interrupted: 0 of 1 trials done, 1 unfinished, at most [01] at once \| seed-epochs 0/600 written$", last
    )
    assert not (folder / "driver.lock").exists()
    assert epochs_run(next(folder.glob("trials/*/trial.json"), folder / "none")) in (-1, 0)
    # Tune's loop ran (its live line), and nothing of it imported torch into the driver (Tune's
    # default TensorBoard logger would: some 3 s of CPU a start)
    assert stdout.splitlines()[-1] == "torch imported: False", stdout[-2000:]


def test_checkpoint_folders_of_killed_workers_are_removed_at_the_next_start(tmp_path):
    import subprocess
    import sys

    from ibray.launch.trainable import CHECKPOINT_PREFIX, remove_orphaned_checkpoint_folders

    killed = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    killed.kill()
    killed.wait()  # its pid is gone now, as a worker's after SIGKILL
    folders = {
        "killed": tmp_path / f"{CHECKPOINT_PREFIX}{killed.pid}-abc",
        "mine": tmp_path / f"{CHECKPOINT_PREFIX}{os.getpid()}-def",
        "alive": tmp_path / f"{CHECKPOINT_PREFIX}{os.getppid()}-ghi",
        "older name": tmp_path / f"{CHECKPOINT_PREFIX}xyz",
    }
    for folder in folders.values():
        folder.mkdir()
        (folder / "checkpoint.pt").write_bytes(b"x" * 1000)
    assert remove_orphaned_checkpoint_folders(tmp_path) == [folders["killed"]]
    assert not folders["killed"].exists()
    assert all(folders[name].is_dir() for name in ("mine", "alive", "older name"))


def test_a_folder_of_another_sweep_is_named_by_its_own_name_and_what_changed(tmp_path):
    from ibray.sweep import SweepError, parse_sweep
    from ibray.sweep_folder import check_existing

    folder = tmp_path / "good"  # renamed by hand: it holds sweep gpu1
    folder.mkdir()
    (folder / "sweep.yaml").write_text("name: gpu1\nepochs: 5\nseeds: 2\nactivation: [tanh, relu]\n")
    spec = parse_sweep("name: good\nepochs: 6\nseeds: 2\nactivation: [tanh, relu]\nmi_every: 2\n", "good.yaml")
    with pytest.raises(SweepError) as refused:
        check_existing(spec, str(folder), resume=True, overwrite=False)
    message = str(refused.value)
    assert "holds sweep 'gpu1' from a different sweep file (keys changed: epochs, mi_every)" in message


@contextlib.contextmanager
def tmpfs(root: Path, size: str):
    """A real tmpfs of `size` mounted at `root` for the test's length (skipped where mounting is
    not allowed, e.g. not as root)."""
    root.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(root)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (not root?): {mounted.stderr.strip()}")
    try:
        yield root
    finally:
        subprocess.run(["umount", str(root)], check=True)


def assert_one_storage_line(stdout: str, stderr: str, error: str, path: Path) -> None:
    """The sweep stopped on a storage fault as it should: one line of its own naming `error` and
    the resume command, and no traceback of the driver."""
    lines = own_lines(stderr)
    assert len(lines) == 1 and error in lines[0] and f"ibray sweep {path} --resume" in lines[0]
    output = stdout + stderr
    assert not driver_tracebacks(output), output[output.find("Traceback") - 300 :][:3000]


def test_a_full_disk_then_a_root_turned_read_only_stop_the_sweep_in_one_line_and_resume_finishes_it(
    ray_cluster, tmp_path, capsys
):
    # a real full disk: a tmpfs of 640 KiB, about a quarter of what this sweep writes (its 40
    # parts a table and trial, mostly Parquet's own overhead, and the checkpoints)
    with tmpfs(tmp_path / "small", "640k") as root:
        path = sweep_file(tmp_path, "faults", seeds_per_trial=1, epochs=120, mi_every=1, write_every=3)
        command = [*CLI, str(path), "--results", str(root), "--address", ray_cluster.address, "--view-every", "60"]
        code = main(command[3:])  # in this process: a driver's start saved
        run = capsys.readouterr()
        assert code == 3, run.out[-3000:] + run.err[-3000:]
        assert_one_storage_line(run.out, run.err, "No space left on device", path)
        assert str(root / "faults") in own_lines(run.err)[0]  # the place is named
        assert "retries it" not in run.out  # no retry on a disk that stays full

        # room enough, and --resume; then, mid-run, the root turns read-only
        subprocess.run(["mount", "-o", "remount,size=16m", str(root)], check=True)
        parts = len(list((root / "faults" / "trials").glob("*/mi/*.parquet")))
        with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
            driver = subprocess.Popen([*command, "--resume"], stdout=out, stderr=err)
        try:
            wait_for(
                lambda: len(list((root / "faults" / "trials").glob("*/mi/*.parquet"))) > parts, 120, "a part resumed"
            )
            # a remount fails while a file is open for writing (EBUSY): try until a moment with none
            deadline = time.monotonic() + 30
            while subprocess.run(["mount", "-o", "remount,ro", str(root)], capture_output=True).returncode != 0:
                assert time.monotonic() < deadline, "could not remount read-only"
                time.sleep(0.05)
            driver.wait(180)
        finally:
            if driver.poll() is None:
                driver.kill()
        stdout, stderr = (tmp_path / "out").read_text(), (tmp_path / "err").read_text()
        assert driver.returncode == 3, stdout[-3000:] + stderr[-3000:]
        assert_one_storage_line(stdout, stderr, "Read-only file system", path)

        subprocess.run(["mount", "-o", "remount,rw", str(root)], check=True)
        capsys.readouterr()
        assert main([*command[3:], "--resume"]) == 0  # in this process: a driver's start saved
        assert "2 complete with every row exactly once" in capsys.readouterr().out


def test_the_storage_stopper_stops_every_trial_once_one_faults_but_not_a_resumed_run():
    import pickle

    from ibray.launch.live_view import StopOnStorageFault
    from ibray.launch.outcome import STORAGE_ERROR

    stopper = StopOnStorageFault()
    assert not stopper("a", {"epoch": 3}) and not stopper.stop_all()
    assert stopper("b", {STORAGE_ERROR: "/r/x: No space left on device"}) and stopper.stop_all()
    assert stopper("a", {"epoch": 4})  # the others stop too
    assert not pickle.loads(pickle.dumps(stopper)).stop_all()  # Tune's saved state, restored by --resume


def test_tune_failing_to_save_its_state_on_a_full_disk_prints_no_traceback():
    # Tune copies its experiment state to storage_path in a background thread; on a full disk it
    # logs the copy's traceback (ray.tune.execution.experiment_state), which the trials' own
    # one-line storage fault replaces. Other errors still reach the log.
    import errno
    import logging

    from ibray.launch.launcher import SweepOutcome
    from ibray.launch.tune_state import TuneMessages

    logger = logging.getLogger("ray.tune.execution.experiment_state")
    seen = []
    handler = logging.Handler()
    handler.emit = seen.append
    logger.addHandler(handler)
    messages = TuneMessages("/r/sweep/tune")
    try:
        with messages.attached():
            for error in (
                OSError(errno.ENOSPC, "No space left on device", "/r/sweep/tune/experiment_state.json"),
                OSError("[Errno 28] Error writing bytes to file. Detail: [errno 28] No space left on device"),
                RuntimeError("connection reset"),
            ):
                try:
                    raise error
                except Exception:
                    logger.error(
                        "Saving experiment state to storage at '/r/sweep/tune' failed with exception: ", exc_info=True
                    )
    finally:
        logger.removeHandler(handler)
    assert [record.exc_info[1].args[0] for record in seen] == ["connection reset"]
    assert messages.storage_fault == "/r/sweep/tune/experiment_state.json: No space left on device"
    outcome = SweepOutcome("s", "/r/sweep", 2, 2, True, tune_fault=messages.storage_fault)
    assert (
        "warning: Tune could not save its own state (/r/sweep/tune/experiment_state.json: No space left"
        in outcome.summary("s.yaml")
    )
    assert "warning" not in SweepOutcome("s", "/r/sweep", 2, 2, True).summary("s.yaml")


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        children = (task / "children").read_text().split() if (task / "children").exists() else []
        found += [int(c) for c in children]
    return found


def test_the_next_start_names_what_a_killed_drivers_local_ray_left_behind(tmp_path):
    from ibray.launch.ray_leftovers import leftover_note, leftover_ray_processes

    if not Path("/proc").is_dir():
        pytest.skip("no /proc: leftovers are looked for on Linux only")
    before = {leftover.pid for leftover in leftover_ray_processes()}
    # a driver with its own local Ray (address="local": never the session's cluster, whatever
    # RAY_ADDRESS says), as `ibray sweep` without --address starts one
    code = "import ray, time; ray.init(address='local', num_cpus=1, include_dashboard=False); print('up', flush=True); time.sleep(300)"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    log = open(tmp_path / "driver.err", "w")  # a file, not a pipe: Ray's lines cannot fill it and stall the driver
    driver = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    agents, found = [], []
    try:
        assert driver.stdout.readline().strip() == "up", (tmp_path / "driver.err").read_text()[-2000:]
        raylets = [p for p in _children(driver.pid) if "raylet" in Path(f"/proc/{p}/cmdline").read_text()]
        wait_for(
            lambda: (
                len([c for r in raylets for c in _children(r) if "Agent" in Path(f"/proc/{c}/cmdline").read_text()])
                == 2
            ),
            60,
            "the raylet's two agents",
        )
        agents = [c for r in raylets for c in _children(r) if "Agent" in Path(f"/proc/{c}/cmdline").read_text()]
        assert not set(agents) & {leftover.pid for leftover in leftover_ray_processes()}  # alive: not leftovers
        driver.kill()
        driver.wait(30)
        wait_for(
            lambda: set(agents) <= {leftover.pid for leftover in leftover_ray_processes()},
            60,
            "the agents to be orphaned",
        )
        found = [leftover for leftover in leftover_ray_processes() if leftover.pid not in before]
        assert {leftover.pid for leftover in found} >= set(agents)
        assert {leftover.name for leftover in found if leftover.pid in agents} == {
            "ray::DashboardAgent",
            "ray::RuntimeEnvAgent",
        }
        assert all(leftover.rss_mb > 1 for leftover in found)
        note = leftover_note(found)
        assert note.startswith(f"note: {len(found)} process(es) of an earlier local Ray outlived their killed driver")
        assert note.endswith("end them with `kill -9 " + " ".join(str(leftover.pid) for leftover in found) + "`")
        # the next `ibray sweep` says so first (here it is then refused: nothing listens at the address)
        path = sweep_file(tmp_path, "next")
        run = subprocess.run(
            [*CLI, str(path), "--results", str(tmp_path / "r"), "--address", "127.0.0.1:9"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        said = [line for line in run.stdout.splitlines() if line.startswith("note: ")]
        assert (
            run.returncode == 2 and len(said) == 1 and "of an earlier local Ray outlived their killed driver" in said[0]
        )
        assert all(f"{pid} ray::" in said[0] and f" {pid}" in said[0].split("kill -9")[1] for pid in agents)
    finally:
        driver.kill()
        driver.wait(30)
        log.close()
        for pid in agents + [leftover.pid for leftover in found]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not set(agents) & {leftover.pid for leftover in leftover_ray_processes()}, 30, "the agents to end")


def test_a_sweep_of_module_files_ships_their_one_folder_to_the_cluster(tmp_path):
    from ibray.launch.launcher import module_env
    from ibray.sweep import SweepError, parse_sweep

    source = (Path(__file__).parent / "own_nets.py").read_text()
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "nets.py").write_text(source)
    one = parse_sweep(
        f"name: one\narchitecture: {tmp_path}/a/nets.py:bottleneck2\nepochs: 2\n", str(tmp_path / "one.yaml")
    )
    assert module_env(one) == {"working_dir": str(tmp_path / "a")}
    built_in = parse_sweep("name: plain\nepochs: 2\n", str(tmp_path / "plain.yaml"))
    assert module_env(built_in) is None
    two = parse_sweep(
        f"name: two\narchitecture: [{tmp_path}/a/nets.py:bottleneck2, {tmp_path}/b/nets.py:bottleneck2]\nepochs: 2\n",
        str(tmp_path / "two.yaml"),
    )
    with pytest.raises(SweepError, match=r"the module files lie in 2 folders .*: put the files in one folder"):
        module_env(two)
