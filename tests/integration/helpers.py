"""What the integration tests (and bench/soak.py) share: free ports on 127.0.0.1, a multi-node
`ray.cluster_utils.Cluster` kept on loopback, ending the processes a test started, and a Serve app
under test (the shipped serve/serve_config.yaml patched for a test, deployed, its replicas counted).

Imported as `from helpers import …`: pytest puts this folder on sys.path for the tests here, and
bench/soak.py does the same.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from distillery.serving.config import DEPLOYMENT_NAME, load_serve_config
from distillery.serving.ingress import port_free

REPO = Path(__file__).resolve().parents[2]
APP = "distillery"  # the application name in serve/serve_config.yaml
RAY_ENV_VARS = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def wait_for(predicate, timeout_s: float, what: str, every_s: float = 0.2):
    """Poll `predicate()` every `every_s` seconds until it returns something truthy (returned);
    AssertionError naming `what` after `timeout_s` seconds."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


# ------------------------------------------------------------------------------- ports and processes


def free_port_block(size: int, port_range: tuple[int, int]) -> int:
    """First port of `size` consecutive free ports in `port_range` (random start: parallel runs)."""
    starts = list(range(port_range[0], port_range[1] - size, size))
    random.shuffle(starts)
    for start in starts:
        if all(port_free(p) for p in range(start, start + size)):
            return start
    raise RuntimeError(f"no {size} free ports in {port_range}")


