"""The labels folder's lock is a lease (`label_store.OutputLock`): it expires unless its heartbeat
renews it, a stale one is taken over by exactly one of several runs, a live one refuses naming its
holder and expiry, and a run that loses its lease stops before it commits. No Ray; real processes.

Before: `_LOCK.json` never expired (a lock from a replaced host blocked the output forever) and two
drivers could both take over a dead holder's lock (each removed it and created its own)."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time

import pytest

from distillery.label_store import LabelsLocked, LeaseLost, OutputLock


def _write_lock(out, **holder):
    out.mkdir(parents=True, exist_ok=True)
    body = {"holder": "old-run", "token": "old-run", "host": "replaced-host", "pid": 4242, "since": 0, **holder}
    (out / "_LOCK.json").write_text(json.dumps(body))


def _lock(out):
    return json.loads((out / "_LOCK.json").read_text())


def test_a_live_lock_refuses_naming_its_holder_and_expiry(tmp_path):
    out = tmp_path / "labels"
    with OutputLock(str(out), ttl_s=30) as held:
        lock = _lock(out)
        assert (lock["holder"], lock["host"], lock["pid"]) == (held.token, socket.gethostname(), os.getpid())
        assert time.time() + 25 < lock["expires_at"] <= time.time() + 30
        with pytest.raises(LabelsLocked, match=rf"another labeling run holds this output \(holder {held.token}, "
                                               rf"host {socket.gethostname()}, pid {os.getpid()}, lease until "):
            OutputLock(str(out)).__enter__()
    assert not (out / "_LOCK.json").exists()

    _write_lock(out, expires_at=time.time() + 60)  # another host, lease running
    with pytest.raises(LabelsLocked, match=r"holder old-run, host replaced-host, pid 4242, lease until"):
        OutputLock(str(out)).__enter__()


def test_an_expired_lease_is_taken_over(tmp_path):
    """The driver of a replaced host: its lock names a pid no one here can check, but its lease ran out."""
    out = tmp_path / "labels"
    _write_lock(out, expires_at=time.time() - 1)
    with OutputLock(str(out)) as held:
        assert _lock(out)["holder"] == held.token
    assert sorted(p.name for p in out.iterdir()) == []  # no lock, no takeover claim left

    _write_lock(out)  # a lock from before leases, of another host: nothing says it still holds
    with OutputLock(str(out)) as held:
        assert _lock(out)["holder"] == held.token


def test_a_dead_process_of_this_host_is_taken_over_before_its_lease_ends(tmp_path):
    out = tmp_path / "labels"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write_lock(out, host=socket.gethostname(), pid=dead.pid, expires_at=time.time() + 60)
        with OutputLock(str(out)) as held:  # a SIGKILLed driver's lock
            assert _lock(out)["holder"] == held.token
        _write_lock(out, host=socket.gethostname(), pid=live.pid)  # before leases: a live pid still holds
        with pytest.raises(LabelsLocked, match=f"pid {live.pid}, no lease expiry"):
            OutputLock(str(out)).__enter__()
    finally:
        live.kill()
        live.wait()


def test_the_heartbeat_keeps_the_lease_alive_past_its_ttl(tmp_path):
    out = tmp_path / "labels"
    with OutputLock(str(out), ttl_s=0.6) as held:
        first = _lock(out)["expires_at"]
        time.sleep(1.5)  # 2.5 ttls
        assert _lock(out)["expires_at"] > first + 0.6 and _lock(out)["expires_at"] > time.time()
        with pytest.raises(LabelsLocked, match="another labeling run holds this output"):
            OutputLock(str(out), ttl_s=0.6).__enter__()
        held.check()
    assert not (out / "_LOCK.json").exists()


def test_a_run_that_loses_its_lease_stops_before_committing(tmp_path):
    out = tmp_path / "labels"
    with OutputLock(str(out), ttl_s=0.6) as held:
        _write_lock(out, host="other-host", expires_at=time.time() + 60)  # taken over while this run stalled
        with pytest.raises(LeaseLost, match=r"lock is gone or held by another run \(holder old-run, host other-host"):
            held.check()
        time.sleep(0.5)
        with pytest.raises(LeaseLost):  # and stays lost
            held.check()
    assert _lock(out)["holder"] == "old-run"  # not released: it is not this run's

    (out / "_LOCK.json").unlink()
    with OutputLock(str(out), ttl_s=0.3) as held:
        held._stop.set()  # the heartbeat stalls: the lease runs out unrenewed
        held._thread.join()
        time.sleep(0.4)
        with pytest.raises(LeaseLost, match="lease expired at .* before it was renewed"):
            held.check()


def _contend(out: str, barrier, results, rounds: int) -> None:
    """One driver: each round, try to take the stale lock at the same moment as the other one."""
    for _ in range(rounds):
        barrier.wait()
        try:
            lock = OutputLock(out, ttl_s=30).__enter__()
        except LabelsLocked:
            lock = None
        results.put(lock is not None)
        barrier.wait()  # both tried: the winner lets go
        if lock is not None:
            lock.__exit__(None, None, None)
        barrier.wait()


@pytest.mark.parametrize("stale", ["expired", "dead pid"])
def test_two_concurrent_takeovers_of_a_stale_lock_have_exactly_one_winner(tmp_path, stale):
    rounds = 20
    out = tmp_path / "labels"
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(3), ctx.Queue()
    drivers = [ctx.Process(target=_contend, args=(str(out), barrier, results, rounds)) for _ in range(2)]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for d in drivers:
        d.start()
    winners = []
    try:
        for _ in range(rounds):
            if stale == "expired":
                _write_lock(out, expires_at=time.time() - 1)
            else:
                _write_lock(out, host=socket.gethostname(), pid=dead.pid, expires_at=time.time() + 60)
            barrier.wait(timeout=30)
            winners.append(sum(results.get(timeout=30) for _ in range(2)))
            barrier.wait(timeout=30)
            barrier.wait(timeout=30)
            assert sorted(p.name for p in out.iterdir()) == []  # released, no claim left behind
    finally:
        for d in drivers:
            d.join(timeout=30)
            if d.is_alive():
                d.kill()
    assert winners == [1] * rounds
