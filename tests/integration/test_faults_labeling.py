"""Labeling under faults: a flaky teacher batch, a poison batch, a worker node removed mid-run, and the
driver killed mid-run then re-run. Every test checks the one invariant that matters: the ids that come
out (labels + rejects) are exactly the ids that went in, none lost, none twice.

The teacher here is `ScriptedTeacher`, plugged in through the documented `kind: python` extension
point of `distillery.teachers` (no mock: the real labeling job, Ray Data and actors run it). It scores
deterministically from a hash of the text and fails on purpose on rows whose text holds a marker.

The multi-node tests use `ray.cluster_utils.Cluster` (a CPU head for read tasks and two worker nodes
that each advertise one `teacher_slot`, so teacher actors live on workers only). Every node binds
127.0.0.1 and ports from 29000-29999; session files live in the test's own temp dir.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distillery.data.synthetic import SyntheticConfig, generate, write_splits

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TEACHER = "tests.integration.test_faults_labeling:ScriptedTeacher"
# Ray workers import this module for ScriptedTeacher, without tests/integration on sys.path: `helpers`
# is imported inside the fixture and the tests that use it, never at the top.
PORT_RANGE = (29000, 29999)
# The multi-node scenarios take about a minute each on a 2-core machine: `make soak` runs them.
SOAK_ONLY = pytest.mark.skipif(not os.environ.get("DISTILLERY_SOAK"), reason="long fault scenario: run `make soak`")


class ScriptedTeacher:
    """A deterministic teacher that fails on purpose (test-only; `kind: python`).

    p(text) = (crc32(text) mod 1000 + 0.5) / 1000. A batch holding a text with `poison` in it always
    raises; a batch holding `flaky` raises on its first `flaky_failures` calls in this actor. Every
    call leaves a file `<node>-<pid>-<outcome>-<n>` in `call_log` (to count attempts across actors and
    to see which node labels), and sleeps `delay_s` (so a fault can land mid-run).
    """

    teacher_id = "scripted-v1"

    def __init__(self, call_log: str, poison: str = "POISON-PILL", flaky: str = "FLAKY-ROW",
                 flaky_failures: int = 1, delay_s: float = 0.0):
        import ray

        self.call_log, self.poison, self.flaky = call_log, poison, flaky
        self.flaky_failures, self.delay_s = flaky_failures, delay_s
        self.flaky_calls = 0
        self.node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"
        os.makedirs(call_log, exist_ok=True)

    def _log(self, outcome: str, n: int) -> None:
        name = f"{self.node}-{os.getpid()}-{outcome}-{n}-{uuid.uuid4().hex[:8]}"
        Path(self.call_log, name).touch()

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        time.sleep(self.delay_s)
        if any(self.poison in t for t in texts):
            self._log("poison", len(texts))
            raise RuntimeError("poison row in batch")
        if any(self.flaky in t for t in texts) and self.flaky_calls < self.flaky_failures:
            self.flaky_calls += 1
            self._log("flaky", len(texts))
            raise ConnectionError("teacher backend hiccup")
        self._log("ok", len(texts))
        return np.array([(zlib.crc32(t.encode()) % 1000 + 0.5) / 1000 for t in texts], dtype=np.float64)


def calls(call_log: Path, outcome: str | None = None) -> list[str]:
    names = os.listdir(call_log) if call_log.exists() else []
    return [n for n in names if outcome is None or f"-{outcome}-" in n]


def label_config(run_dir: Path, call_log: Path, **over):
    from distillery.labeling import LabelConfig

    actors = {"pool_min": 1, "pool_max": 1, "num_cpus": 0.5, "batch_size": 16, "max_tasks_in_flight": 1,
              "batch_retries": 2, **over.pop("actors", {})}
    teacher_kwargs = {"call_log": str(call_log), **over.pop("teacher", {})}
    return LabelConfig.model_validate({
        "run_dir": str(run_dir), "format": "parquet",
        "teacher": {"kind": "python", "target": TEACHER, "kwargs": teacher_kwargs},
        "filters": {"required_fields": ["query", "ad_title"]},
        "actors": actors, "files_per_round": 2, **over,
    })


def input_ids(run_dir: Path) -> list[str]:
    return [i for split in ("train", "unlabeled")
            for i in pq.read_table(run_dir / "data" / split, columns=["id"])["id"].to_pylist()]


def output_ids(run_dir: Path) -> tuple[list[str], dict[str, str]]:
    """(labelled ids, {rejected id: reason}) as committed under labels/."""
    labels = pq.read_table(run_dir / "labels", columns=["id"])["id"].to_pylist()
    rej_dir = run_dir / "labels" / "_rejects"
    rejects = pq.read_table(rej_dir) if rej_dir.exists() else pa.table({"id": [], "reason": []})
    return labels, dict(zip(rejects["id"].to_pylist(), rejects["reason"].to_pylist()))


def assert_exactly_once(run_dir: Path) -> tuple[list[str], dict[str, str]]:
    labels, rejects = output_ids(run_dir)
    out = labels + list(rejects)
    assert len(set(labels)) == len(labels), "an id labelled twice"
    assert sorted(out) == sorted(input_ids(run_dir)), (
        f"lost {len(set(input_ids(run_dir)) - set(out))}, extra {len(out) - len(set(out))}")
    return labels, rejects


def write_data(run_dir: Path, seed: int, rows_train: int, rows_unlabeled: int, files: int,
               markers: dict[int, str] | None = None) -> None:
    """Synthetic splits; `markers` {row index in unlabeled: text} plants a marker in that row's query."""
    cfg = SyntheticConfig(seed=seed, rows_train=rows_train, rows_unlabeled=rows_unlabeled, rows_test=10,
                          files_per_split=files)
    write_splits(cfg, str(run_dir / "data"))
    if markers:
        table = generate(cfg, "unlabeled")
        rows = table.to_pylist()
        for i, text in markers.items():
            rows[i]["query"] = f"{rows[i]['query']} {text}"
        shutil.rmtree(run_dir / "data" / "unlabeled")
        (run_dir / "data" / "unlabeled").mkdir()
        pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), run_dir / "data" / "unlabeled" / "part-0.parquet")


