"""Shared fixtures: the synthetic data set, the shared copy of var_u.mat, one real Ray cluster
(one per test process: the suite runs in three, pyproject.toml's addopts; started when a test
first needs it, shut down when the files left for the process need it no more), and one tiny
sweep run on it that several tests read."""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

# Ray caches its authentication mode when first imported, so the sweep tests' choice is made
# here, before any test imports ray: token auth with a per-session token that every process
# the tests start (nodes, drivers) inherits; ~/.ray is left alone.
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

# Bytecode is written even where the environment says not to (PYTHONDONTWRITEBYTECODE=1, as on
# this development machine): otherwise every process the suite starts compiles ibray's modules again
# (three test processes, some 30 trial workers, some 15 drivers and CLIs: ~0.4 s of CPU each), and
# pytest rewrites the test modules' asserts again in each test process (its collection: 12.7 s of
# CPU without its cache, 7.5 s with). Set before pytest rewrites the test modules; git ignores
# __pycache__.
sys.dont_write_bytecode = False
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

REPO = Path(__file__).resolve().parents[1]
SHARED_VAR_U = REPO.parent / "shared" / "data" / "var_u.mat"

# Tests that need more than a few seconds on 2 cores besides those on the Ray cluster, which are
# all marked: whole sweeps or trials in processes, compilation, a browser, a cluster of their own.
SLOW_FILES = {"test_s3.py", "test_cluster.py"}
SLOW_TESTS = {
    "test_a_sweep_of_custom_networks_on_an_npz_and_a_csv",
    "test_a_killed_trial_resumes_from_its_checkpoint",
    "test_the_gpu_check_runs_dry_on_the_cpu_without_ray_polars_or_altair",
    "test_without_a_cxx_compiler_the_trial_runs_eagerly_after_one_warning",
    "test_trial_runs_reruns_and_refuses_a_foreign_folder",
    "test_bench_prints_its_figures_as_json",
    "test_the_compiled_step_computes_the_eager_gradient",
    "test_a_compiled_seed_is_independent_of_its_mates_and_repeatable",
    "test_each_compiled_wrapper_compiles_afresh_past_dynamos_recompile_limit",
    "test_resources_an_embedded_ray_lacks_are_refused_before_anything_is_written",
    "test_the_next_start_names_what_a_killed_drivers_local_ray_left_behind",
    "test_every_chart_renders_in_headless_chromium",
    "test_a_second_trial_on_the_same_out_is_refused_naming_the_first",
    "test_a_partial_restart_keeps_every_row_of_every_seed_exactly_once",
    "test_the_kernels_are_built_once_into_the_cache",
    "test_without_a_compiler_one_warning_and_the_torch_path",
    "test_watch_rewrites_the_report_until_every_trial_is_complete",
    "test_watch_stops_on_ctrl_c_with_130_and_leaves_the_last_report",
    "test_report_takes_help_and_options_in_any_order",
    "test_a_childs_cpu_is_counted_once_under_its_kind",
}


class SessionRay:
    """One real two-node Ray cluster on this machine (a head and a worker, 1 CPU each), connected,
    started by the first test that asks for it.

    Both nodes listen on this host's own address: Ray turns 127.0.0.1 into it for clusters. Its
    processes are children of this process; stop() ends exactly the nodes it started.
    """

    def __init__(self) -> None:
        self.cluster = None

    def get(self):
        if self.cluster is None:
            from ray.cluster_utils import Cluster

            # Ray keeps one idle worker process per CPU and ends the others a second after their
            # task: every sweep's storage probe (a task on each node) would start new ones, and
            # each costs a second of CPU. Four kept idle serve the probes of every sweep run here.
            # Nor does it start workers ahead for the first driver: Tune's trials start their own.
            config = {"num_workers_soft_limit": 4, "prestart_worker_first_driver": False}
            head = {"num_cpus": 1, "include_dashboard": False, "_system_config": config}
            cluster = Cluster(initialize_head=True, head_node_args=head)
            cluster.add_node(num_cpus=1)
            cluster.connect()
            self.cluster = cluster
        return self.cluster

    def stop(self) -> None:
        if self.cluster is not None:
            import ray

            ray.shutdown()
            self.cluster.shutdown()
            self.cluster = None


