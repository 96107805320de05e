"""Test helper: a Ray cluster of this machine's nodes owned by a process of its own.

`ray.cluster_utils.Cluster` started in the test process would leave that process holding GCS
clients of the cluster after its nodes are removed; once that GCS has been gone for a minute,
Ray ends the whole process ("Failed to connect to GCS within 60 seconds ... The program will
terminate"), and with it whatever test runs there then. A cluster that a test removes node by
node therefore lives in a child process:

    with NodeHost(head={...}, nodes={"a": {...}, "b": {...}}) as cluster:
        cluster.address, cluster.head_ip, cluster.head_id, cluster.node_ids["a"]
        cluster.remove("a")   # the node and everything on it, at once (no grace)

The arguments are `Cluster.add_node` keyword arguments. The child inherits the environment (the
nodes' processes too). It removes every node left when the `with` block ends, or when its
stdin closes because the test process died.

Run as a script, it is that child: it reads the JSON of its arguments from argv, prints one
JSON line describing the cluster, then obeys `remove NAME` lines on stdin.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


class NodeHost:
    def __init__(self, head: dict, nodes: dict[str, dict]) -> None:
        spec = json.dumps({"head": head, "nodes": nodes})
        self._process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), spec],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self._process.stdout.readline()
        while line and not line.startswith("{"):  # anything Ray may print first
            line = self._process.stdout.readline()
        if not line:
            self._process.wait(30)
            raise RuntimeError(f"the node host exited with code {self._process.returncode} before its cluster was up")
        described = json.loads(line)
        self.address: str = described["address"]
        self.head_ip: str = described["head_ip"]
        self.head_id: str = described["head_id"]
        self.node_ids: dict[str, str] = described["node_ids"]

    def remove(self, name: str) -> None:
        """Remove node `name` at once, as a lost machine is."""
        self._process.stdin.write(f"remove {name}\n")
        self._process.stdin.flush()
        answer = self._process.stdout.readline().strip()
        assert answer == f"removed {name}", answer

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.stdin.close()  # the child removes what is left and exits
            try:
                self._process.wait(120)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def __enter__(self) -> NodeHost:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()


def _serve(spec: dict) -> None:
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, connect=False, head_node_args=spec["head"])
    nodes = {name: cluster.add_node(**args) for name, args in spec["nodes"].items()}
    head = cluster.head_node
    described = {
        "address": cluster.address,
        "head_ip": head.node_ip_address,
        "head_id": head.node_id,
        "node_ids": {name: node.node_id for name, node in nodes.items()},
    }
    print(json.dumps(described), flush=True)
    try:
        for line in sys.stdin:
            command, _, name = line.strip().partition(" ")
            if command == "remove" and name in nodes:
                cluster.remove_node(nodes.pop(name), allow_graceful=False)
                print(f"removed {name}", flush=True)
            else:
                print(f"unknown command {line.strip()!r}", flush=True)
    finally:
        for node in list(cluster.worker_nodes):
            cluster.remove_node(node, allow_graceful=False)
        cluster.remove_node(cluster.head_node, allow_graceful=False)


if __name__ == "__main__":
    _serve(json.loads(sys.argv[1]))
