"""Streamed training input (`data.stream: true`) on a real local Ray: each Ray Train worker reads a
disjoint shard and together they read every training row exactly once an epoch (padding rows that
even the shares are never trained on), in the same number of steps; labels are joined per input file from the
labeling job's manifest; the unlabeled split's clicks never reach training; a run trains, checkpoints
and resumes after an injected worker failure."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distillery.config import load_config
from distillery.label_store import MANIFEST, label_file_key
from distillery.training.data import DataSection, build_training_table
from distillery.training.job import TrainJobConfig, run
from distillery.training.ray_train import TrainSpec

pytestmark = pytest.mark.integration


def committed_labels(run_dir) -> None:
    """Rewrite a tiny run's labels in the labeling job's layout: one label file per input file
    (`label_file_key`) and a finished `_MANIFEST.json` listing them."""
    labels = run_dir / "labels"
    by_id = {}
    for split in ("train", "unlabeled"):
        table = pq.read_table(labels / f"{split}.parquet")
        by_id.update({r["id"]: r for r in table.to_pylist()})
        (labels / f"{split}.parquet").unlink()
    inputs = []
    for split in ("train", "unlabeled"):
        for name in sorted(os.listdir(run_dir / "data" / split)):
            path = str(run_dir / "data" / split / name)
            ids = pq.read_table(path, columns=["id"])["id"].to_pylist()
            rows = [by_id[i] for i in ids]
            key = label_file_key(path, str(run_dir))
            pq.write_table(pa.Table.from_pylist(rows), labels / f"{key}.parquet")
            inputs.append({"path": path, "name": f"data/{split}/{name}", "key": key, "output": f"{key}.parquet",
                           "rows_labeled": len(rows)})
    (labels / MANIFEST).write_text(json.dumps({"complete": True, "inputs": inputs}))


@pytest.fixture(scope="module")
def stream_run(tiny_factories, tmp_path_factory):
    make_tiny_run, save_tiny_bert = tiny_factories
    root = tmp_path_factory.mktemp("stream")
    run_dir = make_tiny_run(root / "run", rows_train=300, rows_unlabeled=200, rows_test=20)
    committed_labels(run_dir)
    return run_dir, save_tiny_bert(root / "bert", num_layers=2, hidden=32)


def _spec(run_dir, bert, **data) -> TrainSpec:
    return TrainSpec.model_validate({
        "run_dir": str(run_dir), "init": {"kind": "layer_subset", "source": str(bert), "layers": [1]},
        "data": {"splits": ["train", "unlabeled"], "stream": True, "val_fraction": 0.2,
                 "streaming": {"block_rows": 40, "val_max_rows": 1000}, **data},
        "loop": {"loss": "joint", "batch_size": 8, "max_length": 48},
    })


def _ids_per_worker(spec: TrainSpec, out_dir, epochs: int = 2, resources: dict | None = None) -> dict:
    """Run a TorchTrainer whose workers (`resources` each) read their shards through `StreamLoader`
    (length buckets) and write, per epoch, the ids each would train on, its steps and its node."""
    import ray.train
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from distillery.training.stream import WEIGHT_KEY, StreamLoader, prepare, split_config

    job = prepare(spec, world_size=2)

    def loop(config):
        rank = ray.train.get_context().get_world_rank()
        loader = StreamLoader(ray.train.get_dataset_shard("train"), lambda items: {"ids": [str(it["id"]) for it in items]},
                              0, 8, steps=1, shuffle=True, bucket_batches=3, shuffle_buffer=32, seed=0)
        seen = []
        for epoch in range(epochs):
            loader.set_epoch(epoch)
            batches = list(loader)
            seen.append({"ids": [i for b in batches if WEIGHT_KEY not in b for i in b["ids"]], "steps": len(batches),
                         "node": ray.get_runtime_context().get_node_id()})
        with open(os.path.join(config["out"], f"rank{rank}.json"), "w") as f:
            json.dump(seen, f)

    TorchTrainer(loop, train_loop_config={"out": str(out_dir)}, datasets=job.datasets,
                 dataset_config=split_config(True),
                 scaling_config=ScalingConfig(num_workers=2, resources_per_worker=resources or {"CPU": 0.5}),
                 run_config=RunConfig(name="shards", storage_path=str(out_dir / "ray"))).fit()
    return {r: json.loads((out_dir / f"rank{r}.json").read_text()) for r in (0, 1)}, job.plan


def test_shards_are_disjoint_and_cover_every_training_row_once_an_epoch(local_ray, stream_run, tmp_path):
    run_dir, bert = stream_run
    spec = _spec(run_dir, bert)
    table = build_training_table(str(run_dir), spec.data, "joint")
    expected = sorted(i for i, v in zip(table.ids, table.is_val) if not v)
    seen, plan = _ids_per_worker(spec, tmp_path)
    assert plan["train_rows"] == len(expected) and plan["val_rows"] == int(table.is_val.sum())
    for epoch in range(2):
        a, b = seen[0][epoch], seen[1][epoch]
        assert a["ids"] and b["ids"], "each worker reads a share"
        assert len(a["ids"]) == len(set(a["ids"])) and len(b["ids"]) == len(set(b["ids"]))  # no row twice
        assert not set(a["ids"]) & set(b["ids"])  # disjoint shards
        assert sorted(a["ids"] + b["ids"]) == expected  # together: every training row, once
        assert a["steps"] == b["steps"]  # the ranks' all-reduces stay paired
    assert seen[0][0]["ids"] != seen[0][1]["ids"]  # a new shuffle each epoch


def test_hidden_clicks_never_reach_training(local_ray, stream_run):
    from distillery.training.stream import rows_dataset
    from distillery.training.stream_rows import plan_inputs

    run_dir, bert = stream_run
    spec = _spec(run_dir, bert)
    inputs, sel = plan_inputs(str(run_dir), spec.data, "joint")
    assert sel.notes["labels"] == "per file" and all(len(i.labels) == 1 for i in inputs)
    rows = rows_dataset(inputs, sel, "train", 0.25).take_all() + rows_dataset(inputs, sel, "val", 0.25).take_all()
    unlabeled = [r for r in rows if r["split"] == "unlabeled"]
    assert unlabeled and all(r["click"] != r["click"] for r in unlabeled)  # NaN: the column was never read
    assert all(r["click"] in (0.0, 1.0) for r in rows if r["split"] == "train")
    with pytest.raises(ValueError, match="reveal_hidden_clicks"):
        plan = plan_inputs(str(run_dir), DataSection(splits=["unlabeled"], stream=True), "click")
        rows_dataset(*plan, "train", 0.25).take_all()


def _job(run_dir, bert, **loop):
    return load_config(TrainJobConfig, None, [
        f"run_dir={run_dir}", "output=student", "init.kind=layer_subset", f"init.source={bert}", "init.layers=[1]",
        "init.trim_vocab_splits=[train, unlabeled]", "data.splits=[train, unlabeled]", "data.stream=true",
        "data.streaming.block_rows=40", "loop.loss=joint",
        "loop.batch_size=16", "loop.max_length=48", "loop.lr=0.002", "loop.torch_threads=1", "scaling.num_workers=2",
        "scaling.cpus_per_worker=0.5", "failure.max_failures=1", "checkpoint.num_to_keep=3",
    ] + [f"loop.{k}={v}" for k, v in loop.items()])


def test_streamed_job_trims_trains_checkpoints_and_resumes_after_a_failure(local_ray, stream_run):
    run_dir, bert = stream_run
    first = run(_job(run_dir, bert, epochs=1))
    assert [h["epoch"] for h in first["history"]] == [0] and first["history"][0]["world_size"] == 2
    assert first["history"][0]["val_rows"] > 0
    second = run(_job(run_dir, bert, epochs=2, fail_once_at_epoch=1))
    ckpt_root = run_dir / "checkpoints" / "student"
    assert (ckpt_root / "_injected_failure").exists()  # the failure really happened
    hist = second["history"]
    assert [h["epoch"] for h in hist] == [0, 1]
    assert hist[0]["loss"] == first["history"][0]["loss"]  # epoch 0 restored, not retrained
    assert hist[1]["val_loss"] != hist[0]["val_loss"]  # epoch 1 trained (the schedule was not spent in epoch 0)
    published = json.loads((run_dir / "student" / "config.json").read_text())
    assert 100 < published["vocab_size"] < 30_522  # trimmed once, in the driver, on streamed texts