# ------------------------------------------------------------------ a flaky batch and a poison batch


def test_flaky_batch_is_retried_and_poison_batch_goes_to_rejects(local_ray, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))  # the driver imports the teacher's module too (config check)
    from distillery.labeling import run

    write_data(tmp_path, seed=3, rows_train=96, rows_unlabeled=160, files=2,
               markers={10: "FLAKY-ROW", 100: "POISON-PILL"})
    ids = pq.read_table(tmp_path / "data" / "unlabeled", columns=["id"])["id"].to_pylist()
    flaky_id, poison_id = ids[10], ids[100]
    log_dir = tmp_path / "calls"

    manifest = run(label_config(tmp_path, log_dir))

    labels, rejects = assert_exactly_once(tmp_path)
    # the flaky batch failed once, was retried in the same actor and labelled
    assert len(calls(log_dir, "flaky")) == 1 and flaky_id in labels and flaky_id not in rejects
    # the poison batch was tried 1 + batch_retries times, then its rows went to rejects with the error
    assert len(calls(log_dir, "poison")) == 3
    assert poison_id in rejects
    assert "teacher failed on this batch: RuntimeError: poison row in batch" in rejects[poison_id]
    poisoned = {i for i, r in rejects.items() if "poison row" in r}
    assert 1 <= len(poisoned) <= 16  # one batch (batch_size 16) at most, nothing beyond it
    assert manifest["rows_rejected"] == len(rejects) == len(poisoned)
    assert manifest["rows_in"] == 96 + 160 and manifest["complete"]


def test_python_teacher_errors_name_the_field(tmp_path):
    from distillery.config import ConfigError
    from distillery.teachers import build_teacher, parse_teacher_config

    with pytest.raises(ConfigError, match="teacher.target: cannot import 'no_such_module:X'"):
        build_teacher({"kind": "python", "target": "no_such_module:X"})
    with pytest.raises(ConfigError, match="teacher.target"):
        parse_teacher_config({"kind": "python", "target": "not a path"})
    with pytest.raises(ConfigError, match="Teacher protocol"):
        build_teacher({"kind": "python", "target": "collections:OrderedDict"})


# ------------------------------------------------------------------ multi-node: node loss, driver loss


@pytest.fixture()
def cluster(monkeypatch):
    """Head (4 CPUs, reads) + two workers (2 CPUs, 1 `teacher_slot` each). Yields (cluster, temp_dir)."""
    from helpers import local_cluster

    monkeypatch.chdir(REPO)  # workers get the driver's cwd on sys.path: the teacher's module imports
    monkeypatch.syspath_prepend(str(REPO))
    with local_cluster(monkeypatch, PORT_RANGE, "rfl", head={"num_cpus": 4, "num_gpus": 0},
                       workers=[{"num_cpus": 2, "resources": {"teacher_slot": 1}}] * 2,
                       object_store_mb=120) as (c, _, temp_dir):
        yield c, temp_dir


