"""Ports for a local Serve's HAProxy side: free when picked, distinct, never from the kernel's
ephemeral range (an outbound connection can take one of those before Serve binds it)."""

from __future__ import annotations

import socket

import pytest

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
