"""The Ray Serve application: typed args, the app builder, and `distillery serve`.

    serve run serve/serve_config.yaml                 # local, from the repo root
    serve deploy serve/serve_config.yaml              # a running cluster (KubeRay's RayService too)
    distillery serve --model-dir runs/demo/onnx [--host 127.0.0.1] [--port 8000] [--config FILE] [--ingress auto]

All three go through `build_app(args: AppArgs)`; the Serve config's `applications[].args` are
`AppArgs`, its `deployments:` entry for `CTRServer` sets replicas, batching headroom, autoscaling
and resources. Hot model swap: set `user_config: {model_dir: ..., variant: ...}` on that deployment
and `serve deploy` again; replicas load the new folder beside the old one and switch atomically.
Requests reach the replicas through HAProxy and each replica's own HTTP server (direct ingress)
where an HAProxy binary runs, else through Serve's Python proxy (serving.ingress).
"""

import logging
import os
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import Field, model_validator

from distillery.config import ConfigError, Section, validate_config
from distillery.serving.limits import LimitsSection

if TYPE_CHECKING:
    from ray.serve import Application

__all__ = ["AppArgs", "ModelSection", "BatchSection", "BidderSection", "build_app", "bind_app", "cli_main",
           "resolve_model_dir", "DEPLOYMENT_NAME", "deployment_options", "auth_required", "check_model_folder"]

log = logging.getLogger(__name__)
DEPLOYMENT_NAME = "CTRServer"
DEFAULT_CONFIG = "serve/serve_config.yaml"


class ModelSection(Section):
    """Which model a replica serves; also the `user_config` schema (change it to hot-swap)."""

    model_dir: str = Field(..., min_length=1, description="ONNX folder (model_card.json + variants); relative to model_root")
    variant: Literal["int8", "int8_static", "fp16", "fp32"] | None = Field(
        None, description="model file variant; None: int8 on cpu, fp16 on cuda")


class BatchSection(Section):
    max_batch_rows: int = Field(64, ge=1, le=4096, description="most texts scored in one ONNX Runtime call")
    batch_wait_timeout_ms: float = Field(0.5, ge=0, le=1000, description="how long a batch waits to fill, ms")
    score_in_thread: bool = Field(True, description="run ONNX Runtime on a worker thread so the replica keeps "
                                  "answering (and timing out bids) while a batch computes; False runs it inline")


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
    batch: BatchSection = Field(default_factory=BatchSection, description="@serve.batch settings")
    limits: LimitsSection = Field(default_factory=LimitsSection, description="request size and shape limits")
    bidder: BidderSection = Field(default_factory=BidderSection, description="OpenRTB bidder settings")
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
        return model.variant or ("fp16" if self.provider == "cuda" else "int8")


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


def build_app(args: AppArgs) -> "Application":
    """The Serve application for `args`. Serve validates a config's `args:` into `AppArgs` from this
    annotation; a plain dict is validated here too (with a `ConfigError` naming the field)."""
    return bind_app(args, {})


def bind_app(args: "AppArgs | dict[str, Any]", options: dict[str, Any]) -> "Application":
    """`build_app` with deployment options applied (as a Serve config's `deployments:` entry would)."""
    from distillery.serving.deployment import CTRServer

    if not isinstance(args, AppArgs):
        args = validate_config(AppArgs, dict(args), "app args")
    options = {"user_config": args.model.model_dump(), **options}
    return CTRServer.options(**options).bind(args.model_dump())


def deployment_options(config: dict[str, Any]) -> dict[str, Any]:
    """The `deployments:` overrides for CTRServer in a Serve config dict (first application)."""
    apps = config.get("applications") or [{}]
    for entry in apps[0].get("deployments") or []:
        if entry.get("name") == DEPLOYMENT_NAME:
            return {k: v for k, v in entry.items() if k != "name"}
    return {}


def _load_serve_yaml(path: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read Serve config ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def check_model_folder(model_dir: str, variant: str) -> None:
    """Refuse, before Ray starts, a folder that is not an export or lacks `variant` (ConfigError)."""
    import json

    card = Path(model_dir) / "model_card.json"
    make = ("make it with `distillery compress --config jobs/configs/compress.yaml run_dir=<run>` "
            "(or `distillery pipeline --config jobs/configs/demo.yaml`)")
    try:
        variants = json.loads(card.read_text()).get("variants") or {}
    except FileNotFoundError:
        raise ConfigError(f"--model-dir {model_dir}: no model_card.json, not an exported ONNX folder; {make}") from None
    except (OSError, ValueError, AttributeError) as err:
        raise ConfigError(f"--model-dir {model_dir}: model_card.json unreadable ({err})") from None
    if variant not in variants:
        raise ConfigError(f"model.variant: {variant!r} is not in {card} (it has {sorted(variants) or 'none'}); "
                          f"{make}, or pick one it has with `--config` and model.variant")


def cli_main(args) -> int:
    """`distillery serve`: start an embedded Ray + Serve, print the URL, serve until interrupted."""
    from ray import serve

    from distillery.ray_runtime import RaySection, ensure_ray
    from distillery.serving.ingress import controller_options, ingress_env
    from distillery.serving.limits import load_token

    path = args.config or (DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None)
    config = _load_serve_yaml(path) if path else {}
    app_args = dict(((config.get("applications") or [{}])[0]).get("args") or {})
    model_dir = str(Path(args.model_dir).expanduser().resolve())
    if not args.config:  # the operator named the folder: trust its parent as the root
        app_args["model_root"] = str(Path(model_dir).parent)
    app_args["model"] = {**(app_args.get("model") or {}), "model_dir": model_dir}
    app_args = validate_config(AppArgs, app_args, path or "serve args")
    check_model_folder(model_dir, app_args.variant(app_args.model))
    if auth_required(app_args.auth, args.host) and load_token(app_args.auth_token_env) is None:
        raise ConfigError(missing_token_message(app_args.auth_token_env, args.host))
    options = deployment_options(config)
    options.pop("user_config", None)  # --model-dir decides what is served

    try:  # HAProxy + direct ingress where it runs; arrival stamps on either path (serving.ingress)
        env, ingress = ingress_env(getattr(args, "ingress", "auto"))
    except RuntimeError as err:
        raise ConfigError(f"--ingress: {err}") from None
    ensure_ray(RaySection(num_cpus=max(4, os.cpu_count() or 1)))
    serve.start(http_options={"host": args.host, "port": args.port}, controller_options=controller_options(env))
    serve.run(bind_app(app_args, options), name="distillery", route_prefix="/")
    print(f"distillery serving {model_dir} at http://{args.host}:{args.port} via {ingress} "
          f"(/predict, /v2/models/<name>/infer, /openrtb/2.6/bid); Ctrl-C stops", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    serve.shutdown()
    return 0
