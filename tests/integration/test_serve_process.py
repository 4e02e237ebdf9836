"""`distillery serve` as an operating-system process, the way docker, systemd and supervisors treat it:
SIGTERM to the process or to its process group drains and exits 0 promptly; SIGKILL (to the group,
or to the main process alone) leaves nothing behind (no HAProxy still holding the port, no Ray
process); while it runs, every socket it listens on is on its --host.

Each test starts the real CLI in its own session, as a supervisor would, records every process it
started (its descendants and every process in their sessions: HAProxy, Ray's gcs_server, raylet,
workers, agents) just before the signal, and checks them by (pid, start time) afterwards.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import export_int8, free_port_block
from procnet import listening_sockets
from distillery.serving.ingress import port_free

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PORTS = (19500, 19600)
HOST = "127.0.0.1"
START_TIMEOUT_S = 180
DRAIN_S = 15       # SIGTERM to exit 0, as `docker stop` waits (10 s by default) plus slack for 2 busy cores
KILLED_GONE_S = 20  # SIGKILL to no process of it left


@pytest.fixture(scope="module")
def model_dir(tiny_bert, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("serve_process") / "onnx"
    export_int8(tiny_bert, folder)
    return folder


# ------------------------------------------------------------------------------- processes, from /proc


def _stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, ppid, session id, start time in clock ticks) of `pid`, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the name may hold spaces and parentheses
    return fields[0], int(fields[1]), int(fields[3]), int(fields[19])


def _all_pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def process_tree(root: int) -> dict[int, int]:
    """{pid: start time} of `root`, its descendants, and every process in their sessions (a process
    whose parent died is reparented away from the tree but keeps its session)."""
    stats = {pid: s for pid in _all_pids() if (s := _stat(pid)) is not None}
    tree, grew = {root}, True
    while grew:
        children = {pid for pid, s in stats.items() if s[1] in tree} - tree
        grew = bool(children)
        tree |= children
    sessions = {stats[pid][2] for pid in tree if pid in stats}
    tree |= {pid for pid, s in stats.items() if s[2] in sessions}
    return {pid: stats[pid][3] for pid in tree if pid in stats}


def still_running(recorded: dict[int, int]) -> dict[int, str]:
    """The recorded processes alive now (same pid and start time, not a zombie): {pid: command line}."""
    alive = {}
    for pid, started in recorded.items():
        s = _stat(pid)
        if s is not None and s[3] == started and s[0] != "Z":
            try:
                alive[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:160]
            except OSError:
                continue
    return alive


# ------------------------------------------------------------------------------- the server under test


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    log: Path

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@contextmanager
def distillery_serve(model_dir: Path, tmp_path: Path) -> Iterator[Server]:
    """`distillery serve --model-dir model_dir --port P` in a session of its own, until it says it is
    serving. On the way out whatever a test left running is killed, so no test leaks a server."""
    port = free_port_block(1, PORTS)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)  # an embedded Ray of its own
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "distillery.cli", "serve", "--model-dir", str(model_dir),
                                 "--host", HOST, "--port", str(port)],
                                cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(proc, port, log)
    started = set(process_tree(proc.pid).items())
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while "distillery serving " not in log.read_text(errors="replace"):
            assert proc.poll() is None, f"distillery serve exited with {proc.returncode}:\n{server.tail()}"
            assert time.monotonic() < deadline, f"not serving after {START_TIMEOUT_S} s:\n{server.tail()}"
            started |= set(process_tree(proc.pid).items())
            time.sleep(0.5)
        yield server
    finally:
        if proc.poll() is None:
            started |= set(process_tree(proc.pid).items())
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pid in still_running(dict(started)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _wait_gone(recorded: dict[int, int], timeout_s: float) -> dict[int, str]:
    """Wait until none of `recorded` runs or `timeout_s` passed; those still running."""
    deadline = time.monotonic() + timeout_s
    while (left := still_running(recorded)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def _assert_drained(server: Server, recorded: dict[int, int], t0: float) -> None:
    try:
        code = server.proc.wait(timeout=DRAIN_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {DRAIN_S} s after SIGTERM:\n{server.tail()}")
    took = time.monotonic() - t0
    assert code == 0, f"exit code {code} after SIGTERM (took {took:.1f} s):\n{server.tail()}"
    log = server.log.read_text()
    assert "distillery serve: draining" in log and "drained in" in log and "draining took over" not in log, server.tail()
    assert "distillery serve stopped (exit 0" in log, server.tail()
    left = _wait_gone(recorded, 3)  # a killed straggler may take a moment to be reaped
    assert not left, f"{len(left)} processes outlived its exit: {left}"
    assert port_free(server.port), f"port {server.port} still bound after exit"


def test_listens_only_on_its_host_and_sigterm_drains(model_dir, tmp_path):
    with distillery_serve(model_dir, tmp_path) as server:
        recorded = process_tree(server.proc.pid)
        sockets = listening_sockets(recorded)
        assert any(port == server.port for _, port, _, _ in sockets), sockets
        elsewhere = [s for s in sockets if s[0] != HOST]
        assert not elsewhere, f"listening off --host {HOST}: {elsewhere}"
        if "via haproxy" in server.log.read_text():  # its stats and metrics listeners included
            assert sum(1 for s in sockets if s[3].endswith("haproxy")) >= 3, sockets
        t0 = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        _assert_drained(server, recorded, t0)


def test_sigterm_to_the_process_group_drains(model_dir, tmp_path):
    with distillery_serve(model_dir, tmp_path) as server:
        recorded = process_tree(server.proc.pid)
        t0 = time.monotonic()
        os.killpg(server.proc.pid, signal.SIGTERM)
        _assert_drained(server, recorded, t0)


@pytest.mark.parametrize("target", ["process group", "main process"])
def test_sigkill_leaves_nothing_behind(model_dir, tmp_path, target):
    with distillery_serve(model_dir, tmp_path) as server:
        recorded = process_tree(server.proc.pid)
        if "via haproxy" in server.log.read_text():
            assert any("haproxy -db" in cmd for cmd in still_running(recorded).values()), "HAProxy not recorded"
        if target == "process group":
            os.killpg(server.proc.pid, signal.SIGKILL)
        else:
            server.proc.kill()
        server.proc.wait()
        left = _wait_gone(recorded, KILLED_GONE_S)
        assert not left, f"{len(left)} processes outlived SIGKILL of its {target} by {KILLED_GONE_S} s: {left}"
        assert port_free(server.port), f"port {server.port} still bound"
