"""Copy serve/serve_config.yaml's applications and controller_options into the RayService's serveConfigV2.

    python cluster/sync_serve_config.py           # rewrite cluster/kuberay/rayservice.yaml
    python cluster/sync_serve_config.py --check   # exit 1 if they differ (what the drift test checks)

`applications` and `controller_options` (the fast path's env vars) travel; `http_options` stay the
cluster's (inside a pod HAProxy, or Serve's proxy, listens on the pod address for the ClusterIP
service, and replicas on theirs for HAProxy on other pods, where serve_config.yaml binds 127.0.0.1
for a local run). The rest of rayservice.yaml, comments included, is left as it is.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SERVE_CONFIG = REPO / "serve" / "serve_config.yaml"
RAYSERVICE = REPO / "cluster" / "kuberay" / "rayservice.yaml"
START, END = "  serveConfigV2: |\n", "  rayClusterConfig:\n"
CLUSTER_HEADER = """\
# http_options differ from serve/serve_config.yaml on purpose: inside a pod HAProxy (and each
# replica's direct-ingress port, for HAProxy on other pods) must listen on the pod address for
# the ClusterIP serve service; nothing exposes them further.
# controller_options and applications: copied from serve/serve_config.yaml by cluster/sync_serve_config.py.
proxy_location: EveryNode
http_options:
  host: 0.0.0.0
  port: 8000
  request_timeout_s: 10
"""


def serve_config_v2(serve_config: dict) -> str:
    """The serveConfigV2 text: the cluster's header plus `serve_config`'s controller_options and applications."""
    carried = {k: serve_config[k] for k in ("controller_options", "applications") if k in serve_config}
    return CLUSTER_HEADER + yaml.safe_dump(carried, sort_keys=False, width=100)


def synced(manifest_text: str, serve_config: dict) -> str:
    """`manifest_text` with its serveConfigV2 block replaced (indented four spaces, as a literal block)."""
    start, end = manifest_text.index(START), manifest_text.index(END)
    body = "".join(f"    {line}\n" if line else "\n" for line in serve_config_v2(serve_config).splitlines())
    return manifest_text[:start] + START + body + manifest_text[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report whether the files agree")
    args = parser.parse_args(argv)
    text = RAYSERVICE.read_text()
    new = synced(text, yaml.safe_load(SERVE_CONFIG.read_text()))
    if args.check:
        print("in sync" if new == text else f"{RAYSERVICE.name} differs from {SERVE_CONFIG.name}")
        return 0 if new == text else 1
    RAYSERVICE.write_text(new)
    print(f"wrote {RAYSERVICE.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
