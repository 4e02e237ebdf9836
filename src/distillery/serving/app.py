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

`start_serving(model_dir, ...)` starts Serve in this process (`distillery serve` and the pipeline's
serve stage both call it); `resolve_app` is its Ray-free part: the app args and options, checked.
"""

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distillery.config import ConfigError, validate_config
from distillery.onnx_model.card import ModelCard, ModelCardError
from distillery.ray_runtime import RaySection
from distillery.serving.config import (AppArgs, app_args, auth_required, deployment_options, load_serve_config,
                                       missing_token_message)
from distillery.serving.limits import load_token

if TYPE_CHECKING:
    from ray.serve import Application

__all__ = ["build_app", "bind_app", "cli_main", "check_model_folder", "resolve_app", "start_serving", "Serving"]

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


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` laid over `base`, sections (dicts) merged key by key rather than replaced."""
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def resolve_app(model_dir: str, config: str | None = None, overrides: dict[str, Any] | None = None,
                model_root: str | None = None, host: str = "127.0.0.1") -> tuple[AppArgs, dict[str, Any]]:
    """(validated `AppArgs`, CTRServer deployment options) for serving `model_dir`, before Ray starts.

    The app args are the Serve config's (`config`, None: the shipped serve/serve_config.yaml) with
    `overrides` merged section by section, `model_root` (None: the config's) and `model.model_dir`
    set; the folder is checked (`check_model_folder`) and so is the bearer token that serving on
    `host` needs. The options are the config's `deployments:` entry less `user_config`: `model_dir`
    decides what is served. Raises `ConfigError` naming the field."""
    serve_config = load_serve_config(config)
    model_dir = str(Path(model_dir).expanduser().resolve())
    raw = _merge(app_args(serve_config), overrides or {})
    if model_root is not None:
        raw["model_root"] = model_root
    raw["model"] = {**(raw.get("model") or {}), "model_dir": model_dir}
    parsed = validate_config(AppArgs, raw, config or "serve args")
    check_model_folder(model_dir, parsed.variant(parsed.model))
    if auth_required(parsed.auth, host) and load_token(parsed.auth_token_env) is None:
        raise ConfigError(missing_token_message(parsed.auth_token_env, host))
    options = deployment_options(serve_config)
    options.pop("user_config", None)
    return parsed, options


@dataclass
class Serving:
    """A running app: where it answers, what it runs, and how to stop it."""

    url: str              # http://host:port
    app_name: str
    ingress: str          # haproxy (fast path) or proxy
    args: AppArgs
    model_dir: str        # absolute

    def shutdown(self) -> None:
        """Delete the app and stop Serve (Ray itself keeps running)."""
        from ray import serve

        try:
            serve.delete(self.app_name)
        finally:
            serve.shutdown()


def warm_up(url: str, args: AppArgs, steady: int = 16, min_seconds: float = 3.0, max_seconds: float = 10.0) -> float:
    """Send OpenRTB bids for every size of the catalog and /predict calls of 1-8 catalog ads, each
    under a made-up page, through the front door before the server is announced, for at least
    `min_seconds` and until the last `steady` answers all took under 2.5x their median (or
    `max_seconds` passed); returns the seconds spent. For a second or two after Serve reports the
    app running, bids through the new server took 15-50 ms against 4-7 ms after (measured on 2
    cores; in process the first bids cost 2-4 ms; 32 warm-up requests in the first half second did
    not end it, 3 s did): a bidder must not spend its first deadlines on that. A failing warm-up is
    logged, never fatal."""
    import http.client
    import itertools
    import json
    from urllib.parse import urlparse

    from distillery.loadtest import bid_request
    from distillery.serving.catalog import load_catalog
    from distillery.serving.limits import load_token

    t0 = time.perf_counter()
    candidates = load_catalog(args.bidder.catalog).candidates()
    ads = [ad.row_fields() for ad in candidates][:64] or [{}]
    sizes = sorted({s for ad in candidates for s in ad.creative.sizes})[:16] or ["300x250"]
    formats = [{"w": int(s.split("x")[0]), "h": int(s.split("x")[1])} for s in sizes]
    token = load_token(args.auth_token_env)
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    target = urlparse(url)
    conn = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
    took: list[float] = []
    try:
        for i in itertools.count():
            last = sorted(took[-steady:])
            elapsed = time.perf_counter() - t0
            if (elapsed > min_seconds and len(last) == steady and last[-1] <= 2.5 * last[steady // 2]) or elapsed > max_seconds:
                break
            words = f"warm up request {i} " + "word " * (i % 12)
            if i % 2:
                rows = [{**ads[(i + j) % len(ads)], "query": words} for j in range(1 + i % 8)]
                path, body = "/predict", {"rows": rows}
            else:
                path, body = "/openrtb/2.6/bid", bid_request({"keywords": words}, formats, f"warm-up-{i}", tmax_ms=1000)
            t = time.perf_counter()
            conn.request("POST", path, body=json.dumps(body), headers=headers)
            conn.getresponse().read()
            took.append(time.perf_counter() - t)
    except (OSError, http.client.HTTPException) as err:
        log.warning("warm-up through %s failed after %.1f s: %s", url, time.perf_counter() - t0, err)
    finally:
        conn.close()
    log.info("warmed up in %.1f s (%d requests)", time.perf_counter() - t0, len(took))
    return time.perf_counter() - t0


def start_serving(model_dir: str, *, host: str = "127.0.0.1", port: int = 8000, config: str | None = None,
                  overrides: dict[str, Any] | None = None, model_root: str | None = None, ingress: str = "auto",
                  app_name: str = "distillery", ray: RaySection | None = None) -> Serving:
    """Serve `model_dir` on Ray Serve at http://host:port (route prefix /) and return once the app
    runs. Arguments as `resolve_app`; `ingress`: auto (HAProxy + direct ingress where a binary
    runs, else Serve's proxy), haproxy or proxy. Joins the Ray this process is connected to, else
    starts an embedded one (`ray`, default: as many logical CPUs as cores, at least 4)."""
    from ray import serve

    from distillery.ray_runtime import ensure_ray
    from distillery.serving.ingress import controller_options, ingress_env, wait_for_fast_path

    args, options = resolve_app(model_dir, config, overrides, model_root, host)
    try:  # arrival stamps on either path (serving.ingress)
        env, mode = ingress_env(ingress)
    except RuntimeError as err:
        raise ConfigError(f"--ingress: {err}") from None
    ensure_ray(ray or RaySection(num_cpus=max(4, os.cpu_count() or 1)))
    serve.start(http_options={"host": host, "port": port}, controller_options=controller_options(env))
    serve.run(bind_app(args, options), name=app_name, route_prefix="/")
    if mode == "haproxy" and not wait_for_fast_path(env):
        log.warning("HAProxy does not route to the replica yet after 60 s: requests take Serve's proxy (slower) until it does")
    warm_up(f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}", args)
    return Serving(f"http://{host}:{port}", app_name, mode, args, args.model.model_dir)


def cli_main(args) -> int:
    """`distillery serve`: start an embedded Ray + Serve, print the URL, serve until interrupted."""
    from ray import serve

    model_dir = str(Path(args.model_dir).expanduser().resolve())
    # without --config the operator named the folder: trust its parent as the root
    serving = start_serving(model_dir, host=args.host, port=args.port, config=args.config,
                            model_root=None if args.config else str(Path(model_dir).parent),
                            ingress=getattr(args, "ingress", "auto"))
    print(f"distillery serving {model_dir} at {serving.url} via {serving.ingress} "
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
