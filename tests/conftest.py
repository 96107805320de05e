"""Shared fixtures: the synthetic data set, the shared copy of var_u.mat, one real Ray cluster."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest

# Ray caches its authentication mode when first imported, so the sweep tests' choice is made
# here, before any test imports ray: token auth with a per-session token that every process
# the tests start (nodes, drivers) inherits; ~/.ray is left alone.
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

REPO = Path(__file__).resolve().parents[1]
SHARED_VAR_U = REPO.parent / "shared" / "data" / "var_u.mat"

@pytest.fixture(scope="session")
def synthetic():
    from ibray.data import load_dataset

    return load_dataset("synthetic12")

@pytest.fixture(scope="session")
def ray_cluster():
    """One real two-node Ray cluster on this machine (a head and a worker, 1 CPU each), connected.

    Both nodes listen on this host's own address: Ray turns 127.0.0.1 into it for clusters.

    Shared by the sweep tests: starting Ray costs seconds. Its processes are children of this
    process; cluster.shutdown() ends exactly the nodes it started.
    """
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.connect()
    yield cluster
    ray.shutdown()
    cluster.shutdown()
