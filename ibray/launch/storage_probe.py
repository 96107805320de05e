"""Is a sweep's results root shared by every node of the Ray cluster? Checked before anything
of the sweep is written.

On a cluster each trial writes its Parquet parts, trial.json and checkpoint from the node it
runs on, the driver reads them back (its summary, `ibray verify`, `--resume`), and a trial
retried on another node continues from the checkpoint the first node wrote. That works only
when every node reads and writes the same storage: an object store (s3://, gs://) or a file
system that every node mounts at the same path. A local disk passes for one node and silently
splits the results over several, so it is refused before anything starts.

The probe: the driver writes a random token to `<probe>/driver`; one task per alive node,
pinned to it (NodeAffinitySchedulingStrategy) and asking for no CPU (so nodes busy with other
work answer too), reads it and writes it back to `<probe>/<node id>`; the driver then reads
every answer. `<probe>` is a `.ibray-probe-<token>` folder in the nearest existing folder of
the sweep's (local paths) or in the results root (URIs), deleted afterwards. Nodes that the
autoscaler adds later cannot be probed; the launcher refuses a local root when it waits for
them. Imported by the launcher only (imports ray).

Test hook: a node whose environment sets IBRAY_TEST_NODE_DISK=<folder> probes a local path
below that folder instead, as a node with a disk of its own would see it. All nodes of a test
cluster share one machine's disk; this is how the tests make one node's disk differ. It
changes the probe task only, never a trial.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ibray.storage import is_uri, join, read_text, resolve, write_text_atomic
from ibray.sweep import SweepError

PROBE_TIMEOUT_S = 60.0  # a first task on a node starts a worker process: seconds on a busy node
NODE_DISK_ENV = "IBRAY_TEST_NODE_DISK"
SHARED_STORAGE_FIX = (
    "pass --results s3://BUCKET/PATH or gs://BUCKET/PATH (give every node access to the bucket), "
    "or a folder on a file system that every node mounts at the same path"
)


def check_shared(folder: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Raise SweepError unless every alive node of the connected Ray cluster can read what the
    driver writes near the sweep's `folder` (a path or URI), and write what the driver reads."""
    root = str(folder).rstrip("/").rsplit("/", 1)[0]
    token = uuid.uuid4().hex
    probe = str(join(_probe_home(str(folder)), f".ibray-probe-{token[:16]}"))
    write_text_atomic(token, join(probe, "driver"))
    problems = []
    try:
        nodes = [node for node in ray.nodes() if node["Alive"]]
        answers = {
            node["NodeID"]: _answer.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
            ).remote(probe, token)
            for node in nodes
        }
        ready, _ = ray.wait(list(answers.values()), num_returns=len(answers), timeout=timeout)
        for node in nodes:
            name = f"node {node['NodeManagerAddress']} ({node['NodeID'][:8]})"
            answer = answers[node["NodeID"]]
            if answer not in ready:
                problems.append(f"{name} did not answer within {timeout:g} s")
                continue
            try:
                problem = ray.get(answer)
            except Exception as error:  # noqa: BLE001 (a node that cannot run the probe cannot run trials)
                problem = f"could not run the probe ({type(error).__name__}: {str(error).splitlines()[0][:200]})"
            if problem is None and (read_text(join(probe, node["NodeID"])) or "").strip() != token:
                problem = f"wrote {join(probe, node['NodeID'])}, which the driver does not see"
            if problem is not None:
                problems.append(f"{name} {problem}")
    finally:
        filesystem, inner = resolve(probe)
        try:
            filesystem.delete_dir(inner)
        except OSError:
            pass  # a hidden folder of a few bytes, and its name says what it is
    if problems:
        raise SweepError(
            f"results root {root} is not shared by all nodes of the Ray cluster: {'; '.join(problems)}; {SHARED_STORAGE_FIX}"
        )


def _probe_home(folder: str) -> str:
    """Where the probe goes: for a local path, the nearest existing folder (the disk the sweep's
    files would land on, and nothing new to create or leave behind); for a URI, the results root."""
    if is_uri(folder):
        return folder.rstrip("/").rsplit("/", 1)[0]
    existing = Path(folder)
    while not existing.exists():
        existing = existing.parent
    return str(existing)


@ray.remote(num_cpus=0, max_retries=0)
def _answer(probe: str, token: str) -> str | None:
    """On one node: None when it reads the driver's token and writes it back, else what failed."""
    seen_at = probe
    disk = os.environ.get(NODE_DISK_ENV)
    if disk and not is_uri(probe):
        seen_at = os.path.join(disk, probe.lstrip("/"))
    written = join(probe, "driver")
    try:
        seen = read_text(join(seen_at, "driver"))
    except OSError as error:
        return f"cannot read {written}, which the driver wrote ({error})"
    if seen is None:
        return f"does not see {written}, which the driver wrote"
    if seen.strip() != token:
        return f"reads another file at {written} than the one the driver wrote"
    node = ray.get_runtime_context().get_node_id()
    try:
        write_text_atomic(token, join(seen_at, node))
    except OSError as error:
        return f"cannot write {join(probe, node)} ({error})"
    return None
