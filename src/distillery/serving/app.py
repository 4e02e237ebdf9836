"""The Ray Serve application: the app builder and `distillery serve` (the typed args: serving.config).

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
from typing import TYPE_CHECKING, Any

from distillery.config import ConfigError, validate_config
from distillery.onnx_model.card import ModelCard, ModelCardError
from distillery.serving.config import (AppArgs, app_args, auth_required, deployment_options, load_serve_config,
                                       missing_token_message)

if TYPE_CHECKING:
    from ray.serve import Application

__all__ = ["build_app", "bind_app", "cli_main", "check_model_folder"]

log = logging.getLogger(__name__)


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


def check_model_folder(model_dir: str, variant: str) -> None:
    """Refuse, before Ray starts, a folder that is not an export or lacks `variant` (ConfigError)."""
    card = Path(model_dir) / "model_card.json"
    make = ("make it with `distillery compress --config jobs/configs/compress.yaml run_dir=<run>` "
            "(or `distillery pipeline --config jobs/configs/demo.yaml`)")
    try:
        variants = ModelCard.read(model_dir).variants
    except FileNotFoundError:
        raise ConfigError(f"--model-dir {model_dir}: no model_card.json, not an exported ONNX folder; {make}") from None
    except ModelCardError as err:
        raise ConfigError(f"--model-dir {model_dir}: {err}") from None
    if variant not in variants:
        raise ConfigError(f"model.variant: {variant!r} is not in {card} (it has {sorted(variants) or 'none'}); "
                          f"{make}, or pick one it has with `--config` and model.variant")


def cli_main(args) -> int:
    """`distillery serve`: start an embedded Ray + Serve, print the URL, serve until interrupted."""
    from ray import serve

    from distillery.ray_runtime import RaySection, ensure_ray
    from distillery.serving.ingress import controller_options, ingress_env
    from distillery.serving.limits import load_token

    config = load_serve_config(args.config)  # None: the shipped serve/serve_config.yaml
    raw = app_args(config)
    model_dir = str(Path(args.model_dir).expanduser().resolve())
    if not args.config:  # the operator named the folder: trust its parent as the root
        raw["model_root"] = str(Path(model_dir).parent)
    raw["model"] = {**(raw.get("model") or {}), "model_dir": model_dir}
    parsed = validate_config(AppArgs, raw, args.config or "serve args")
    check_model_folder(model_dir, parsed.variant(parsed.model))
    if auth_required(parsed.auth, args.host) and load_token(parsed.auth_token_env) is None:
        raise ConfigError(missing_token_message(parsed.auth_token_env, args.host))
    options = deployment_options(config)
    options.pop("user_config", None)  # --model-dir decides what is served

    try:  # HAProxy + direct ingress where it runs; arrival stamps on either path (serving.ingress)
        env, ingress = ingress_env(getattr(args, "ingress", "auto"))
    except RuntimeError as err:
        raise ConfigError(f"--ingress: {err}") from None
    ensure_ray(RaySection(num_cpus=max(4, os.cpu_count() or 1)))
    serve.start(http_options={"host": args.host, "port": args.port}, controller_options=controller_options(env))
    serve.run(bind_app(parsed, options), name="distillery", route_prefix="/")
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
