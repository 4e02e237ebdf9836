"""The serving config: the Serve YAML, the app's typed args, and what a replica may load.

    config = load_serve_config()                      # the shipped serve/serve_config.yaml, from any cwd
    config = load_serve_config("my_serve.yaml")       # ConfigError naming the file when unusable
    args = validate_config(AppArgs, app_args(config), "my_serve.yaml")
    options = deployment_options(config)              # the CTRServer `deployments:` entry

`serve/serve_config.yaml` is the one place serving defaults are set: `serve run` / `serve deploy`
read it, `distillery serve` and the pipeline start from it, and the deployment's own decorator
defaults (`deployment.py`) are read from it here (`SHIPPED_CONFIG` is that file, packaged beside
this module). Ray-free: `app.py` (the builder) and `deployment.py` (the replica) both import it,
and neither imports the other's module at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, model_validator

from distillery.config import ConfigError, Section
from distillery.serving.limits import LimitsSection
from distillery.serving.metrics_health import HealthSection

__all__ = ["AppArgs", "ModelSection", "BatchSection", "BidderSection", "DEPLOYMENT_NAME", "SHIPPED_CONFIG",
           "load_serve_config", "app_args", "deployment_options", "decorator_options", "resolve_model_dir",
           "auth_required", "missing_token_message"]

DEPLOYMENT_NAME = "CTRServer"
# serve/serve_config.yaml, through a link in the package (a plain copy in a built wheel), so the
# library finds it whatever the cwd: a replica, `distillery pipeline`, a bench, a test.
SHIPPED_CONFIG = Path(__file__).with_name("serve_config.yaml")
# Set per deploy, never as decorator defaults: Serve lays a config's `deployments:` entry over the
# decorator, and a default autoscaling_config would clash with a config that pins num_replicas.
_PER_DEPLOY = ("name", "num_replicas", "autoscaling_config", "user_config")


class ModelSection(Section):
    """Which model a replica serves; also the `user_config` schema (change it to hot-swap)."""

    model_dir: str = Field(..., min_length=1, description="ONNX folder (model_card.json + variants); relative to model_root")
    variant: Literal["int8", "int8_static", "fp16", "fp32"] | None = Field(
        None, description="model file variant; None: int8 on cpu, fp16 on cuda")


class BatchSection(Section):
    max_batch_rows: int = Field(64, ge=1, le=4096, description="most texts scored in one ONNX Runtime call")
    two_tower_batch_rows: int = Field(
        1024, ge=1, le=100_000, description="the same for a two-tower student: a row costs its head (microseconds) "
                                            "and its tower runs once per distinct request, so a bid's candidates stay one call")
    batch_wait_timeout_ms: float = Field(
        0.5, ge=0, le=1000, description="how long the scoring thread waits for more requests after the first, ms")


class BidderSection(Section):
    catalog: str | None = Field(None, description="catalog YAML (distillery.serving.catalog schema); None: the demo catalog")
    network_margin_ms: float = Field(15.0, ge=0, description="part of tmax kept for the network and the exchange, ms")
    default_tmax_ms: float = Field(100.0, gt=0, description="deadline when a request has no tmax, ms")
    max_candidates: int = Field(512, ge=1, le=100_000, description="most (impression, creative) rows scored for one "
                                "request; planning stops there and later impressions get no bid")
    max_impressions: int = Field(64, ge=1, le=10_000, description="most impressions in one bid request (413 above), "
                                 "checked before any planning")


class AppArgs(Section):
    """Arguments of `build_app`: what to serve and how. Resources and replicas live in the Serve YAML."""

    model_root: str = Field("runs", description="folder every served model must be inside; relative to the builder's cwd")
    model: ModelSection = Field(..., description="the model served at start")
    provider: Literal["cpu", "cuda"] = Field("cpu", description="ONNX Runtime execution provider; cuda refuses to fall back")
    intra_op_threads: int | None = Field(1, ge=1, description="ORT threads per replica (None: one per core)")
    batch: BatchSection = Field(default_factory=BatchSection, description="dynamic batching on the scoring thread")
    limits: LimitsSection = Field(default_factory=LimitsSection, description="request size and shape limits")
    bidder: BidderSection = Field(default_factory=BidderSection, description="OpenRTB bidder settings")
    health: HealthSection = Field(default_factory=HealthSection,
                                  description="when check_health fails: model faults in a row, a hung scoring call")
    auth_token_env: str | None = Field("DISTILLERY_SERVE_TOKEN",
                                       description="env var holding the bearer token (surrounding whitespace ignored)")
    auth: Literal["auto", "required", "disabled"] = Field(
        "auto", description="auto: a token is required unless the Serve proxy listens on loopback only "
        "(127.0.0.1, ::1, localhost); required: always; disabled: serve without a token even when exposed. "
        "A replica that needs a token and has none refuses to start")

    @model_validator(mode="after")
    def _root_absolute(self) -> "AppArgs":
        # Replicas may run with another cwd: fix the root where the app is built.
        self.model_root = str(Path(self.model_root).expanduser().resolve())
        resolve_model_dir(self.model_root, self.model.model_dir)  # fail at build time, naming the field
        return self

    def variant(self, model: ModelSection) -> str:
        """The variant to serve: `model.variant`, else the provider's preferred one (fp16 on CUDA,
        int8 on CPU) where the folder has it, else the card's `default_variant` (the best that passed
        the gate when the preferred one was rejected)."""
        if model.variant:
            return model.variant
        preferred = "fp16" if self.provider == "cuda" else "int8"
        from distillery.onnx_model.card import ModelCard, ModelCardError

        try:
            card = ModelCard.read(resolve_model_dir(self.model_root, model.model_dir))
        except (FileNotFoundError, ModelCardError):
            return preferred  # the load names the problem
        return preferred if preferred in card.variants or not card.default_variant else card.default_variant


def load_serve_config(path: str | Path | None = None) -> dict[str, Any]:
    """A Serve config file as a dict, the shipped `serve/serve_config.yaml` when `path` is None.
    A fresh dict on every call: callers patch it for their run."""
    path = path or SHIPPED_CONFIG
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read Serve config ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def app_args(config: dict[str, Any]) -> dict[str, Any]:
    """The first application's `args:` (AppArgs, unvalidated) of a Serve config dict."""
    return dict(((config.get("applications") or [{}])[0]).get("args") or {})


