"""Connecting to Ray: join a running cluster (`ray job submit`, `RAY_ADDRESS`) or start an embedded one.

Resources live in YAML (`ray:` section of each job config), never in code: on a 2-core machine the
demo configs start Ray with more logical CPUs than cores so fractional actors, read tasks and
reduce tasks do not starve each other.
"""

from __future__ import annotations

import logging
import os

from pydantic import Field

from distillery.config import Section

__all__ = ["RaySection", "ensure_ray", "setup_worker", "quiet_worker_logs", "no_progress_bars", "NODE_ADDRESS_ENV"]

log = logging.getLogger(__name__)


class RaySection(Section):
    address: str | None = Field(None, description="Ray address to join (`auto`: the cluster running on this machine); None joins RAY_ADDRESS if set (as under `ray job submit`), else starts an embedded Ray")
    num_cpus: float | None = Field(None, ge=1, description="logical CPUs for an embedded Ray (may exceed cores); ignored when joining a cluster")
    num_gpus: float | None = Field(None, ge=0, description="logical GPUs for an embedded Ray")
    object_store_mb: int | None = Field(None, ge=64, description="object store size for an embedded Ray, MB")
    node_ip_address: str | None = Field(None, description="address an embedded Ray's processes listen on and advertise; 127.0.0.1 keeps every one of them on loopback (one machine only); None: Ray's choice (this machine's address, gRPC on every interface)")
    include_dashboard: bool = Field(False, description="start the dashboard with an embedded Ray (bound to 127.0.0.1)")
    log_to_driver: bool = Field(True, description="stream worker logs to the driver")
    data_operator_progress: bool = Field(False, description="Ray Data's progress log (every 10 s) lists every operator, not only the total")


# Known noise, quieted at its source in every Ray worker process (errors still surface):
# - Ray Train's detached PlacementGroupCleaner polls the state API, which an embedded Ray without
#   the dashboard does not serve: one identical warning a second for a whole training run (seen:
#   313 lines). Its job, removing a crashed controller's placement group, ends with the driver's
#   embedded cluster anyway, and on a real cluster the dashboard answers and it stays silent.
# - transformers' per-load progress bars in every training worker.
# Ray Train's print patch is switched off in `ensure_ray` (it doubles every line a worker prints).
_QUIET_LOGGERS = {"ray.train.v2._internal.execution.controller.placement_group_cleaner": logging.ERROR}


def quiet_worker_logs() -> None:
    """`worker_process_setup_hook`: runs in each Ray worker before its first task or actor."""
    for name, level in _QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    no_progress_bars()


# Set in every worker of an embedded Ray started with `node_ip_address`: the address its listeners use.
NODE_ADDRESS_ENV = "DISTILLERY_RAY_NODE_ADDRESS"


def setup_worker() -> None:
    """`worker_process_setup_hook`: runs in each Ray worker before its first task or actor."""
    quiet_worker_logs()
    if os.environ.get(NODE_ADDRESS_ENV):
        _listen_on_node_address(os.environ[NODE_ADDRESS_ENV])


def _listen_on_node_address(address: str) -> None:
    """Make gRPC servers that Ray's libraries open in this worker on every interface (`[::]:PORT`,
    `0.0.0.0:PORT`) listen on `address` instead. Ray core follows the node address, but Serve's
    replicas open their inter-deployment gRPC server on `[::]:0` whatever it is; they take the
    helper from `ray._common.tls_utils` when their module loads, after this hook."""
    from ray._common import tls_utils

    add_port = tls_utils.add_port_to_grpc_server
    host = f"[{address}]" if ":" in address else address
    if getattr(add_port, "node_address", None) == address:
        return

    def on_node_address(server, bind: str):
        bind_host, _, port = bind.rpartition(":")
        return add_port(server, f"{host}:{port}" if bind_host in ("[::]", "0.0.0.0", "") else bind)

    on_node_address.node_address = address
    tls_utils.add_port_to_grpc_server = on_node_address


def no_progress_bars() -> None:
    """No per-load bars from transformers ("Loading weights ...", a line a model load): the stages
    print their own progress. The driver calls it too; in workers it is part of the setup hook."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # no transformers, no such bars
        pass


def ensure_ray(cfg: RaySection | None = None) -> bool:
    """Make sure this process is connected to Ray; returns True if it started an embedded Ray.

    Inside `ray job submit` (RAY_ADDRESS set) or with `address` given, it joins that cluster.
    Otherwise it starts a local Ray with the configured logical resources.
    """
    import ray

    cfg = cfg or RaySection()
    if ray.is_initialized():
        return False
    no_progress_bars()
    runtime_env = {"env_vars": {"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
                                "TOKENIZERS_PARALLELISM": "false",
                                # Ray Train V2 sends each print to its logger *and*, where stdout is
                                # redirected (always, in a Ray worker), to stdout: every line twice.
                                "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"},
                   "worker_process_setup_hook": "distillery.ray_runtime.setup_worker"}
    _configure_data_progress(cfg)
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=cfg.log_to_driver)
        log.info("joined Ray cluster at %s", address)
        return False
    kwargs = {}
    if cfg.node_ip_address:
        kwargs["_node_ip_address"] = _keep_node_address(cfg.node_ip_address)
        runtime_env["env_vars"][NODE_ADDRESS_ENV] = kwargs["_node_ip_address"]
    if cfg.object_store_mb:
        kwargs["object_store_memory"] = cfg.object_store_mb * 1024 * 1024
    ray.init(
        address="local",  # embedded: never attach by accident to another cluster on this machine
        num_cpus=cfg.num_cpus,
        num_gpus=cfg.num_gpus,
        include_dashboard=cfg.include_dashboard,
        dashboard_host="127.0.0.1",
        runtime_env=runtime_env,
        log_to_driver=cfg.log_to_driver,
        **kwargs,
    )
    log.info("started embedded Ray: %s", ray.cluster_resources())
    return True


def _keep_node_address(address: str) -> str:
    """`address` for `ray.init(_node_ip_address=...)`. A loopback address alone does not keep Ray on
    loopback: Ray swaps it for this machine's address (its processes then listen on every interface)
    unless its "local Ray only" switch is off, in this process and in the processes it starts (they
    read it from the environment)."""
    import ipaddress

    import ray._private.ray_constants as ray_constants

    try:
        loopback = ipaddress.ip_address(address).is_loopback
    except ValueError:
        loopback = address == "localhost"
    if loopback:
        os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
        ray_constants.ENABLE_RAY_CLUSTER = False
        return "127.0.0.1"
    return address


def _configure_data_progress(cfg: RaySection) -> None:
    from ray.data import DataContext

    DataContext.get_current().enable_operator_progress_bars = cfg.data_operator_progress
