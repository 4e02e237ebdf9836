"""`resolve_app`, the Ray-free part of `start_serving` (`distillery serve` and the pipeline's serve
stage): app args from the Serve config with overrides merged by section, the model folder and the
bearer token checked before Ray starts, the deployment options without `user_config`."""

from __future__ import annotations

import json

import pytest
import yaml

from distillery.config import ConfigError
from distillery.serving.app import resolve_app
from distillery.serving.config import load_serve_config


@pytest.fixture
def model_dir(tmp_path):
    folder = tmp_path / "run" / "onnx"
    folder.mkdir(parents=True)
    (folder / "model_card.json").write_text(json.dumps({"variants": {"int8": "student.int8.onnx"}}))
    return folder


def test_the_shipped_config_with_the_folder_named(model_dir, monkeypatch):
    monkeypatch.delenv("DISTILLERY_SERVE_TOKEN", raising=False)
    args, options = resolve_app(str(model_dir), model_root=str(model_dir.parent))
    shipped = load_serve_config()
    assert args.model.model_dir == str(model_dir) and args.model_root == str(model_dir.parent)
    assert args.bidder.max_candidates == shipped["applications"][0]["args"]["bidder"]["max_candidates"]
    assert "user_config" not in options and options["max_ongoing_requests"] > 1


def test_overrides_merge_section_by_section(model_dir, tmp_path):
    catalog = str(tmp_path / "catalog.yaml")
    args, _ = resolve_app(str(model_dir), overrides={"bidder": {"catalog": catalog, "max_candidates": 2048},
                                                     "model": {"variant": "int8"}},
                          model_root=str(model_dir.parent))
    shipped = load_serve_config()["applications"][0]["args"]["bidder"]
    assert args.bidder.catalog == catalog and args.bidder.max_candidates == 2048
    assert args.bidder.network_margin_ms == shipped.get("network_margin_ms", 15.0)  # the rest of the section stays
    assert args.model.variant == "int8" and args.model.model_dir == str(model_dir)  # model_dir always wins


def test_a_config_file_keeps_its_own_root(model_dir, tmp_path):
    config = load_serve_config()
    config["applications"][0]["args"]["model_root"] = str(tmp_path / "elsewhere")
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match="outside model_root"):
        resolve_app(str(model_dir), config=str(path))


def test_unusable_folders_and_missing_tokens_fail_before_ray(model_dir, tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no model_card.json"):
        resolve_app(str(tmp_path / "empty"), model_root=str(tmp_path))
    with pytest.raises(ConfigError, match="'fp16' is not in"):
        resolve_app(str(model_dir), overrides={"model": {"variant": "fp16"}}, model_root=str(model_dir.parent))
    monkeypatch.delenv("DISTILLERY_SERVE_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="DISTILLERY_SERVE_TOKEN"):
        resolve_app(str(model_dir), model_root=str(model_dir.parent), host="0.0.0.0")
    monkeypatch.setenv("DISTILLERY_SERVE_TOKEN", "s3cret")
    assert resolve_app(str(model_dir), model_root=str(model_dir.parent), host="0.0.0.0")[0].auth == "auto"


# ------------------------------------------------------------------ `distillery serve` as a process


def test_the_embedded_ray_for_serving_stays_on_the_host():
    from distillery.serving.app import serving_ray

    assert serving_ray("127.0.0.1").node_ip_address == "127.0.0.1"
    assert serving_ray("localhost").node_ip_address == "127.0.0.1"
    assert serving_ray("0.0.0.0").node_ip_address is None and serving_ray("::").node_ip_address is None
    assert serving_ray("127.0.0.1").num_cpus >= 4


def test_ray_library_grpc_servers_listen_on_the_node_address(monkeypatch):
    """Serve's replicas open a gRPC server on `[::]:0` whatever Ray's node address; in a worker of an
    embedded Ray on 127.0.0.1 (the setup hook) it listens on 127.0.0.1."""
    import grpc
    from ray._common import tls_utils

    from distillery import ray_runtime

    monkeypatch.setattr(tls_utils, "add_port_to_grpc_server", tls_utils.add_port_to_grpc_server)  # restored after
    monkeypatch.setenv(ray_runtime.NODE_ADDRESS_ENV, "127.0.0.1")
    ray_runtime.setup_worker()
    server = grpc.server(thread_pool=None)
    port = tls_utils.add_port_to_grpc_server(server, "[::]:0")
    server.start()
    try:
        listening = {(ip, p) for ip, p in _listening_tcp() if p == port}
        assert listening == {("127.0.0.1", port)}, listening
    finally:
        server.stop(None)


def _listening_tcp() -> set[tuple[str, int]]:
    """(address, port) of every TCP socket listening on this machine (IPv4-mapped IPv6 as IPv4)."""
    import ipaddress

    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in open(table).read().splitlines()[1:]:
            words = line.split()
            if words[3] == "0A":
                raw_ip, raw_port = words[1].split(":")
                raw = bytes.fromhex(raw_ip)
                ip = ipaddress.ip_address(b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4)))
                found.add((str(getattr(ip, "ipv4_mapped", None) or ip), int(raw_port, 16)))
    return found


def test_end_session_kills_every_process_of_the_session_and_nothing_else():
    """What `distillery serve` does with its server's session once the server exits (or when it
    overran its drain): every process left in it, orphans included, and no other."""
    import subprocess
    import time

    from distillery.serving.app import end_session, session_members

    # a session whose leader starts a child that outlives it (as HAProxy outlives its Ray actor)
    leader = subprocess.Popen(["sh", "-c", "sleep 300 & echo $!; exec sleep 300"], stdout=subprocess.PIPE,
                              text=True, start_new_session=True)
    orphan = int(leader.stdout.readline())
    bystander = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        assert set(session_members(leader.pid)) == {leader.pid, orphan}
        assert end_session(leader.pid) == 2
        assert leader.wait(timeout=5) == -9
        deadline = time.monotonic() + 5
        while orphan in session_members(leader.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert session_members(leader.pid) == [] and bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
        leader.kill()
        leader.wait()