@pytest.mark.slow
@pytest.mark.soak
@SOAK_ONLY
def test_worker_node_removed_mid_run_loses_and_duplicates_nothing(cluster, tmp_path):
    from distillery.labeling import run
    from helpers import wait_for

    c, _ = cluster
    write_data(tmp_path, seed=7, rows_train=240, rows_unlabeled=480, files=6)
    log_dir = tmp_path / "calls"
    cfg = label_config(tmp_path, log_dir, files_per_round=12, teacher={"delay_s": 0.15},
                       actors={"pool_min": 2, "pool_max": 2, "resources": {"teacher_slot": 0.5}})
    result: dict = {}

    def job():
        try:
            result["manifest"] = run(cfg)
        except BaseException as err:  # noqa: BLE001 — reported by the assertion below
            result["error"] = err

    thread = threading.Thread(target=job, daemon=True)
    thread.start()
    first = wait_for(lambda: calls(log_dir, "ok"), 120, "the first labelled batch")
    victim_id = first[0].split("-")[0]
    victim = next(n for n in c.list_all_nodes() if n.node_id == victim_id)
    assert victim is not c.head_node
    removed_at = time.monotonic()
    c.remove_node(victim, allow_graceful=False)  # a crash: raylet and workers killed, objects lost
    thread.join(timeout=300)
    assert not thread.is_alive(), "labeling did not finish after the node was removed"
    assert "error" not in result, repr(result.get("error"))
    print(f"node {victim_id[:8]} removed; job finished {time.monotonic() - removed_at:.1f}s later")

    labels, rejects = assert_exactly_once(tmp_path)
    assert not rejects and len(labels) == 720
    nodes_labelling = {n.split("-")[0] for n in calls(log_dir, "ok")}
    assert victim_id in nodes_labelling and len(nodes_labelling) >= 2  # both workers took part
    assert result["manifest"]["rows_in"] == 720


DRIVER = """
import sys, json
import ray, ray._private.ray_constants as rc
rc.ENABLE_RAY_CLUSTER = False
from distillery.labeling import LabelConfig, run
ray.init(address=sys.argv[1], log_to_driver=False)
run(LabelConfig.model_validate(json.loads(sys.argv[2])))
"""


@pytest.mark.slow
@pytest.mark.soak
@SOAK_ONLY
def test_driver_killed_mid_run_resumes_without_relabelling_finished_files(cluster, tmp_path):
    from distillery.labeling import label_file_key, run
    from helpers import wait_for

    c, temp_dir = cluster
    write_data(tmp_path, seed=9, rows_train=160, rows_unlabeled=320, files=4)  # 8 files, 2 per round
    log_dir = tmp_path / "calls"
    cfg = label_config(tmp_path, log_dir, teacher={"delay_s": 0.1},
                       actors={"pool_min": 1, "pool_max": 1, "resources": {"teacher_slot": 0.5}})
    done_dir = tmp_path / "labels" / "_done"
    env = {**os.environ, "RAY_TMPDIR": temp_dir, "PYTHONPATH": str(REPO)}
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, c.address, cfg.model_dump_json()], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: done_dir.exists() and len(os.listdir(done_dir)) >= 2, 180, "the first committed round")
        os.kill(driver.pid, signal.SIGKILL)  # the driver alone: the cluster lives on
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    before = {p.name: json.loads(p.read_text()) for p in done_dir.iterdir()}
    assert 2 <= len(before) < 8, f"kill came too late to test resume: {len(before)} files done"
    calls_before = len(calls(log_dir))

    manifest = run(cfg)

    after = {p.name: json.loads(p.read_text()) for p in done_dir.iterdir()}
    assert len(after) == 8
    for name, marker in before.items():  # finished files were not relabelled
        assert after[name]["committed_at"] == marker["committed_at"], name
    assert_exactly_once(tmp_path)
    rows_done_before = sum(m["rows_in"] for m in before.values())
    assert manifest["timings"]["rows_this_run"] == 480 - rows_done_before
    files = sorted(str(p) for split in ("train", "unlabeled") for p in (tmp_path / "data" / split).glob("*.parquet"))
    assert {f"{label_file_key(f, str(tmp_path))}.json" for f in files} == set(after)
    assert not (tmp_path / "labels" / "_staging").exists()  # the killed round's staging was cleared
    print(f"killed after {len(before)}/8 files committed ({calls_before} teacher calls); "
          f"re-run labelled {manifest['timings']['rows_this_run']} rows")