def deployment_options(config: dict[str, Any]) -> dict[str, Any]:
    """The `deployments:` overrides for CTRServer in a Serve config dict (first application)."""
    apps = config.get("applications") or [{}]
    for entry in apps[0].get("deployments") or []:
        if entry.get("name") == DEPLOYMENT_NAME:
            return {k: v for k, v in entry.items() if k != "name"}
    return {}


def decorator_options(config: dict[str, Any]) -> dict[str, Any]:
    """CTRServer's `@serve.deployment` defaults: the config's deployment options less the per-deploy ones."""
    return {k: v for k, v in deployment_options(config).items() if k not in _PER_DEPLOY}


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def auth_required(policy: str, proxy_host: str | None) -> bool:
    """Whether a bearer token must be configured: `policy` is AppArgs.auth, `proxy_host` the address
    Serve's HTTP proxy binds (None: unknown, which counts as exposed). Fails closed. On the fast
    path HAProxy and every replica's direct-ingress port bind that same address (http_options.host),
    and the token is checked in the replica, so a replica's own port is guarded like the front door."""
    if policy == "disabled":
        return False
    return policy == "required" or proxy_host not in LOOPBACK


def missing_token_message(env: str | None, proxy_host: str | None) -> str:
    where = f"the Serve proxy listens on {proxy_host}" if proxy_host else "the Serve proxy address is unknown"
    return (f"auth_token_env: {env or '(none)'} is unset or empty and {where}: set the bearer token in that env "
            "var, or set `auth: disabled` in the app args to serve without one on purpose")


def resolve_model_dir(model_root: str, model_dir: str) -> str:
    """Absolute path of `model_dir` (relative to `model_root`), refusing anything outside the root
    (`..`, absolute paths elsewhere, symlinks out)."""
    root = Path(model_root).resolve()
    path = Path(model_dir).expanduser()
    path = (path if path.is_absolute() else root / path).resolve()
    if path != root and root not in path.parents:
        raise ConfigError(f"model.model_dir {model_dir!r}: resolves to {path}, outside model_root {root}")
    return str(path)
