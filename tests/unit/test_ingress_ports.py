"""Ports for a local Serve's HAProxy side: free when picked, distinct, never from the kernel's
ephemeral range (an outbound connection can take one of those before Serve binds it)."""

from __future__ import annotations

import socket

import pytest
from procnet import listening_sockets

from distillery.serving import ingress


def test_free_ports_skip_a_bound_port():
    port = next(p for p in range(29_500, 29_600, 2) if ingress.port_free(p) and ingress.port_free(p + 1))
    with socket.socket() as held:
        held.bind(("127.0.0.1", port))
        assert not ingress.port_free(port)
        assert ingress.free_ports(1, (port, port + 2)) == [port + 1]
        with pytest.raises(RuntimeError, match="fewer than 2 free ports"):
            ingress.free_ports(2, (port, port + 2))


def test_free_ports_are_distinct_and_outside_the_ephemeral_range(monkeypatch):
    monkeypatch.setattr(ingress, "ephemeral_ports", lambda: (29_000, 29_999))
    got = ingress.free_ports(4, (28_990, 30_010))
    assert len(set(got)) == 4 and not any(29_000 <= p <= 29_999 for p in got), got
    with pytest.raises(RuntimeError, match="outside the ephemeral range 29000-29999"):
        ingress.free_ports(1, (29_000, 29_999))


# ------------------------------------------------------------------------- HAProxy's listeners on --host

STATS_AND_METRICS = """global
    maxconn 64
defaults
    mode http
    timeout connect 1s
    timeout client 5s
    timeout server 5s
frontend prometheus
    bind :{metrics}
    http-request return status 200
frontend http_frontend
    bind 127.0.0.1:{front}
    http-request return status 200
listen stats
  bind *:{stats}
  stats enable
"""


def _listening(pid: int) -> set[tuple[str, int]]:
    """(address, port) of the TCP sockets `pid` listens on."""
    return {(address, port) for address, port, _, _ in listening_sockets([pid])}


def test_bind_on_host_moves_only_listeners_on_every_interface():
    config = STATS_AND_METRICS.format(metrics=9101, front=8000, stats=8404)
    moved = ingress.bind_on_host(config, "127.0.0.1")
    assert "bind 127.0.0.1:9101" in moved and "bind 127.0.0.1:8404" in moved
    assert "bind 127.0.0.1:8000" in moved and "127.0.0.1:127.0.0.1" not in moved
    assert moved.replace("127.0.0.1:9101", ":9101").replace("127.0.0.1:8404", "*:8404") == config


def test_haproxy_runs_with_every_listener_on_the_host(tmp_path):
    """Through the launcher Ray is given (RAY_SERVE_HAPROXY_BINARY_PATH), HAProxy started the way
    Ray starts it (`-db -f CONFIG`) listens on 127.0.0.1 only, its config rewritten in place."""
    import subprocess
    import time

    binary = ingress.haproxy_binary()
    if binary is None:
        pytest.skip("no runnable HAProxy here")
    launcher = ingress.haproxy_on_host(binary, "127.0.0.1", str(tmp_path))
    assert launcher is not None
    metrics, front, stats = ingress.free_ports(3, (19_560, 19_600))
    config = tmp_path / "haproxy.cfg"
    config.write_text(STATS_AND_METRICS.format(metrics=metrics, front=front, stats=stats))
    proc = subprocess.Popen([launcher, "-db", "-f", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while len(_listening(proc.pid)) < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _listening(proc.pid) == {("127.0.0.1", metrics), ("127.0.0.1", front), ("127.0.0.1", stats)}
        assert f"{config}" in open(f"/proc/{proc.pid}/cmdline").read()  # Ray finds its HAProxy by this
    finally:
        proc.kill()
        proc.wait()
    assert f"bind 127.0.0.1:{stats}" in config.read_text()


def test_a_local_serve_gets_the_launcher_unless_it_listens_everywhere():
    if ingress.haproxy_binary() is None:
        pytest.skip("no runnable HAProxy here")
    env, mode = ingress.ingress_env("auto", host="127.0.0.1")
    assert mode == "haproxy" and env["RAY_SERVE_HAPROXY_BINARY_PATH"].endswith("haproxy-on-host")
    env, _ = ingress.ingress_env("auto", host="0.0.0.0")
    assert "RAY_SERVE_HAPROXY_BINARY_PATH" not in env
    with pytest.raises(ValueError, match="not an address"):
        ingress.ingress_env("auto", host="127.0.0.1/'; rm")


def test_haproxy_folder_removed_at_exit_unless_haproxy_still_answers(tmp_path):
    import tempfile

    work = tempfile.mkdtemp(prefix="dhap-", dir=tmp_path)  # short enough for a unix socket path
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as admin:
        admin.bind(f"{work}/admin.sock")
        admin.listen(1)
        assert not ingress.remove_when_unused(work)  # a Serve outliving this process keeps its folder
        assert (tmp_path / work).exists()
    assert ingress.remove_when_unused(work)  # the socket file is left, nothing answers on it
    assert not (tmp_path / work).exists()
