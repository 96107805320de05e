"""The cluster: cluster.yaml against the schema Ray ships (and what it installs where), and a sweep
submitted with `ibray sweep --address` to a real two-node Ray (the session's head and worker on
this machine): a user's own module file on a user's image file, shipped to the nodes with the
sweep, whose trials run on both nodes and whose results are complete and correct. (A built-in
network's sweep on the same cluster: tests/test_launch.py, end to end.)"""

from __future__ import annotations

import itertools
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import polars as pl
import pytest
import yaml

from ibray.records import MI_KEY
from ibray.sweep import load_sweep

REPO = Path(__file__).resolve().parents[1]


def ray_schema() -> dict:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def test_cluster_yaml_follows_rays_schema():
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    schema = ray_schema()
    jsonschema.validate(config, schema)
    with pytest.raises(jsonschema.ValidationError):  # the schema does bite
        jsonschema.validate({**config, "max_worker": 3}, schema)

    # Ray's own checks on top of the schema, after it fills in the provider's defaults
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(config))

    nodes = config["available_node_types"]
    head = nodes[config["head_node_type"]]
    workers = [n for name, n in nodes.items() if name != config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    assert workers and all(w["resources"].get("GPU", 0) >= 1 for w in workers)
    assert any("pip install" in c and "~/ibray" in c for c in config["setup_commands"])
    assert config["file_mounts"] == {"~/ibray": "."}
    # every node runs the Ray the tests run, which pyproject.toml's bound admits
    import ray
    from packaging.requirements import Requirement

    pinned = [c for c in config["setup_commands"] if "ray[" in c]
    assert pinned and all(f'"ray[default,tune]=={ray.__version__}"' in c for c in pinned)
    pyproject = (REPO / "pyproject.toml").read_text()
    bound = Requirement(re.search(r'"(ray\[tune\][^"]*)"', pyproject).group(1))
    assert bound.specifier.contains(ray.__version__) and not bound.specifier.contains("2.40.0")
    # the head, which runs the driver, holds the data; workers get it through the object store
    assert [c for c in config["head_setup_commands"] if "data download" in c] == [
        "python3 -m ibray.cli data download mnist",
        "python3 -m ibray.cli data download szt",
    ]
    assert not any("download" in c for c in config["worker_setup_commands"])


USER_NETS = '''"""A user's module file for the cluster test: two factories over (B, 3, 8, 8) images, 3 classes.
Each call notes in LOG where it ran: its process, its working directory, and the folders other
than this file's own that hold a copy of it, in the working directory or on sys.path (where Ray's
working_dir puts the sweep's folder on a node)."""

import os
import sys

from torch import nn

LOG = {log!r}


def _note():
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "nets.py"), "rb") as mine:
        me = mine.read()
    copies = set()
    for folder in [os.getcwd(), *sys.path]:
        folder = os.path.abspath(folder or os.getcwd())
        if folder != here and os.path.isfile(os.path.join(folder, "nets.py")):
            with open(os.path.join(folder, "nets.py"), "rb") as other:
                if other.read() == me:
                    copies.add(folder)
    with open(LOG, "a") as log:
        log.write(f"{{os.getpid()}}\\t{{os.getcwd()}}\\t{{','.join(sorted(copies))}}\\n")


def cnn():
    _note()
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(36, 8), nn.ReLU(), nn.Linear(8, 3)
    )


def mlp():
    _note()
    return nn.Sequential(nn.Flatten(), nn.Linear(192, 12), nn.Tanh(), nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 3))
'''


def test_a_sweep_of_a_users_module_on_a_users_images_runs_on_both_nodes(ray_cluster, tmp_path):
    """A user's folder (module file, image .npz, sweep file) swept with --address: the module
    goes to the nodes with the sweep (Ray's working_dir), both trials run, one on each node,
    every row is there once, and the report draws both networks' information planes."""
    import ray

    from ibray.cli import main

    study, log = tmp_path / "study", tmp_path / "calls.log"
    study.mkdir()
    (study / "nets.py").write_text(USER_NETS.format(log=str(log)))
    rng = np.random.default_rng(0)
    y = np.arange(120) % 3
    x = rng.random((120, 3, 8, 8)).astype(np.float32) * 0.3
    for row, label in enumerate(y):  # a bright square, in one of three places and colours
        x[row, label, 2 * label : 2 * label + 3, 2:5] += 0.7
    np.savez(study / "images.npz", x=x, y=y)
    sweep = study / "sweep.yaml"  # its modules are named beside it; a data file from the working directory
    sweep.write_text(
        f"name: own-images\ndataset: {study / 'images.npz'}\narchitecture: [nets.py:cnn, nets.py:mlp]\n"
        "bits: 8\nseeds: 2\nepochs: 6\nlearning_rate: 0.01\nbatch_size: 32\nmi_every: 2\nwrite_every: 3\n"
        "resources: {cpu: 1}\n"
    )
    root = tmp_path / "results"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "ibray.cli",
            "sweep",
            str(sweep),
            "--results",
            str(root),
            "--address",
            ray_cluster.address,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,  # not the study's folder, which only the sweep file's paths and Ray's upload name
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "2/2 trials complete" in run.stdout
    node_ids = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert len(node_ids) == 2 and set(re.findall(r"([0-9a-f]{56}) \(1 trials\)", run.stdout)) == node_ids, run.stdout
    # the trials' processes hold the module as the sweep shipped it: a copy of the study's folder
    # (on the nodes: the Tune trials' working directories; the copies on sys.path, in Ray's session)
    calls = [line.split("\t") for line in log.read_text().splitlines()]
    on_nodes = [(pid, copies) for pid, cwd, copies in calls if cwd != str(tmp_path)]  # not the driver's
    assert len({pid for pid, _ in on_nodes}) == 2 and all(copies for _, copies in on_nodes), calls

    folder = root / "own-images"
    # the whole sweep folder: its copy of sweep.yaml names nets.py, found where the sweep file was given
    assert (folder / "sweep_base.txt").read_text().strip() == str(study)
    assert main(["verify", str(folder)]) == 0
    mi = pl.read_parquet(f"{folder}/trials/*/mi/*.parquet")
    trials = {t.trial_id(): t for t in load_sweep(sweep).trials}
    # every trial, seed (2), measured epoch (0, 2, 4, 6) and layer (two activations, the output) once
    assert set(mi["trial"]) == set(trials) and not mi.select(MI_KEY).is_duplicated().any()
    assert mi.height == 2 * 2 * 4 * 3
    assert set(mi["layer_name"]) == {"1", "5", "2", "4", "output"}
    assert (mi["mi_xt"] <= math.log2(120) + 1e-9).all() and (mi["mi_ty"] <= mi["mi_xt"] + 1e-9).all()
    for _, rows in mi.sort(["trial", "seed", "epoch", "layer"]).group_by(["trial", "seed", "epoch"]):
        assert all(a >= b - 1e-9 for a, b in itertools.pairwise(rows["mi_xt"].to_list()))  # the DPI

    html, svg = tmp_path / "report.html", tmp_path / "svg"
    assert main(["report", str(folder), "-o", str(html), "--svg", str(svg)]) == 0
    page = html.read_text(encoding="utf-8")
    planes = re.findall(r'<div class="chart" id="(plane-[^"]+-exact-mean)"', page)
    assert len(planes) == 2 and any("cnn" in p for p in planes) and any("mlp" in p for p in planes), planes
    drawn = sorted(svg.glob("*-exact-mean.svg"))
    assert [p.stem for p in drawn] == sorted(planes)
    assert all('class="mark-symbol' in p.read_text() for p in drawn)  # each plane's points drawn