def processes_naming(text: str) -> list[int]:
    """Pids (other than this one) whose command line contains `text`, read from /proc."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            pids.append(int(entry))
    return pids


def kill_processes_naming(text: str, tries: int = 20) -> None:
    """SIGKILL every process whose command line names `text` (a test's own temp dir), until none is
    left or `tries` rounds half a second apart have passed."""
    for _ in range(tries):
        left = processes_naming(text)
        if not left:
            return
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)


# ------------------------------------------------------------------------------- multi-node cluster

NODE_PORTS = ("node_manager_port", "object_manager_port", "metrics_agent_port", "metrics_export_port",
              "dashboard_agent_listen_port", "runtime_env_agent_port")
WORKER_PORTS = 24
PORTS_PER_NODE = len(NODE_PORTS) + 1 + WORKER_PORTS  # + the head's GCS port


def node_args(base: int, object_store_mb: int, **resources) -> dict:
    """`Cluster.add_node` arguments for a node on 127.0.0.1 using ports base .. base + PORTS_PER_NODE - 1."""
    args = {name: base + i for i, name in enumerate(NODE_PORTS)}
    lo = base + len(NODE_PORTS) + 1
    args.update(node_ip_address="127.0.0.1", min_worker_port=lo, max_worker_port=lo + WORKER_PORTS - 1,
                object_store_memory=object_store_mb * 1024**2, **resources)
    return args


@contextmanager
def local_cluster(monkeypatch, port_range: tuple[int, int], prefix: str, head: dict, workers: list[dict],
                  object_store_mb: int) -> Iterator[tuple[object, list, str]]:
    """A head (`head`: add_node resources) and one worker node per dict in `workers`, every node on
    127.0.0.1 with ports from `port_range`, the driver connected. Session files and the "current
    cluster" address file live in a temp dir of this test's own, so no other Ray on the machine can
    join by accident; at exit every process naming that dir is ended. Yields (cluster, worker nodes,
    temp dir)."""
    import ray
    import ray._private.ray_constants as ray_constants
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    temp_dir = tempfile.mkdtemp(prefix=prefix, dir="/tmp")  # short: Ray's unix sockets live under it
    monkeypatch.setenv("RAY_TMPDIR", temp_dir)  # the "current cluster" file goes here, not /tmp/ray
    for name, value in RAY_ENV_VARS.items():
        monkeypatch.setenv(name, value)
    # Ray rewrites 127.0.0.1 to the machine's address when a driver connects; keep it on loopback.
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
    os.makedirs(os.path.join(temp_dir, "ray"))  # Ray's default dir under RAY_TMPDIR
    base = free_port_block((1 + len(workers)) * PORTS_PER_NODE, port_range)
    head_args = node_args(base, object_store_mb, include_dashboard=False, temp_dir=os.path.join(temp_dir, "ray"),
                          **head)
    head_args["gcs_server_port"] = base + len(NODE_PORTS)
    cluster = Cluster(shutdown_at_exit=True)
    try:
        cluster.add_node(**head_args)
        nodes = [cluster.add_node(**node_args(base + (i + 1) * PORTS_PER_NODE, object_store_mb, **worker))
                 for i, worker in enumerate(workers)]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, runtime_env={"env_vars": dict(RAY_ENV_VARS)})
        yield cluster, nodes, temp_dir
    finally:
        ray.shutdown()
        cluster.shutdown()
        kill_processes_naming(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


# ------------------------------------------------------------------------------- a Serve app under test


@contextmanager
def serve_on(port: int, tries: int = 2) -> Iterator[tuple[dict[str, str], str]]:
    """Serve on 127.0.0.1:`port` for a test module, yielding (ingress env, mode): the fast path
    (HAProxy + direct ingress) where an HAProxy binary runs, as shipped; DISTILLERY_TEST_INGRESS=proxy
    runs it through Serve's Python proxy instead. The ingress ports are picked just before Serve
    starts (not at collection, minutes earlier); a start that lost a port to another process is shut
    down and tried again with fresh ones. Serve is shut down on the way out, failed start included,
    so the next module never finds a half-started instance."""
    from ray import serve

    from distillery.serving.ingress import controller_options, ingress_env

    for attempt in range(1, tries + 1):
        env, mode = ingress_env(os.environ.get("DISTILLERY_TEST_INGRESS", "auto"))
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port}, controller_options=controller_options(env))
            break
        except Exception as e:  # noqa: BLE001 - Ray wraps the proxy's bind error in its own types
            serve.shutdown()
            if attempt == tries or "Failed to bind" not in str(e):
                raise
    try:
        yield env, mode
    finally:
        serve.shutdown()


def export_int8(hf_dir: Path, out_dir: Path) -> str:
    """Export a Hugging Face classifier folder to ONNX (max_length 64) and quantize it; its version."""
    from distillery.compress.export import export_onnx
    from distillery.compress.quantize import quantize_int8

    card = export_onnx(str(hf_dir), str(out_dir), max_length=64)
    quantize_int8(str(out_dir))
    return card["version"]


def serve_config_for_test(port: int, model_root: Path, token_env: str, token: str, **http_options) -> dict:
    """The shipped config on 127.0.0.1:`port` (plus `http_options`), serving `model_root/a` (INT8),
    with bearer token `token` passed to the replicas in `token_env`. Tests patch the rest
    (`config["applications"][0]`: args, deployments) for their own scenario."""
    config = load_serve_config()  # serve/serve_config.yaml, a fresh dict
    config["http_options"] = {"host": "127.0.0.1", "port": port, **http_options}
    app = config["applications"][0]
    app["runtime_env"]["env_vars"][token_env] = token
    app["args"].update(model_root=str(model_root), model={"model_dir": "a", "variant": "int8"},
                       auth_token_env=token_env)
    return config


def deploy(config: dict) -> None:
    """Apply a whole Serve config through the controller, as `serve deploy` does."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    _get_global_client().deploy_apps(ServeDeploySchema.model_validate(config))


def running_replicas() -> int:
    """CTRServer replicas Serve reports RUNNING (0 while the app or deployment is absent)."""
    from ray import serve

    app = serve.status().applications.get(APP)
    if app is None or DEPLOYMENT_NAME not in app.deployments:
        return 0
    return app.deployments[DEPLOYMENT_NAME].replica_states.get("RUNNING", 0)


def replica_actors() -> set[str]:
    """Names of the live CTRServer replica actors (GCS directly: no dashboard runs in tests)."""
    import ray

    prefix = f"SERVE_REPLICA::{APP}#{DEPLOYMENT_NAME}#"
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)}


def answers_health(url: str, session=requests) -> bool:
    """Whether GET `url`/healthz answers 200 (anonymous)."""
    try:
        return session.get(f"{url}/healthz", timeout=2).status_code == 200
    except requests.RequestException:
        return False
