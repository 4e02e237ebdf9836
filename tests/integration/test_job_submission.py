"""Ray job submission for real: a token-auth head on 127.0.0.1, the labeling and training jobs sent with
`ray job submit --working-dir .` exactly as the README says, their outputs checked; a submission
without the token, or with a wrong one, is refused.

    RAY_AUTH_MODE=token RAY_AUTH_TOKEN=... ray start --head --node-ip-address 127.0.0.1 ...
    RAY_AUTH_MODE=token RAY_AUTH_TOKEN=... ray job submit --address http://127.0.0.1:PORT \\
        --working-dir . -- python -m jobs.label --config jobs/configs/label.yaml run_dir=...

The head runs as `ray start --block` in its own process group, so teardown ends exactly the
processes this test started (never `ray stop`, which would stop every Ray on the machine).
Ports come from 28000-28999; every address is 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from helpers import REPO, free_port_block, kill_processes_naming, processes_naming

pytestmark = [pytest.mark.integration, pytest.mark.slow]

VENV_BIN = Path(sys.executable).parent
RAY = str(VENV_BIN / "ray")
PORT_RANGE = (28000, 28999)
NAMED_PORTS = ("port", "dashboard-port", "ray-client-server-port", "dashboard-agent-listen-port",
               "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port",
               "node-manager-port", "object-manager-port")
WORKER_PORTS = 48
JOB_TIMEOUT_S = 420


@dataclass
class TokenHead:
    dashboard: str                     # http://127.0.0.1:PORT — the Jobs API
    token: str
    proc: subprocess.Popen
    temp_dir: str
    log_path: Path
    submitted: list[str] = field(default_factory=list)

    def env(self, token: str | None = "own", home: str | None = None) -> dict[str, str]:
        """A client environment: with this head's token, a given wrong token, or none at all."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", HF_HUB_OFFLINE="1",
                   TOKENIZERS_PARALLELISM="false")
        if token is not None:
            env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token if token == "own" else token)
        if home is not None:
            env["HOME"] = home  # no ~/.ray/auth_token to fall back on
        return env

    def ray_cli(self, *args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([RAY, *args], cwd=REPO, env=env or self.env(), capture_output=True,
                              text=True, timeout=timeout)

    def http_get(self, path: str, token: str | None) -> tuple[int, bytes]:
        """(status, body) of a GET on the dashboard, with `token` as the bearer token if given."""
        request = urllib.request.Request(self.dashboard + path)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()


def _start_head(log_path: Path) -> TokenHead:
    token = secrets.token_hex(32)
    base = free_port_block(len(NAMED_PORTS) + WORKER_PORTS, PORT_RANGE)
    ports = {name: base + i for i, name in enumerate(NAMED_PORTS)}
    worker_lo = base + len(NAMED_PORTS)
    temp_dir = tempfile.mkdtemp(prefix="rjs", dir="/tmp")  # short: Ray's unix sockets live under it
    head = TokenHead(f"http://127.0.0.1:{ports['dashboard-port']}", token, None, temp_dir, log_path)  # type: ignore[arg-type]
    cmd = [RAY, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--num-cpus", "4",
           "--num-gpus", "0", "--object-store-memory", str(256 * 1024**2), "--include-dashboard", "true",
           "--dashboard-host", "127.0.0.1", "--temp-dir", temp_dir, "--disable-usage-stats",
           "--min-worker-port", str(worker_lo), "--max-worker-port", str(worker_lo + WORKER_PORTS - 1)]
    for name, port in ports.items():
        cmd += [f"--{name}", str(port)]
    env = head.env()
    # Ray rewrites a loopback --node-ip-address to the machine's own address so other nodes can
    # join; this one-node head stays on 127.0.0.1 (drivers and workers included) with the switch Ray
    # uses for single-node platforms.
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    head.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT,
                                 start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if head.proc.poll() is not None:
            _stop_head(head)
            raise RuntimeError(f"ray start exited {head.proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if head.http_get("/api/jobs/", token)[0] == 200:
                return head
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1)
    _stop_head(head)
    raise RuntimeError(f"Jobs API not up after 120 s:\n{log_path.read_text()[-3000:]}")


def _stop_head(head: TokenHead) -> None:
    """End the head's process group, then any straggler whose command line names our temp dir."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(head.proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            head.proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    kill_processes_naming(head.temp_dir)
    shutil.rmtree(head.temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def token_head(tmp_path_factory):
    head = _start_head(tmp_path_factory.mktemp("ray_head") / "ray_start.log")
    try:
        yield head
    finally:
        _stop_head(head)
        assert not processes_naming(head.temp_dir), "Ray processes outlived teardown"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A tiny run: a few hundred synthetic log rows in the run-directory layout."""
    from distillery.data.synthetic import SyntheticConfig, write_splits

    root = tmp_path_factory.mktemp("cluster_run")
    write_splits(SyntheticConfig(seed=7, rows_train=240, rows_unlabeled=240, rows_test=120, files_per_split=2),
                 str(root / "data"))
    return root


def _submit(head: TokenHead, job: str, overrides: list[str]) -> str:
    """`ray job submit --working-dir .` of `python -m jobs.<job>`; returns the submission id once done."""
    module, config = REPO / "jobs" / f"{job}.py", REPO / "jobs" / "configs" / f"{job}.yaml"
    if not module.exists() or not config.exists():
        pytest.skip(f"jobs/{job}.py or its config is not written yet")
    sid = f"distillery-{job}-{secrets.token_hex(4)}"
    entrypoint = ["python", "-m", f"jobs.{job}", "--config", f"jobs/configs/{job}.yaml", *overrides]
    done = head.ray_cli("job", "submit", "--address", head.dashboard, "--working-dir", ".",
                        "--submission-id", sid, "--", *entrypoint, timeout=JOB_TIMEOUT_S)
    head.submitted.append(sid)
    code, body = head.http_get(f"/api/jobs/{sid}", head.token)
    status = json.loads(body).get("status") if code == 200 else f"HTTP {code}"
    if status != "SUCCEEDED":
        logs = head.ray_cli("job", "logs", "--address", head.dashboard, sid)
        pytest.fail(f"job {sid}: {status} (submit rc={done.returncode})\n--- submit output ---\n"
                    f"{(done.stdout + done.stderr)[-3000:]}\n--- job logs ---\n{logs.stdout[-4000:]}")
    assert done.returncode == 0, "the job succeeded but `ray job submit` exited non-zero"
    return sid


def test_jobs_api_refuses_requests_without_the_token(token_head):
    assert token_head.http_get("/api/jobs/", token_head.token)[0] == 200
    assert token_head.http_get("/api/jobs/", None)[0] == 401
    assert token_head.http_get("/api/jobs/", "not-the-token")[0] in (401, 403)


@pytest.mark.parametrize("token", [None, "wrong-token-" + "0" * 20], ids=["no-token", "wrong-token"])
def test_submission_without_the_right_token_is_refused(token_head, token, tmp_path):
    before = _job_ids(token_head)
    refused = token_head.ray_cli(
        "job", "submit", "--address", token_head.dashboard, "--working-dir", ".", "--",
        "python", "-c", "print('should never run')", env=token_head.env(token=token, home=str(tmp_path)))
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0, output
    assert "AuthenticationError" in output or "Unauthorized" in output or "401" in output, output[-2000:]
    assert _job_ids(token_head) == before, "a refused submission still created a job"


def _job_ids(head: TokenHead) -> set[str]:
    status, body = head.http_get("/api/jobs/", head.token)
    assert status == 200, body[-2000:]
    return {j.get("submission_id") or j.get("job_id") for j in json.loads(body)}


@pytest.fixture(scope="module")
def labeled_run(token_head, run_dir, tiny_bert) -> Path:
    """The labeling job, submitted once: teacher actors on the cluster label train + unlabeled."""
    _submit(token_head, "label", [f"run_dir={run_dir}", f"teacher.model={tiny_bert}", "teacher.num_threads=1",
                                  "actors.batch_size=64", "files_per_round=4"])
    return run_dir


def test_label_job_labels_every_row_exactly_once(labeled_run):
    manifest = json.loads((labeled_run / "labels" / "_MANIFEST.json").read_text())
    inputs = pq.read_table(labeled_run / "data" / "train", columns=["id"])["id"].to_pylist() \
        + pq.read_table(labeled_run / "data" / "unlabeled", columns=["id"])["id"].to_pylist()
    labels = pq.read_table(labeled_run / "labels")
    assert manifest["complete"] and manifest["rows_in"] == len(inputs) == 480
    assert sorted(labels["id"].to_pylist()) == sorted(inputs)
    assert {"id", "teacher_prob", "confidence", "kept", "reason", "teacher_id"} <= set(labels.column_names)
    probs = labels["teacher_prob"].to_numpy()
    assert ((probs > 0) & (probs < 1)).all()


def test_train_job_distills_a_student_from_those_labels(token_head, labeled_run, tiny_bert):
    # Training: Ray Train workers on the cluster fit a one-layer student to the teacher's labels.
    _submit(token_head, "train", _train_overrides(labeled_run, tiny_bert))
    student = labeled_run / "student"
    assert (student / "config.json").exists(), sorted(p.name for p in labeled_run.iterdir())
    assert json.loads((student / "config.json").read_text())["num_hidden_layers"] == 1
    assert any(student.glob("*.safetensors")) or any(student.glob("*.bin"))
    assert (student / "tokenizer.json").exists() or (student / "tokenizer_config.json").exists()
    summary = json.loads((student / "training_summary.json").read_text())
    assert summary["best"]["epoch"] == 0
    assert (labeled_run / "checkpoints" / "student" / "epoch_0000").is_dir()


def _train_overrides(run_dir: Path, tiny_bert: Path) -> list[str]:
    """A tiny distillation: one layer of the tiny random teacher, one epoch, two DDP workers."""
    return [f"run_dir={run_dir}", f"init.source={tiny_bert}", "init.layers=[1]", "loop.epochs=1",
            "loop.batch_size=16", "loop.max_length=48", "loop.torch_threads=1", "scaling.num_workers=2",
            "scaling.cpus_per_worker=0.5"]
