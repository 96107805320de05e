"""Sweeps on a real Ray (the session's two-node cluster on 127.0.0.1): end to end on a URI root
(the session's finished sweep, conftest.py, and the report it wrote), a finished sweep run
again, two sweeps under one root, a GPU request and another cluster's address refused. The kills
and resumes are in test_launch_resume.py, the faults in test_launch_robustness.py. Every sweep is
tiny; the helpers here serve those files too."""

from __future__ import annotations

import itertools
import json
import math
import re
import socket
import threading
import time
from pathlib import Path

import polars as pl
import pyarrow.dataset as ds
import pytest
import torch
import yaml
from test_report import chart_ids, facts_of, page_data

from ibray.cli import main
from ibray.config import TrialConfig
from ibray.errors import TrialStateError
from ibray.records import METRICS_KEY, MI_KEY
from ibray.run import CHECKPOINT_FILE, run_trial, save_checkpoint
from ibray.sweep import SweepError, load_sweep

TINY = {"seeds": 2, "epochs": 10, "learning_rate": 0.003, "mi_every": 5, "write_every": 5}
LAYERS = 6  # the synthetic network: five hidden layers and the softmax output


def sweep_file(folder: Path, name: str, **keys) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, **TINY, **keys}, sort_keys=False))
    return path


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(folder.rglob("*")) if p.is_file()}


def table(folder: Path, name: str = "mi") -> pl.DataFrame:
    """A whole sweep's table as one data set (a results folder of a single trial works too)."""
    pattern = f"{folder}/trials/*/{name}/*.parquet" if (folder / "trials").exists() else f"{folder}/{name}/*.parquet"
    return pl.read_parquet(pattern)


def infos(folder: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in (folder / "trials").glob("*/trial.json")}


def epochs_run(info: Path) -> int:
    try:
        return json.loads(info.read_text())["epochs_run"]
    except (OSError, ValueError):
        return -1


