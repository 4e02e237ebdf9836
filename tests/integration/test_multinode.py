"""Labeling and streamed training across a multi-node Ray cluster on one machine (`ray.cluster_utils.Cluster`).

A CPU head plus two worker nodes that each advertise one logical GPU. Teacher actors ask for 0.6 of
a GPU, so two of them cannot share a node: they must land on the two GPU workers, never on the head.
Each labelled row records the node that labelled it (`labeled_on`), which shows the work spread
across both workers, and the output holds every input row exactly once.

Every node binds 127.0.0.1 and ports from 28000-28999; the session files and the "current cluster"
address file live in this test's own temp dir, so no other Ray on the machine can join it by accident.
"""

from __future__ import annotations

from collections import Counter

import pyarrow.parquet as pq
import pytest

from helpers import REPO, local_cluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PORT_RANGE = (28000, 28999)


@pytest.fixture()
def gpu_cluster(monkeypatch):
    """Head: 8 logical CPUs (read tasks want whole CPUs), no GPU. Two workers: 2 CPUs and 1 logical GPU each. Yields (cluster, worker node ids)."""
    with local_cluster(monkeypatch, PORT_RANGE, "rmn", head={"num_cpus": 8, "num_gpus": 0},
                       workers=[{"num_cpus": 2, "num_gpus": 1}] * 2, object_store_mb=150) as (cluster, workers, _):
        yield cluster, {w.node_id for w in workers}


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


@pytest.fixture()
def train_cluster(monkeypatch):
    """Head: 4 logical CPUs. Two workers: 2 CPUs and one `trainer` slot each, so the two Ray Train
    workers land on different nodes. Yields the worker node ids."""
    with local_cluster(monkeypatch, PORT_RANGE, "rmt", head={"num_cpus": 4},
                       workers=[{"num_cpus": 2, "resources": {"trainer": 1}}] * 2, object_store_mb=150) as (_, workers, _):
        yield {w.node_id for w in workers}


def test_streamed_training_workers_on_two_nodes_each_read_only_their_shard(train_cluster, tmp_path, tiny_factories):
    from test_train_stream import _ids_per_worker, _spec, committed_labels

    from distillery.training.data import build_training_table

    make_tiny_run, save_tiny_bert = tiny_factories
    run_dir = make_tiny_run(tmp_path / "run", rows_train=300, rows_unlabeled=200, rows_test=20)
    committed_labels(run_dir)
    spec = _spec(run_dir, save_tiny_bert(tmp_path / "bert", num_layers=2, hidden=32))
    table = build_training_table(str(run_dir), spec.data, "joint")
    expected = sorted(i for i, v in zip(table.ids, table.is_val) if not v)

    seen, _ = _ids_per_worker(spec, tmp_path / "out", epochs=1, resources={"CPU": 0.5, "trainer": 1})
    a, b = seen[0][0], seen[1][0]
    assert {a["node"], b["node"]} == train_cluster, "one Ray Train worker on each worker node"
    print(f"rows read per worker: rank 0 {len(a['ids'])} on {a['node'][:8]}, rank 1 {len(b['ids'])} on {b['node'][:8]}")
    assert abs(len(a["ids"]) - len(b["ids"])) <= 1, "equal shares"
    assert not set(a["ids"]) & set(b["ids"]) and sorted(a["ids"] + b["ids"]) == expected  # each its own share, all once
