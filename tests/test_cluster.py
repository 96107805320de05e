"""The cluster: cluster.yaml against the schema Ray ships (and what it installs where), and a sweep submitted with
`ibray sweep --address` to a real two-node Ray (the session's head and worker on this machine),
whose trials run on both nodes and whose results are complete and correct."""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
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


def test_a_sweep_runs_on_both_nodes(ray_cluster, tmp_path):
    import ray

    node_ids = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert len(node_ids) == 2
    path = tmp_path / "cluster.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "two-nodes",
                "activation": ["tanh", "relu"],
                "seeds": 2,
                "epochs": 20,
                "learning_rate": 0.003,
                "mi_every": 5,
                "write_every": 10,
                "resources": {"cpu": 1},
            }
        )
    )
    root = tmp_path / "results"
    command = [sys.executable, "-m", "ibray.cli", "sweep", str(path), "--results", str(root)]
    # 1 CPU per node and per trial: both trials start at once, one on each node
    run = subprocess.run(
        [*command, "--address", ray_cluster.address],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ},
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "2/2 trials complete" in run.stdout
    used = set(re.findall(r"([0-9a-f]{56}) \(1 trials\)", run.stdout))
    assert used == node_ids, run.stdout

    folder = root / "two-nodes"
    mi = pl.read_parquet(f"{folder}/trials/*/mi/*.parquet")
    metrics = pl.read_parquet(f"{folder}/trials/*/metrics/*.parquet")
    trials = {t.trial_id(): t for t in load_sweep(path).trials}
    # complete: every trial, seed, epoch (0, 5, ..., 20) and layer exactly once
    assert set(mi["trial"]) == set(trials) and not mi.select(MI_KEY).is_duplicated().any()
    assert mi.height == 2 * 2 * 5 * 6 and metrics.height == 2 * 2 * 5
    for (trial, activation), rows in mi.group_by(["trial", "activation"]):
        assert trials[trial].activation == activation
    # correct: MI within its bounds, and the data-processing inequality layer by layer (exact MI)
    assert mi["mi_xt"].max() <= 12 + 1e-9 and mi["mi_ty"].min() >= -1e-9
    assert (mi["mi_ty"] <= mi["mi_xt"] + 1e-9).all()
    ordered = mi.sort(["trial", "seed", "epoch", "layer"])
    for _, rows in ordered.group_by(["trial", "seed", "epoch"]):
        xt, ty = rows["mi_xt"].to_list(), rows["mi_ty"].to_list()
        assert all(a >= b - 1e-9 for a, b in itertools.pairwise(xt))
        assert all(a >= b - 1e-9 for a, b in itertools.pairwise(ty))
    assert math.isclose(mi.filter(pl.col("epoch") == 0, pl.col("layer") == 1)["mi_ty"].max(), 1.0, abs_tol=0.01)
    assert metrics.filter(pl.col("epoch") == 20)["train_acc"].min() > 0.6
