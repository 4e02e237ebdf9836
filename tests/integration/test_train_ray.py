"""Ray Train end to end on a local Ray: 2 DDP workers (gloo, fractional CPUs) over a tiny model
write a checkpoint per epoch and publish the best; a re-run with an injected worker failure resumes
from the checkpoint instead of starting over."""

import json
import os

import pytest

from distillery.config import load_config
from distillery.training.job import TrainJobConfig, run

pytestmark = pytest.mark.integration


def _cfg(run_dir, bert, **loop):
    overrides = [
        f"run_dir={run_dir}", "output=student", "init.kind=layer_subset", f"init.source={bert}", "init.layers=[1]",
        "data.splits=[train, unlabeled]", "loop.loss=joint", "loop.batch_size=16", "loop.max_length=48",
        "loop.lr=0.002", "scaling.num_workers=2", "scaling.cpus_per_worker=0.5", "failure.max_failures=1",
        "checkpoint.num_to_keep=2",
    ] + [f"loop.{k}={v}" for k, v in loop.items()]
    return load_config(TrainJobConfig, None, overrides)


def test_two_workers_checkpoint_then_resume_after_injected_failure(local_ray, tiny_factories, tmp_path):
    make_tiny_run, save_tiny_bert = tiny_factories
    run_dir = make_tiny_run(tmp_path / "run", rows_train=120, rows_unlabeled=80, rows_test=20)
    bert = save_tiny_bert(tmp_path / "teacher", num_layers=2, hidden=32)

    first = run(_cfg(run_dir, bert, epochs=2))
    assert [h["epoch"] for h in first["history"]] == [0, 1]
    assert all(h["world_size"] == 2 for h in first["history"])
    ckpt_root = run_dir / "checkpoints" / "student"
    ckpts = sorted(d for d in os.listdir(ckpt_root) if d.startswith("epoch_"))
    assert ckpts == ["epoch_0000", "epoch_0001"]
    assert (ckpt_root / "epoch_0001" / "train_state.pt").exists()
    published = run_dir / "student"
    assert (published / "config.json").exists() and (published / "tokenizer.json").exists()
    assert not (published / "train_state.pt").exists()
    assert json.loads((published / "config.json").read_text())["num_hidden_layers"] == 1

    # Same job, one more epoch, and a worker that dies once at the start of epoch 2.
    second = run(_cfg(run_dir, bert, epochs=3, fail_once_at_epoch=2))
    assert (ckpt_root / "_injected_failure").exists()  # the failure really happened
    hist = second["history"]
    assert [h["epoch"] for h in hist] == [0, 1, 2]  # epochs 0-1 restored, not retrained
    assert hist[0]["loss"] == first["history"][0]["loss"] and hist[1]["loss"] == first["history"][1]["loss"]
    assert "epoch_0002" in os.listdir(ckpt_root)
    summary = json.loads((published / "training_summary.json").read_text())
    assert summary["best"]["epoch"] in (0, 1, 2)