SESSION_RAY = SessionRay()
RAY_FIXTURES = {"ray_cluster", "finished_sweep"}  # the tests that use the process's cluster
RAY_FILES: set[Path] = set()  # the test files that hold such tests (set at collection)


@pytest.hookimpl(tryfirst=True)  # before -m reads the marks
def pytest_collection_modifyitems(items):
    """Mark the slow tests, and put the files with the most slow tests first: the README's test
    command runs the files in parallel processes (pytest-xdist, `--dist loadfile` in the order
    collected), and a long file started last would keep one process busy while the others idle."""
    slow_in_file: dict[Path, int] = {}
    for item in items:
        on_ray = bool(RAY_FIXTURES & set(getattr(item, "fixturenames", ())))
        if on_ray:
            RAY_FILES.add(item.path)
        slow = on_ray or item.path.name in SLOW_FILES or item.originalname in SLOW_TESTS
        if slow:
            item.add_marker(pytest.mark.slow)
        slow_in_file[item.path] = slow_in_file.get(item.path, 0) + slow
    items.sort(key=lambda item: -slow_in_file[item.path])  # stable: a file's own order within it


@pytest.hookimpl(trylast=True)  # after the test's own fixtures are torn down
def pytest_runtest_teardown(item, nextitem):
    """Shut the process's Ray cluster down once the next test is in a file that does not use it:
    an idle two-node cluster keeps about a tenth of a core busy (its daemons, the pool workers
    it keeps), for as long as the process runs other files. A later file on Ray starts it again."""
    if nextitem is None or nextitem.path not in RAY_FILES:
        SESSION_RAY.stop()


def pytest_sessionfinish(session, exitstatus):
    SESSION_RAY.stop()  # a run stopped early (-x, Ctrl-C) too


@pytest.fixture(scope="session")
def synthetic():
    from ibray.data import load_dataset

    return load_dataset("synthetic12")


@pytest.fixture
def ray_cluster():
    """The process's Ray cluster (SessionRay): starting Ray costs seconds, so the sweep tests share it."""
    return SESSION_RAY.get()


@dataclass(frozen=True)
class FinishedSweep:
    """A sweep run once to the end by `ibray sweep` on the session's cluster."""

    path: Path  # its sweep file
    root: Path  # the results root, a local folder given as a file:// URI
    uri: str
    out: str  # what the driver printed
    report: Path  # the report it wrote at its end (--report)
    nodes: frozenset[str]  # the cluster's alive nodes while it ran


TINY_SWEEP = {
    "name": "e2e",
    "activation": ["tanh", "relu"],
    "seeds": 2,
    "epochs": 20,
    "learning_rate": 0.003,
    "mi_every": 5,
    "write_every": 10,
}


@pytest.fixture(scope="session")
def finished_sweep(tmp_path_factory) -> FinishedSweep:
    """Two trials (tanh, relu) of 2 seeds x 20 epochs on a file:// results root, with a live
    report: the end-to-end run whose sweep, report and cluster checks each read it in their own
    way (a Ray sweep costs seconds to start; its checks need not each pay for one). Its readers
    live in one file (test_launch.py): the suite's processes each run whole files, so it runs
    once. Tests that read it must not change its folder."""
    import ray
    import yaml

    from ibray.cli import main

    base = tmp_path_factory.mktemp("finished-sweep")
    path = base / "e2e.yaml"
    path.write_text(yaml.safe_dump(TINY_SWEEP, sort_keys=False))
    root, report = base / "root", base / "reports" / "e2e.html"
    SESSION_RAY.get()  # not the ray_cluster fixture: a session fixture cannot take a per-test one
    nodes = frozenset(n["NodeID"] for n in ray.nodes() if n["Alive"])
    printed = io.StringIO()
    # --report-every 30: each rewrite is a process of its own (1-6 s of CPU on 2 cores); the tests
    # here read the final report, and test_live_report checks the rewrites
    with contextlib.redirect_stdout(printed):
        code = main(
            ["sweep", str(path), "--results", root.as_uri(), "--view-every", "0.5"]
            + ["--report", str(report), "--report-every", "30"]
        )
    assert code == 0, printed.getvalue()[-3000:]
    return FinishedSweep(path, root, root.as_uri(), printed.getvalue(), report, nodes)
