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

`distillery serve` behaves as a service process: SIGTERM (to it or its process group), SIGINT and
SIGHUP drain and stop it, exit 0, within DRAIN_S + SUPERVISE_S seconds; SIGKILL leaves nothing it
started running (see "`distillery serve`, the process" below); everything it listens on is on
`--host` (an embedded Ray on that address, HAProxy's stats and metrics too: serving.ingress).
"""

import logging
import os
import signal
import subprocess
import sys
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
from distillery.serving.ingress import ALL_INTERFACES, connect_host
from distillery.serving.limits import load_token

if TYPE_CHECKING:
    from ray.serve import Application

__all__ = ["build_app", "bind_app", "cli_main", "check_model_folder", "resolve_app", "start_serving", "serving_ray",
           "Serving", "end_session", "session_members"]

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


def serving_ray(host: str) -> RaySection:
    """The embedded Ray for serving on `host`: as many logical CPUs as cores (at least 4), its
    processes on `host`'s address where that is one address (on loopback for 127.0.0.1), so that
    nothing of it listens beyond what `host` allows."""
    node = None if host in ALL_INTERFACES else ("127.0.0.1" if host == "localhost" else host)
    return RaySection(num_cpus=max(4, os.cpu_count() or 1), node_ip_address=node)


def start_serving(model_dir: str, *, host: str = "127.0.0.1", port: int = 8000, config: str | None = None,
                  overrides: dict[str, Any] | None = None, model_root: str | None = None, ingress: str = "auto",
                  app_name: str = "distillery", ray: RaySection | None = None) -> Serving:
    """Serve `model_dir` on Ray Serve at http://host:port (route prefix /) and return once the app
    runs. Arguments as `resolve_app`; `ingress`: auto (HAProxy + direct ingress where a binary
    runs, else Serve's proxy), haproxy or proxy. Joins the Ray this process is connected to, else
    starts an embedded one (`ray`, default: `serving_ray(host)`)."""
    from ray import serve

    from distillery.ray_runtime import ensure_ray
    from distillery.serving.ingress import controller_options, ingress_env, wait_for_fast_path

    args, options = resolve_app(model_dir, config, overrides, model_root, host)
    try:  # arrival stamps on either path (serving.ingress)
        env, mode = ingress_env(ingress, host=host)
    except RuntimeError as err:
        raise ConfigError(f"--ingress: {err}") from None
    except ValueError as err:
        raise ConfigError(f"--host: {err}") from None
    ensure_ray(ray or serving_ray(host))
    serve.start(http_options={"host": host, "port": port}, controller_options=controller_options(env))
    serve.run(bind_app(args, options), name=app_name, route_prefix="/")
    if mode == "haproxy" and not wait_for_fast_path(env, host=host):
        log.warning("HAProxy does not route to the replica yet after 60 s: requests take Serve's proxy (slower) until it does")
    warm_up(f"http://{connect_host(host)}:{port}", args)
    return Serving(f"http://{host}:{port}", app_name, mode, args, args.model.model_dir)


# ---------------------------------------------------------------- `distillery serve`, the process
#
# Supervisors stop a server with SIGTERM to its process or to its whole process group, and kill it
# with SIGKILL. Ray's processes (gcs_server, raylet, agents) share the group of the process that
# starts Ray and die at once on a group SIGTERM, before Serve can drain; HAProxy, started by a Ray
# actor, outlives a SIGKILL of them all, still holding the port. So `distillery serve` is two
# processes: the one the operator sees (`_supervise`) and the server (`_serve`), which it starts in
# a session of its own. Every process the server starts stays in that session (Ray's and HAProxy
# alike: none of them calls setsid), so the session is exactly what must not outlive it.

DRAIN_S = 10.0     # the server's budget to drain and stop; then what is left of it is killed
SUPERVISE_S = 3.0  # after DRAIN_S, the supervisor's own margin before it kills the server's session


def cli_main(args) -> int:
    """`distillery serve`: serve until SIGINT (Ctrl-C), SIGTERM or SIGHUP, then drain and exit 0."""
    if getattr(args, "parent_fd", None) is None:
        model_dir = str(Path(args.model_dir).expanduser().resolve())
        # a bad config, folder or missing token fails here, at once, before any process starts
        resolve_app(model_dir, args.config, None, None if args.config else str(Path(model_dir).parent), args.host)
        return _supervise(args)
    code = _serve(args)
    # Everything this process started is stopped by now; the interpreter's own teardown after Ray
    # and torch spent 5-6 s of CPU on 2 busy cores (measured), a third of a supervisor's patience.
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


def _server_command(args, parent_fd: int) -> list[str]:
    """The command line of the server process for `distillery serve` args `args`."""
    cmd = [sys.executable, "-m", "distillery.cli", *(["-v"] if getattr(args, "verbose", False) else []), "serve",
           "--model-dir", str(args.model_dir), "--host", args.host, "--port", str(args.port),
           "--ingress", getattr(args, "ingress", "auto"), "--parent-fd", str(parent_fd)]
    return cmd + (["--config", args.config] if args.config else [])


class _StopSignals:
    """SIGTERM, SIGINT and SIGHUP to the supervisor: noted (the first one's time) and passed on to
    the server as SIGTERM, once there is one."""

    def __init__(self) -> None:
        self.first_at: float | None = None
        self.server: int | None = None
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, _frame) -> None:
        self.first_at = self.first_at or time.monotonic()
        if self.server is not None:
            _signal(self.server, signal.SIGTERM)

    def forward_to(self, server: int) -> None:
        self.server = server
        if self.first_at is not None:  # a signal came before the server existed
            _signal(server, signal.SIGTERM)

    def overdue(self, budget_s: float) -> bool:
        return self.first_at is not None and time.monotonic() - self.first_at > budget_s


def _supervise(args) -> int:
    """Start the server in a session of its own, pass it any stop signal, and once it exits end
    whatever is left in its session; the server's exit status (128 + N for signal N). The server
    holds the read end of a pipe whose only write end is here: however this process ends (SIGKILL
    included), the server reads EOF and drains."""
    stop = _StopSignals()
    read_fd, write_fd = os.pipe()
    server = subprocess.Popen(_server_command(args, read_fd), pass_fds=(read_fd,), start_new_session=True,
                              stdin=subprocess.DEVNULL)
    os.close(read_fd)
    stop.forward_to(server.pid)
    killed = False
    # wait without reaping: the server's pid, and so its session id, stay its own until every
    # process left in the session is gone
    while os.waitid(os.P_PID, server.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is None:
        if not killed and stop.overdue(DRAIN_S + SUPERVISE_S):
            log.error("the server did not stop within %.0f s of the signal: killing it", DRAIN_S + SUPERVISE_S)
            killed = bool(end_session(server.pid))
        time.sleep(0.1)
    left = end_session(server.pid)
    code = server.wait()
    os.close(write_fd)
    how = f"exit {code}" if code >= 0 else f"killed by signal {-code}"
    after = f", {time.monotonic() - stop.first_at:.1f} s after the signal" if stop.first_at else ""
    print(f"distillery serve stopped ({how}{after}{f'; killed {left} processes it left' if left else ''})", flush=True)
    return 128 - code if code < 0 else code


def _serve(args) -> int:
    """The server: start Ray and Serve, say so, serve until a stop (a signal, or EOF on
    `args.parent_fd`: the supervisor is gone), then drain (`_drain`) and return 0."""
    from distillery.ray_runtime import ensure_ray

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a SIGTERM drains as Ctrl-C does
    _stop_on_eof(args.parent_fd)
    model_dir = str(Path(args.model_dir).expanduser().resolve())
    try:
        ensure_ray(serving_ray(args.host))
        # ray.init sets its own SIGTERM handler (exit 1 at once, no drain of Serve): ours again
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        # without --config the operator named the folder: trust its parent as the root
        serving = start_serving(model_dir, host=args.host, port=args.port, config=args.config,
                                model_root=None if args.config else str(Path(model_dir).parent),
                                ingress=getattr(args, "ingress", "auto"))
        import ray

        print(f"distillery serving {model_dir} at {serving.url} via {serving.ingress} "
              f"(/predict, /v2/models/<name>/infer, /openrtb/2.6/bid); Ctrl-C stops; "
              f"promote with --address {ray.get_runtime_context().gcs_address}", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        _ignore_stop_signals()
        print("distillery serve: draining", flush=True)
        return 0
    finally:
        _drain()


def _stop_on_eof(fd: int) -> None:
    """SIGTERM this process when `fd` (the read end of the supervisor's pipe) reaches EOF."""
    def watch() -> None:
        while os.read(fd, 1):  # the supervisor never writes: only its exit ends this read
            pass
        log.warning("the distillery serve supervisor is gone: draining")
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="supervisor-watch", daemon=True).start()


def _drain() -> None:
    """Stop Serve (replicas finish their requests; HAProxy stops), then Ray, then anything left in
    this server's session, within DRAIN_S seconds, after which the rest is killed."""
    import ray
    from ray import serve

    _ignore_stop_signals()
    deadline = threading.Timer(DRAIN_S, _drain_overran)
    deadline.daemon = True
    deadline.start()
    t0 = time.monotonic()
    if ray.is_initialized():
        try:
            serve.shutdown()
        except Exception as err:  # noqa: BLE001 - Ray raises its own types; what matters is stopping
            log.warning("Serve did not shut down cleanly: %s", err)
        ray.shutdown()
    left = end_session(os.getpid()) if os.getsid(0) == os.getpid() else 0
    deadline.cancel()
    log.info("drained in %.1f s%s", time.monotonic() - t0, f" ({left} leftover processes killed)" if left else "")


def _ignore_stop_signals() -> None:
    """From here on a second signal must not cut the drain short (DRAIN_S bounds it)."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)


def _drain_overran() -> None:
    log.error("draining took over %.0f s: killing what is left", DRAIN_S)
    if os.getsid(0) == os.getpid():
        end_session(os.getpid())
    os._exit(1)


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def session_members(sid: int) -> list[int]:
    """Live processes (not zombies) of session `sid`, read from /proc."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after the command name, which may hold anything
        if int(fields[3]) == sid and fields[0] != "Z":
            members.append(int(entry))
    return members


def end_session(sid: int, timeout_s: float = 5.0) -> int:
    """SIGKILL every process of session `sid` but this one, until none is left or `timeout_s` passed;
    how many there were. Only for a session whose leader is this process or its unreaped child: no
    other process can then hold that session id."""
    killed: set[int] = set()
    deadline = time.monotonic() + timeout_s
    while (members := [p for p in session_members(sid) if p != os.getpid()]) and time.monotonic() < deadline:
        for pid in members:
            _signal(pid, signal.SIGKILL)
        killed.update(members)
        time.sleep(0.05)
    return len(killed)
