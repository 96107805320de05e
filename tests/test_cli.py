"""The `ibray` command: bad input fails cleanly, trials run, resume after a kill, downloads."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from conftest import SHARED_VAR_U
from http_server import serve_directory

from ibray.cli import main
from ibray.config import TrialConfig
from ibray.run import run_trial

IBRAY = str(Path(sys.executable).parent / "ibray")


def fails_cleanly(capsys, tmp_path, args, message):
    out = tmp_path / "out"
    code = main(["trial", "--out", str(out), "--epochs", "1", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("ibray: error: ") and message in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "cifar"], "dataset: unknown value 'cifar'; allowed: synthetic12, szt, mnist"),
        (["--architecture", "resnet"], "architecture: unknown value 'resnet'"),
        (["--activation", "swish"], "activation: unknown value 'swish'"),
        (["--estimators", "exact,mine"], "estimators: unknown estimator 'mine'"),
        (["--bits", "1"], "bits: 1 is not allowed; use 2..16, or 32"),
        (["--bits", "20"], "bits: 20 is not allowed"),
        (["--dataset", "mnist"], "architecture: 'syn' does not fit dataset 'mnist'"),
        (["--seeds", "1,1"], "seeds: [1] appear more than once"),
        (["--device", "tpu"], "device: unknown value 'tpu'"),
    ],
)
def test_bad_values_exit_2_and_write_nothing(capsys, tmp_path, args, message):
    fails_cleanly(capsys, tmp_path, args, message)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_refused(capsys, tmp_path):
    fails_cleanly(capsys, tmp_path, ["--device", "cuda"], "device: 'cuda' asked for, but torch sees no CUDA device")


def test_missing_data_file_names_the_download_command(capsys, tmp_path):
    empty = tmp_path / "data"
    empty.mkdir()
    fails_cleanly(capsys, tmp_path, ["--dataset", "szt", "--data-dir", str(empty)], "ibray data download szt")
    fails_cleanly(
        capsys,
        tmp_path,
        ["--dataset", "mnist", "--architecture", "bottleneck2", "--data-dir", str(empty)],
        "ibray data download mnist",
    )


def test_corrupt_data_file_is_refused(capsys, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "var_u.mat").write_bytes(b"MATLAB 5.0 MAT-file, but then nothing useful" * 3)
    fails_cleanly(capsys, tmp_path, ["--dataset", "szt", "--data-dir", str(data)], "var_u.mat")


def test_trial_runs_reruns_and_refuses_a_foreign_folder(tmp_path, capsys):
    out = tmp_path / "trial"
    args = ["trial", "--seeds", "0-1", "--epochs", "3", "--out", str(out)]
    first = subprocess.run([IBRAY, *args], capture_output=True, text=True, timeout=120)  # the installed command
    assert first.returncode == 0, first.stderr
    assert "seed-epochs/s" in first.stdout
    mi = pl.read_parquet(out / "mi" / "*.parquet")
    assert mi.height == 2 * 4 * 6 and mi["seed"].unique().sort().to_list() == [0, 1]
    assert json.loads((out / "trial.json").read_text())["status"] == "complete"

    # the same in this process (a start of Python and torch saved a call)
    assert main(args) == 0 and "nothing to do" in capsys.readouterr().out
    assert pl.read_parquet(out / "mi" / "*.parquet").height == mi.height

    assert main([*args[:-2], "--out", str(out), "--bits", "4"]) == 2
    assert "pick another --out" in capsys.readouterr().err


def epochs_run(out) -> int:
    try:
        return json.loads((out / "trial.json").read_text())["epochs_run"]
    except (OSError, ValueError, KeyError):
        return -1


def test_a_killed_trial_resumes_from_its_checkpoint(tmp_path, synthetic):
    common = dict(seeds=(0, 1), epochs=80, write_every=5, learning_rate=0.01)
    run_trial(TrialConfig(**common), tmp_path / "whole", dataset=synthetic)

    out = tmp_path / "killed"
    args = [
        IBRAY,
        "trial",
        "--seeds",
        "0-1",
        "--epochs",
        "80",
        "--write-every",
        "5",
        "--learning-rate",
        "0.01",
        "--out",
        str(out),
    ]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Killed once a checkpoint and a few writes are on disk: at epoch 10 of 80, whatever the
    # machine's speed, the trial is well under way and far from done.
    deadline = time.time() + 120
    while time.time() < deadline and not ((out / "checkpoint.pt").exists() and epochs_run(out) >= 10):
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    info = json.loads((out / "trial.json").read_text())
    assert info["status"] == "running", "the trial finished before it could be killed"
    for part in out.rglob("part-*.parquet"):  # whatever the kill interrupted, no part is partial
        pl.read_parquet(part)

    assert main(args[1:]) == 0  # resumed (in this process: a start of Python and torch saved)
    assert not list(out.rglob("*.tmp")), "temporary files of the killed run were left behind"
    for table, key in (("mi", ["seed", "phase", "epoch", "layer"]), ("metrics", ["seed", "phase", "epoch"])):
        whole = pl.read_parquet(tmp_path / "whole" / table / "*.parquet").sort(key)
        again = pl.read_parquet(out / table / "*.parquet").sort(key)
        assert again.select(key).is_duplicated().sum() == 0
        assert whole.equals(again)


def test_corrupt_checkpoint_fails_with_a_clear_message(capsys, tmp_path):
    out = tmp_path / "trial"
    assert main(["trial", "--seeds", "0", "--epochs", "4", "--write-every", "2", "--out", str(out)]) == 0
    info = json.loads((out / "trial.json").read_text())
    info["status"] = "running"
    (out / "trial.json").write_text(json.dumps(info))
    (out / "checkpoint.pt").write_bytes(b"not a checkpoint")
    capsys.readouterr()
    assert main(["trial", "--seeds", "0", "--epochs", "4", "--write-every", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "checkpoint" in err and "corrupt" in err and "delete it" in err


@pytest.mark.skipif(not SHARED_VAR_U.exists(), reason="../shared/data/var_u.mat is not here")
def test_data_download_from_a_mirror_then_train_on_it(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(SHARED_VAR_U, served / "var_u.mat")
    data = tmp_path / "data"
    with serve_directory(served) as url:
        result = subprocess.run(
            [IBRAY, "data", "download", "szt", "--url", url, "--data-dir", str(data)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 0, result.stderr
    assert (data / "var_u.mat").read_bytes() == SHARED_VAR_U.read_bytes()
    assert (
        main(["trial", "--dataset", "szt", "--data-dir", str(data), "--epochs", "1", "--out", str(tmp_path / "szt")])
        == 0
    )
    assert pl.read_parquet(tmp_path / "szt" / "mi" / "*.parquet")["dataset"].unique().to_list() == ["szt"]


def test_bench_prints_its_figures_as_json(capsys):
    # the command's shape, not the machine's speed: few epochs and seeds
    assert main(["bench", "--epochs", "2", "--seeds", "8", "--trial-seeds", "4", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    figures = json.loads(lines[-1])
    assert figures["device"] == "cpu"  # no GPU here
    # the printed table and the JSON carry the same measurements
    printed = [float(line.split()[-2]) for line in lines[1:-1]]
    keys = (
        "seed_epochs_per_s_1",
        "seed_epochs_per_s_8",
        "seed_epochs_per_s_all_cores_4_mi5",
        "mi_ms_4096x10",
        "mi_ms_70000x16",
        "kde_ms_4096x10",
    )
    assert printed == pytest.approx([figures[k] for k in keys], abs=0.051)  # printed to 1 or 2 decimals
    # 17x more rows and 1.6x more columns cost more time to count
    assert figures["mi_ms_70000x16"] > figures["mi_ms_4096x10"] > 0
    assert all(figures[k] > 0 for k in keys[:3])


def test_every_config_field_is_a_trial_flag_with_its_help(tmp_path, capsys):
    import dataclasses

    from ibray.config import TrialConfig, field_help

    with pytest.raises(SystemExit):
        main(["trial", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    helps = field_help()
    for field in dataclasses.fields(TrialConfig):
        assert f"--{field.name.replace('_', '-')}" in text, field.name
        assert " ".join(helps[field.name].split()) in text, field.name
    # flags that had none before reach the config
    out = tmp_path / "t"
    args = [
        "trial",
        "--epochs",
        "1",
        "--max-restarts",
        "3",
        "--bin-range",
        "-2",
        "2.5",
        "--ema-decay",
        "0.9",
        "--split-seed",
        "7",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    config = json.loads((out / "trial.json").read_text())["config"]
    assert (config["max_restarts"], config["bin_range"], config["ema_decay"], config["split_seed"]) == (
        3,
        [-2.0, 2.5],
        0.9,
        7,
    )


def test_the_gpu_check_runs_dry_on_the_cpu_without_ray_polars_or_altair(tmp_path):
    # benchmarks/gpu_check.sh waits for the first GPU machine, which has torch, numpy, pyarrow and
    # pyyaml but no Ray, Polars or Altair: its dry run here must need none of them either.
    repo = Path(__file__).resolve().parents[1]
    blocked = (
        "import importlib.abc, runpy, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in ('ray', 'polars', 'altair', 'vl_convert'):\n"
        "            raise ImportError('not on the GPU machine: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "sys.argv = ['gpu_check.py', '--device', 'cpu', '--quick']\n"
        f"runpy.run_path({str(repo / 'benchmarks' / 'gpu_check.py')!r}, run_name='__main__')\n"
    )
    result = subprocess.run([sys.executable, "-c", blocked], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "every check passed" in result.stdout
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["device"] == "cpu" and figures["seed_epochs_per_s_eager_8"] > 0
    assert figures["trial_mi_mi_xt_max_gap"] == 0.0  # the same trial twice on the CPU: the same rows
    import torch

    if not torch.cuda.is_available():  # without a GPU the real check says so and exits 2
        nothing = subprocess.run(
            [sys.executable, str(repo / "benchmarks" / "gpu_check.py")], capture_output=True, text=True, timeout=120
        )
        assert nothing.returncode == 2 and "no CUDA device" in nothing.stdout


def test_the_mnist_benchmark_counts_the_networks_work():
    from ibray.bench import matmul_gflops, network_macs, seed_epoch_gflop

    # Bottleneck-2: 784x16 + 16x8 + 8x4 + 4x2 + 2x10 multiply-adds a sample, the first 784x16
    assert network_macs("bottleneck2") == (12544 + 128 + 32 + 8 + 20, 12544)
    # Conv: 26x26 positions x 2 channels x 9 taps; 11x11 x 2 x (2 x 9); dense 50x16, 16x10
    assert network_macs("conv") == (12168 + 4356 + 800 + 160, 12168)
    # about 3 GFLOP of training and 1.8 of a measurement for Bottleneck-2 (the MNIST speed issue)
    train_only = seed_epoch_gflop("bottleneck2", 60000, 0, mi_every=1)
    measure_only = seed_epoch_gflop("bottleneck2", 0, 70000, mi_every=1)
    assert train_only == pytest.approx(2 * 60000 * (3 * 12732 - 12544) / 1e9)
    assert 3.0 < train_only < 3.1 and 1.78 < measure_only < 1.79
    assert seed_epoch_gflop("bottleneck2", 60000, 70000, mi_every=2) == pytest.approx(train_only + measure_only / 2)
    assert matmul_gflops(1, size=256, repeats=3) > 0


def test_the_mnist_benchmark_without_the_data_names_the_download(tmp_path, capsys):
    assert main(["bench", "--mnist", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "ibray data download mnist" in err and str(tmp_path) in err


def test_a_second_trial_on_the_same_out_is_refused_naming_the_first(tmp_path, capsys):
    from ibray.records import TRIAL_LOCK, trial_lock

    out = tmp_path / "out"
    common = ["trial", "--dataset", "synthetic12", "--seeds", "0", "--write-every", "20", "--out", str(out)]
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from ibray.cli import main; sys.exit(main(sys.argv[1:]))",
            *common,
            "--activation",
            "tanh",
            "--epochs",
            "100000",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 60
        # held, and the first rows written: the second trial would otherwise mix its own in
        while f"pid {holder.pid} " not in (
            (out / TRIAL_LOCK).read_text() if (out / TRIAL_LOCK).exists() else ""
        ) or not list(out.glob("mi/*.parquet")):
            assert holder.poll() is None and time.time() < deadline, "the first trial never took the lock"
            time.sleep(0.1)
        assert main([*common, "--activation", "relu", "--epochs", "5"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"pid {holder.pid} " in err and str(out) in err
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the refused run wrote nothing: every row and the trial record are the first trial's
    assert pl.read_parquet(out / "mi" / "*.parquet")["activation"].unique().to_list() == ["tanh"]
    assert "tanh" in json.loads((out / "trial.json").read_text())["trial"]
    with trial_lock(out):  # a killed holder frees the lock at once
        assert f"pid {os.getpid()} " in (out / TRIAL_LOCK).read_text()


@pytest.mark.parametrize(
    "argv, option",
    [
        (["bench", "--trial-seeds", "0"], "--trial-seeds 0"),
        (["bench", "--epochs", "-5"], "--epochs -5"),
        (["bench", "--seeds", "0"], "--seeds 0"),
        (["sweep", "sweeps/quickstart.yaml", "--view-every", "0"], "--view-every 0"),
        (["sweep", "sweeps/quickstart.yaml", "--view-every", "nan"], "--view-every nan"),
        (["sweep", "sweeps/quickstart.yaml", "--view-every", "inf"], "--view-every inf"),
    ],
)
def test_flags_that_would_hang_are_refused_at_once(argv, option, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    started = time.time()
    assert main([*argv, "--results", str(tmp_path)] if argv[0] == "sweep" else argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and option in err
    assert time.time() - started < 10 and not list(tmp_path.iterdir())  # nothing started or written


def test_a_sweep_address_where_nothing_answers_is_refused_at_once(tmp_path, capsys, monkeypatch):
    import socket

    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    started = time.time()
    code = main(["sweep", "sweeps/quickstart.yaml", "--address", f"127.0.0.1:{port}", "--results", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"--address 127.0.0.1:{port}: nothing answers there" in err
    assert time.time() - started < 30 and not list(tmp_path.iterdir())
