"""Training under a real fault: a Ray Train worker process SIGKILLed mid-epoch (not an exception the
loop raises, the process gone). Ray Train restarts the worker group (`failure.max_failures` from the
config), the loop resumes from the last checkpoint, and the finished run's metrics match an
undisturbed run of the same config.

The worker's PID comes from the GCS actor table of this test's own Ray (class `RayTrainWorker`), so
nothing outside this Ray is touched.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from distillery.config import load_config
from distillery.training.job import TrainJobConfig, run

# Two training runs plus a worker-group restart: about 3-4 minutes on a 2-core machine, so `make soak`.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.soak,
              pytest.mark.skipif(not os.environ.get("DISTILLERY_SOAK"), reason="long fault scenario: run `make soak`")]

EPOCHS = 3


def _cfg(run_dir, bert, stream: bool = False):
    return load_config(TrainJobConfig, None, [
        f"run_dir={run_dir}", "output=student", "init.kind=layer_subset", f"init.source={bert}", "init.layers=[1]",
        "data.splits=[train, unlabeled]", "loop.loss=joint", "loop.batch_size=16", "loop.max_length=48",
        "loop.lr=0.002", f"loop.epochs={EPOCHS}", "loop.torch_threads=1", "scaling.num_workers=2",
        "scaling.cpus_per_worker=0.5", "failure.max_failures=2", "checkpoint.num_to_keep=3",
        f"data.stream={str(stream).lower()}",
    ])


def train_worker_pids() -> list[int]:
    from ray._private import state

    alive = state.actors(actor_state_name="ALIVE").values()
    return sorted(a["Pid"] for a in alive if "RayTrainWorker" in a.get("ActorClassName", "") and a["Pid"])


def kill_worker_mid_epoch(cfg, ckpt_root) -> tuple[dict, dict]:
    """Run the job in a thread; once epoch 0 is checkpointed, SIGKILL one training worker process."""
    result: dict = {}

    def job():
        try:
            result["summary"] = run(cfg)
        except BaseException as err:  # noqa: BLE001 — reported by the caller's assertion
            result["error"] = err

    thread = threading.Thread(target=job, daemon=True)
    thread.start()
    deadline = time.monotonic() + 300
    while not (ckpt_root / "epoch_0000").exists():
        assert time.monotonic() < deadline and thread.is_alive(), f"no first checkpoint: {result}"
        time.sleep(0.05)
    pids = train_worker_pids()
    assert len(pids) == 2, pids
    later = sorted(d for d in os.listdir(ckpt_root) if d.startswith("epoch_"))
    epoch0 = wait_for_state(ckpt_root / "epoch_0000")
    killed_at = time.monotonic()
    os.kill(pids[-1], signal.SIGKILL)
    thread.join(timeout=600)
    assert not thread.is_alive(), "training did not finish after the worker was killed"
    fault = {"killed_pid": pids[-1], "checkpoints_at_kill": later, "finished_after_s": round(time.monotonic() - killed_at, 1),
             "epoch0_loss": epoch0["history"][0]["loss"]}
    return result, fault


def wait_for_state(folder, timeout_s: float = 60.0) -> dict:
    """The `train_state.pt` of a checkpoint folder, once Ray Train has finished writing it."""
    from distillery.training.loop import load_state

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return load_state(str(folder))
        except (FileNotFoundError, RuntimeError, EOFError):
            assert time.monotonic() < deadline, f"no readable train_state.pt in {folder}"
            time.sleep(0.05)


@pytest.mark.parametrize("stream", [False, True], ids=["in-memory", "streamed"])
def test_worker_killed_mid_epoch_resumes_and_matches_an_undisturbed_run(local_ray, tiny_factories, tmp_path, stream):
    make_tiny_run, save_tiny_bert = tiny_factories
    bert = save_tiny_bert(tmp_path / "teacher", num_layers=2, hidden=32)
    runs = {}
    for name in ("undisturbed", "killed"):
        runs[name] = make_tiny_run(tmp_path / name, rows_train=1200, rows_unlabeled=800, rows_test=20)

    baseline = run(_cfg(runs["undisturbed"], bert, stream))
    ckpt_root = runs["killed"] / "checkpoints" / "student"
    result, fault = kill_worker_mid_epoch(_cfg(runs["killed"], bert, stream), ckpt_root)
    assert "error" not in result, repr(result.get("error"))
    print(f"\nworker kill: {fault}")
    assert fault["checkpoints_at_kill"] == ["epoch_0000"]  # the kill landed inside epoch 1

    hist, base = result["summary"]["history"], baseline["history"]
    assert [h["epoch"] for h in hist] == list(range(EPOCHS))
    assert sorted(d for d in os.listdir(ckpt_root) if d.startswith("epoch_")) == [f"epoch_{e:04d}" for e in range(EPOCHS)]
    assert hist[0]["loss"] == fault["epoch0_loss"]  # epoch 0 restored from its checkpoint, not retrained
    # same seeds and rows as the undisturbed run: the same loss in memory; streamed, equal here too
    # (preserve_order), but Ray Data does not promise the same shards in two runs
    assert hist[0]["loss"] == (pytest.approx(base[0]["loss"], abs=0.02) if stream else base[0]["loss"])
    # epochs 1-2 were retrained after the restart from the epoch-0 checkpoint: same seeds, same data,
    # restored optimizer and scheduler, so the end point matches the undisturbed run closely
    for key in ("val_loss", "val_auc"):
        print(f"{key}: undisturbed {base[-1][key]:.5f}, killed+resumed {hist[-1][key]:.5f}")
        assert hist[-1][key] == pytest.approx(base[-1][key], abs=0.02), key
    assert (runs["killed"] / "student" / "config.json").exists()
