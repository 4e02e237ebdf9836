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

__all__ = ["RaySection", "ensure_ray"]

log = logging.getLogger(__name__)


class RaySection(Section):
    address: str | None = Field(None, description="Ray address to join (`auto`: the cluster running on this machine); None joins RAY_ADDRESS if set (as under `ray job submit`), else starts an embedded Ray")
    num_cpus: float | None = Field(None, ge=1, description="logical CPUs for an embedded Ray (may exceed cores); ignored when joining a cluster")
    num_gpus: float | None = Field(None, ge=0, description="logical GPUs for an embedded Ray")
    object_store_mb: int | None = Field(None, ge=64, description="object store size for an embedded Ray, MB")
    include_dashboard: bool = Field(False, description="start the dashboard with an embedded Ray (bound to 127.0.0.1)")
    log_to_driver: bool = Field(True, description="stream worker logs to the driver")


def ensure_ray(cfg: RaySection | None = None) -> bool:
    """Make sure this process is connected to Ray; returns True if it started an embedded Ray.

    Inside `ray job submit` (RAY_ADDRESS set) or with `address` given, it joins that cluster.
    Otherwise it starts a local Ray with the configured logical resources.
    """
    import ray

    cfg = cfg or RaySection()
    if ray.is_initialized():
        return False
    runtime_env = {"env_vars": {"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
                                "TOKENIZERS_PARALLELISM": "false"}}
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=cfg.log_to_driver)
        log.info("joined Ray cluster at %s", address)
        return False
    kwargs = {}
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