def process_table() -> tuple[dict[int, int], dict[int, str]]:
    """Every process on this machine: pid -> parent pid, and pid -> command line."""
    parents, titles = {}, {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
                titles[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except (OSError, ValueError):
                pass  # gone meanwhile
    return parents, titles


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


# -- without Ray work ---------------------------------------------------------------------------
class _Pickled:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_checkpoints_load_without_running_pickled_code(tmp_path):
    from ray import tune

    from ibray.launch.trainable import restore_state

    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / CHECKPOINT_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(TrialStateError, match=r"trial t1: Tune checkpoint .*checkpoint.pt is corrupt or unreadable"):
        restore_state(tune.Checkpoint.from_directory(folder), "t1")
    marker = tmp_path / "ran"
    torch.save({"trainer": _Pickled(marker)}, folder / CHECKPOINT_FILE)
    with pytest.raises(TrialStateError, match="corrupt or unreadable"):
        restore_state(tune.Checkpoint.from_directory(folder), "t1")
    assert not marker.exists()
    save_checkpoint({"written": 5, "trainer": {"x": torch.ones(2)}}, folder / CHECKPOINT_FILE)
    assert restore_state(tune.Checkpoint.from_directory(folder), "t1")["written"] == 5
    (folder / CHECKPOINT_FILE).unlink()
    with pytest.raises(TrialStateError, match="holds no checkpoint.pt"):
        restore_state(tune.Checkpoint.from_directory(folder), "t1")
    assert restore_state(None, "t1") is None


def test_a_trial_keeps_busy_exactly_the_cpus_ray_gave_it(synthetic):
    from ibray.launch.trainable import honour_allocation
    from ibray.measure import OVERLAP_SEEDS
    from ibray.trainer import Trainer

    def measuring_threads() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name.startswith("ibray-measure")}

    config = TrialConfig(seeds=tuple(range(OVERLAP_SEEDS)), epochs=3, mi_every=1)
    rows = {}
    # what Ray's runtime context says the trial got -> the threads its Trainers may use
    assert honour_allocation({"CPU": 2.0}) == 2 and honour_allocation({"CPU": 0.5}) == 1
    for cpus in (1.0, 2.0):
        threads = honour_allocation({"CPU": cpus})
        assert threads == int(cpus)
        before = measuring_threads()
        trainer = Trainer(config, synthetic, threads=threads)  # as run_trial(threads=...) makes it
        measurements = [trainer.start()] + [trainer.step()[0] for _ in range(config.epochs)]
        started = measuring_threads() - before
        # one CPU: every measurement inline, no second thread; two: one trains, one measures
        assert (trainer.threads, len(started)) == (int(cpus), int(cpus) - 1)
        rows[cpus] = [(m.mi, m.metrics) for m in measurements]
    assert Trainer(TrialConfig(seeds=(0,), epochs=1), synthetic).threads == 2  # `ibray trial`: one trains, one measures
    assert rows[1.0] == rows[2.0]  # the same numbers, bit for bit, whichever thread measured
    with pytest.raises(ValueError, match="threads must be 1 or more"):
        Trainer(config, synthetic, threads=0)


def test_a_file_uri_results_folder_equals_a_local_one(tmp_path, synthetic):
    # min_train_acc 1.0 at epoch 2 restarts every seed once: drop_seed rewrites parts on the URI too
    config = TrialConfig(
        seeds=(0, 1), epochs=4, mi_every=2, write_every=2, restart_epoch=2, min_train_acc=1.0, max_restarts=1
    )
    local = tmp_path / "local"
    uri = (tmp_path / "uri").as_uri()
    run_trial(config, local, sweep="s", dataset=synthetic)
    summary = run_trial(config, uri, sweep="s", dataset=synthetic)
    assert summary.out == uri and summary.restarts == {0: 1, 1: 1}
    for name, key in (("mi", MI_KEY), ("metrics", METRICS_KEY)):
        assert table(local, name).sort(key).equals(table(tmp_path / "uri", name).sort(key))
    assert json.loads((tmp_path / "uri" / "trial.json").read_text())["status"] == "complete"
    assert not list((tmp_path / "uri").rglob("*.tmp"))


def test_a_folder_that_is_not_a_sweeps_is_never_deleted(tmp_path, capsys):
    path = sweep_file(tmp_path, "precious")
    keep = tmp_path / "root" / "precious" / "notes.txt"
    keep.parent.mkdir(parents=True)
    keep.write_text("mine")
    for flags in ([], ["--overwrite"], ["--resume"]):
        assert main(["sweep", str(path), "--results", str(tmp_path / "root"), *flags]) == 2
        assert "holds no sweep.yaml, so it is not a sweep's folder" in capsys.readouterr().err
    assert keep.read_text() == "mine" and sorted(keep.parent.iterdir()) == [keep]
    assert main(["sweep", str(path), "--resume", "--overwrite"]) == 2
    assert "contradict" in capsys.readouterr().err


# -- on the session's Ray ----------------------------------------------------------------------
def test_sweep_end_to_end_on_a_uri_root(finished_sweep, tmp_path, capsys):
    path, root, uri, out = finished_sweep.path, finished_sweep.root, finished_sweep.uri, finished_sweep.out
    # the live view's last line. One CPU per trial on two 1-CPU nodes: both trials can run at
    # once, but one may be done before the other's worker has started (a fresh-clone CI run
    # failed on "at most 2" once trials got faster); test_cluster checks that the trials spread
    # over the nodes.
    assert re.search(
        r"\[e2e \d+:\d\d\] ended: 2 of 2 trials done, at most [12] at once \| seed-epochs 80/80 written", out
    ), out[-3000:]
    assert "sweep 'e2e': 2/2 trials complete" in out
    assert f"report: ibray report {uri}/e2e -o report-e2e.html" in out
    # the sweep verifies its own trials (on the URI, as `ibray verify` would)
    assert "verify: verified 2 trial(s): 2 complete with every row exactly once" in out
    # where the trials ran: nodes of the cluster, one trial each
    used = dict(re.findall(r"([0-9a-f]{56}) \((\d+) trials\)", out))
    assert set(used) <= finished_sweep.nodes and sum(map(int, used.values())) == 2, out[-3000:]

    folder = root / "e2e"
    assert (folder / "sweep.yaml").read_text() == path.read_text()
    assert {i["status"] for i in infos(folder).values()} == {"complete"}
    mi, metrics = table(folder), table(folder, "metrics")
    assert mi.height == 2 * 2 * 5 * LAYERS and metrics.height == 2 * 2 * 5  # trials x seeds x epochs 0, 5, ..., 20
    assert not mi.select(MI_KEY).is_duplicated().any() and not metrics.select(METRICS_KEY).is_duplicated().any()
    assert set(mi["sweep"]) == {"e2e"} and set(mi["bits"]) == {8} and set(mi["seed"]) == {0, 1}
    assert set(mi["epoch"]) == {0, 5, 10, 15, 20}
    trials = {t.trial_id(): t.activation for t in load_sweep(path).trials}
    assert dict(mi.select("trial", "activation").unique().iter_rows()) == trials  # each trial its own activation
    # the numbers: exact MI within its bounds (12 bits of input, 1 of label) and never growing
    # from a layer to the next (the DPI); the first layer holds the label at initialization; trained
    assert mi["mi_xt"].max() <= 12 + 1e-9 and mi["mi_ty"].min() >= -1e-9 and (mi["mi_ty"] <= mi["mi_xt"] + 1e-9).all()
    for _, rows in mi.sort("trial", "seed", "epoch", "layer").group_by("trial", "seed", "epoch"):
        assert all(a >= b - 1e-9 for a, b in itertools.pairwise(rows["mi_xt"].to_list()))
        assert all(a >= b - 1e-9 for a, b in itertools.pairwise(rows["mi_ty"].to_list()))
    assert math.isclose(mi.filter(pl.col("epoch") == 0, pl.col("layer") == 1)["mi_ty"].max(), 1.0, abs_tol=0.01)
    assert metrics.filter(pl.col("epoch") == 20)["train_acc"].min() > 0.6
    # Tune got a few scalars at each write (epochs 10 and 20), not the rows (progress reports
    # between writes carry no measurements)
    for result in folder.glob("tune/*/result.json"):
        reports = [json.loads(line) for line in result.read_text().splitlines()]
        reports = [r for r in reports if "train_acc" in r]
        assert [r["epoch"] for r in reports] == [10, 20]
        assert all({"train_acc", "test_acc", "mi_xt", "mi_ty", "seeds", "node"} <= set(r) for r in reports)
        assert {r["threads"] for r in reports} == {1}  # resources {cpu: 1}: one thread, measuring inline
        assert 0 < reports[-1]["mi_ty"] <= 1 and reports[-1]["mi_xt"] >= reports[-1]["mi_ty"]
    # pyarrow reads the whole sweep as one data set as well
    files = sorted(str(p) for p in folder.glob("trials/*/mi/*.parquet"))
    assert ds.dataset(files, format="parquet").count_rows() == mi.height

    # a finished sweep run again says so and touches nothing
    before = snapshot(root)
    assert main(["sweep", str(path), "--results", uri]) == 0
    assert "already complete" in capsys.readouterr().out
    assert snapshot(root) == before

    # another sweep under the same root writes only under its own name. Its one trial writes once,
    # at its end: the live line still moves meanwhile (the trial's progress reports)
    other = sweep_file(tmp_path, "other", activation="tanh", seeds=1, epochs=300, mi_every=50, write_every=300)
    assert main(["sweep", str(other), "--results", uri, "--view-every", "0.5"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "1 running" in line]
    moving = [int(m.group(1).replace(",", "")) for m in (re.search(r"seed-epochs ([\d,]+)/300", x) for x in lines) if m]
    assert any(0 < done < 300 for done in moving), lines
    after = snapshot(root)
    assert {k: v for k, v in after.items() if "/root/e2e/" in k} == before
    assert set(table(root / "other")["sweep"]) == {"other"}

    # the same name from a different file is refused before anything is written
    clash = sweep_file(tmp_path / "elsewhere", "e2e", epochs=30)
    assert main(["sweep", str(clash), "--results", uri]) == 2
    err = capsys.readouterr().err
    assert "holds sweep 'e2e' from a different sweep file (keys changed: " in err
    assert "epochs" in err.split("keys changed: ", 1)[1].split(")", 1)[0]  # the clash's epochs: 30
    assert snapshot(root) == after

    # --overwrite starts over, here from a changed file (20 epochs, not 300): only the new run's
    # rows remain, and the other sweep is untouched
    shorter = sweep_file(tmp_path / "shorter", "other", activation="tanh", seeds=1, epochs=20, mi_every=10)
    assert main(["sweep", str(shorter), "--results", uri, "--overwrite", "--view-every", "60"]) == 0
    assert "1/1 trials complete" in capsys.readouterr().out
    assert (root / "other" / "sweep.yaml").read_text() == shorter.read_text()
    assert sorted(table(root / "other")["epoch"].unique()) == [0, 10, 20]
    assert snapshot(root / "e2e") == {k: v for k, v in after.items() if "/root/e2e/" in k}


def test_a_sweep_with_report_ends_with_the_complete_report(finished_sweep):
    out, printed = finished_sweep.report, finished_sweep.out  # ibray sweep ... --report <out> --report-every 30
    assert f"report {out}: final (complete, 2 of 2 trials complete, " in printed
    assert "sweep 'e2e': 2/2 trials complete" in printed
    page = out.read_text(encoding="utf-8")
    assert page.endswith("</html>\n") and sorted(p.name for p in out.parent.iterdir()) == ["e2e.html"]
    facts = facts_of(page)
    assert facts["badge"] == "complete" and facts["trials"] == "2 of 2 complete" and facts["sweeps"] == "e2e"
    assert facts["repetitions"] == "2 per group, 4 in all" and facts["epochs"] == "20"
    assert 'http-equiv="refresh"' not in page
    store, specs = page_data(page)
    planes = [c for c in chart_ids(page) if c.startswith("plane-") and c.endswith("-mean")]
    assert planes == ["plane-synthetic12-syn-tanh-8-exact-mean", "plane-synthetic12-syn-relu-8-exact-mean"]
    for plane in planes:
        table = store[specs[plane]["data"]["name"]]
        column = {f: i for i, f in enumerate(table["fields"])}
        # six layers at epochs 0, 5, ..., 20, each the mean of both seeds
        assert sorted((r[column["layer"]], r[column["epoch"]]) for r in table["rows"]) == sorted(
            (layer, epoch) for layer in range(1, 7) for epoch in (0, 5, 10, 15, 20)
        )
        assert {r[column["n"]] for r in table["rows"]} == {2}
        assert all(r[column["mi_xt_mean"]] >= r[column["mi_ty_mean"]] >= 0 for r in table["rows"])
        assert max(r[column["mi_ty_mean"]] for r in table["rows"]) > 0


def test_gpu_request_on_a_cluster_without_gpus(ray_cluster, tmp_path, capsys):
    import ray

    from ibray.launch.launcher import _check_resources

    spec = load_sweep(sweep_file(tmp_path, "gpu", resources={"cpu": 1, "gpu": 0.5}))
    with pytest.raises(
        SweepError, match=r"resources.gpu: 0.5 per trial, but the Ray cluster has 0 GPUs; set resources"
    ):
        _check_resources(spec, ray.cluster_resources(), embedded=True)
    _check_resources(
        spec, ray.cluster_resources(), embedded=False
    )  # an autoscaling cluster may add GPU nodes: a warning
    assert "warning:" in capsys.readouterr().out


def test_an_address_of_another_cluster_is_refused_in_a_process_already_on_ray(ray_cluster, tmp_path, capsys):
    # something answers at this address, but it is not the cluster this process is connected to
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        path = sweep_file(tmp_path, "elsewhere")
        assert main(["sweep", str(path), "--results", str(tmp_path / "root"), "--address", f"127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--address 127.0.0.1:{port}: this process is already connected to the Ray " in err
    assert f"cluster at {ray_cluster.address}, and Ray joins one cluster a process" in err
    assert not (tmp_path / "root").exists()


def test_a_sweep_whose_data_is_missing_fails_before_anything_starts(tmp_path, capsys):
    from ibray.cli import main

    sweep = tmp_path / "needs-szt.yaml"
    sweep.write_text("name: needs-szt\ndataset: szt\nseeds: 2\nepochs: 2\n")
    empty = tmp_path / "data"
    empty.mkdir()
    results = tmp_path / "results"
    assert main(["sweep", str(sweep), "--results", str(results), "--data-dir", str(empty)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ibray: error: ") and "ibray data download szt" in err
    assert not results.exists()
