"""Labeling across a multi-node Ray cluster on one machine (`ray.cluster_utils.Cluster`).

A CPU head plus two worker nodes that each advertise one logical GPU. Teacher actors ask for 0.6 of
a GPU, so two of them cannot share a node: they must land on the two GPU workers, never on the head.
Each labelled row records the node that labelled it (`labeled_on`), which shows the work spread
across both workers, and the output holds every input row exactly once.

Every node binds 127.0.0.1 and ports from 28000-28999; the session files and the "current cluster"
address file live in this test's own temp dir, so no other Ray on the machine can join it by accident.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import tempfile
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
PORT_RANGE = (28000, 28999)
NODE_PORTS = ("node_manager_port", "object_manager_port", "metrics_agent_port", "metrics_export_port",
              "dashboard_agent_listen_port", "runtime_env_agent_port")
WORKER_PORTS = 24
PORTS_PER_NODE = len(NODE_PORTS) + 1 + WORKER_PORTS  # + the head's GCS port


def _free_block(size: int) -> int:
    def free(port: int) -> bool:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
        return True

    starts = list(range(PORT_RANGE[0], PORT_RANGE[1] - size, size))
    random.shuffle(starts)
    for start in starts:
        if all(free(p) for p in range(start, start + size)):
            return start
    raise RuntimeError(f"no {size} free ports in {PORT_RANGE}")


def _node_args(base: int, **resources) -> dict:
    args = {name: base + i for i, name in enumerate(NODE_PORTS)}
    lo = base + len(NODE_PORTS) + 1
    args.update(node_ip_address="127.0.0.1", min_worker_port=lo, max_worker_port=lo + WORKER_PORTS - 1,
                object_store_memory=150 * 1024**2, **resources)
    return args


def _processes_naming(text: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                pids.append(int(entry))
    return pids


@pytest.fixture()
def gpu_cluster(monkeypatch):
    """Head: 8 logical CPUs (read tasks want whole CPUs), no GPU. Two workers: 2 CPUs and 1 logical GPU each. Yields (cluster, worker node ids)."""
    import ray
    import ray._private.ray_constants as ray_constants
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    temp_dir = tempfile.mkdtemp(prefix="rmn", dir="/tmp")  # short: Ray's unix sockets live under it
    monkeypatch.setenv("RAY_TMPDIR", temp_dir)  # the "current cluster" file goes here, not /tmp/ray
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    # Ray rewrites 127.0.0.1 to the machine's address when a driver connects; keep it on loopback.
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
    os.makedirs(os.path.join(temp_dir, "ray"))  # Ray's default dir under RAY_TMPDIR
    base = _free_block(3 * PORTS_PER_NODE)
    head_args = _node_args(base, num_cpus=8, num_gpus=0, include_dashboard=False,
                           temp_dir=os.path.join(temp_dir, "ray"))
    head_args["gcs_server_port"] = base + len(NODE_PORTS)
    cluster = Cluster(shutdown_at_exit=True)
    try:
        cluster.add_node(**head_args)
        workers = [cluster.add_node(**_node_args(base + (i + 1) * PORTS_PER_NODE, num_cpus=2, num_gpus=1))
                   for i in range(2)]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False,
                 runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}})
        yield cluster, {w.node_id for w in workers}
    finally:
        ray.shutdown()
        cluster.shutdown()
        for _ in range(20):
            left = _processes_naming(temp_dir)
            if not left:
                break
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture()
def run_dir(tmp_path):
    from distillery.data.synthetic import SyntheticConfig, write_splits

    write_splits(SyntheticConfig(seed=11, rows_train=160, rows_unlabeled=320, rows_test=40, files_per_split=8),
                 str(tmp_path / "data"))
    return tmp_path


def test_labeling_actors_run_on_gpu_workers_across_nodes_exactly_once(gpu_cluster, run_dir, tiny_bert):
    import ray

    labeling = pytest.importorskip("distillery.labeling", reason="distillery.labeling not written yet")
    from distillery.config import load_config

    cluster, gpu_nodes = gpu_cluster
    head_node = cluster.head_node.node_id
    assert ray.cluster_resources().get("GPU") == 2

    cfg = load_config(labeling.LabelConfig, REPO / "jobs" / "configs" / "label.yaml", [
        f"run_dir={run_dir}", f"teacher.model={tiny_bert}", "teacher.num_threads=1", "teacher.device=auto",
        "actors.num_gpus=0.6", "actors.num_cpus=0.5", "actors.pool_min=2", "actors.pool_max=2",
        "actors.batch_size=16", "actors.max_tasks_in_flight=1", "files_per_round=16",
    ])
    # Both actors must be up before blocks flow (Ray Data otherwise starts them asynchronously, and a
    # tiny teacher on the first actor could finish everything before the second one has loaded).
    context = ray.data.DataContext.get_current()
    saved, context.wait_for_min_actors_s = context.wait_for_min_actors_s, 120
    try:
        manifest = labeling.run(cfg)
    finally:
        context.wait_for_min_actors_s = saved

    labels = pq.read_table(run_dir / "labels")
    per_node = Counter(labels["labeled_on"].to_pylist())
    nodes = set(per_node)
    assert nodes <= gpu_nodes, f"rows labelled off the GPU workers (head is {head_node}): {nodes - gpu_nodes}"
    assert len(nodes) >= 2, f"all rows labelled on one node: {dict(per_node)}"
    print(f"rows labelled per GPU worker: {sorted(per_node.values())}")

    inputs = pq.read_table(run_dir / "data" / "train", columns=["id"])["id"].to_pylist() \
        + pq.read_table(run_dir / "data" / "unlabeled", columns=["id"])["id"].to_pylist()
    out_ids = labels["id"].to_pylist()
    rejects = run_dir / "labels" / "_rejects"
    if rejects.exists() and any(rejects.glob("*.parquet")):
        out_ids += pq.read_table(rejects, columns=["id"])["id"].to_pylist()
    assert sorted(out_ids) == sorted(inputs), "rows lost or labelled twice"
    assert len(set(labels["id"].to_pylist())) == labels.num_rows
    assert manifest["complete"] and manifest["rows_in"] == len(inputs) == 480
