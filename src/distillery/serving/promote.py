"""Promote a built model version to the running service: canary in process, make it current, hot swap.

    distillery promote --run-dir runs/demo [--version V] [--variant int8] [--address auto] [--app distillery] [--timeout-s 120]

1. Canary: the version's scorer, for the variant the server serves, scores the model card's
   `canary.inputs`; every probability must be finite, in [0, 1] and within `canary.atol` of the
   card's `canary.probs[<variant>]`. A card without a canary is checked for finite probabilities on
   64 rows of the run's test split only (said in the output). A failure refuses the promotion and
   changes nothing (exit 1).
2. Current: `<run>/onnx` is switched (one atomic rename of a relative symlink) to the version's
   folder under `<run>/onnx.versions/`, if it does not name it already.
3. Push: the running Serve app's `user_config` names the version's folder; every other setting of
   the app stays as it is (its deployment's code version too), so Serve calls `reconfigure` on
   the running replicas in place: each loads the new model beside the old one and switches between
   two batches, no replica restarts and no request fails. Then it waits until every running replica
   answers /healthz with the new version; a replica that could not load it, or a timeout, puts the
   old `user_config` and the old link back (exit 1).

The server is reached through Ray: `--address` is the Ray cluster `distillery serve` (or `serve
deploy`) runs on (`auto`: Ray's rule, the `ray start` cluster of this machine, else the one local Ray
it finds; `distillery serve`'s embedded Ray has no address file, so name it there: host:port of its
GCS). Serve's controller lives in its own namespace, so any driver namespace finds it. Apps started
imperatively (`distillery serve`, the pipeline: `serve.run`) are re-submitted with their own
deployment record; apps from a config (`serve deploy`) get their config re-applied with the new
`user_config`. On KubeRay, edit the RayService's serveConfigV2 instead (the operator owns the config).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from distillery.config import ConfigError, FolderName, Section, validate_config
from distillery.publish import switch_current

__all__ = ["PromoteConfig", "PromotionRefused", "run", "run_canary", "version_folder", "switch_current",
           "add_arguments", "cli_main"]

log = logging.getLogger(__name__)

FALLBACK_ROWS = 64  # rows scored when a card has no canary (finite-and-in-range check only)


class PromoteConfig(Section):
    run_dir: str = Field(..., min_length=1, description="run directory (local): <run_dir>/<out> and <out>.versions/")
    out: FolderName = Field("onnx", description="the current-version link's name under run_dir")
    version: str | None = Field(None, description="folder name under <out>.versions/, or its card version; None: the one <out> names")
    variant: str | None = Field(None, description="variant to serve; None: the one the running app serves")
    address: str = Field("auto", min_length=1, description="Ray address of the cluster the server runs on (host:port, or auto)")
    app: str = Field("distillery", min_length=1, description="Serve application name")
    timeout_s: float = Field(120.0, gt=0, description="how long every replica may take to serve the new version, s")


class PromotionRefused(RuntimeError):
    """The promotion did not happen (a failed canary, a replica that could not load the version);
    the message says why and what was left as it was."""


# ------------------------------------------------------------------------------- the run's versions


def version_folder(run_dir: str, out: str = "onnx", version: str | None = None) -> str:
    """Absolute path of the version to promote: the folder `<run_dir>/<out>` names (None), else the
    folder of `<out>.versions/` named `version`, ending in `-<version>`, or whose card version it is."""
    from distillery.onnx_model.card import ModelCard

    link = os.path.join(os.path.abspath(run_dir), out)
    if version is None:
        if not os.path.isdir(link):
            raise ConfigError(f"run_dir: {link} does not exist; build a version with `distillery compress`")
        return os.path.realpath(link)
    versions = f"{link}.versions"
    names = sorted(os.listdir(versions)) if os.path.isdir(versions) else []
    for name in reversed(names):  # newest first: the same card version built twice
        folder = os.path.join(versions, name)
        with contextlib.suppress(FileNotFoundError, ConfigError):
            if name == version or name.endswith(f"-{version}") or ModelCard.read(folder).version == version:
                return os.path.realpath(folder)
    raise ConfigError(f"version: {version!r} is not under {versions} (it has {names or 'nothing'}); "
                      "a build that failed its gate is in <out>.rejected and cannot be promoted")


# ------------------------------------------------------------------------------- canary


def _fallback_inputs(run_dir: str) -> tuple[list[Any], str]:
    """64 rows of `<run_dir>/data/test`, else of the synthetic generator, and where they came from."""
    from distillery.training.data import read_split

    try:
        return read_split(run_dir, "test", max_rows=FALLBACK_ROWS).to_pylist(), f"{run_dir}/data/test"
    except FileNotFoundError:
        from distillery.data.synthetic import SyntheticConfig, generate

        syn = SyntheticConfig(rows_train=FALLBACK_ROWS, rows_test=FALLBACK_ROWS, rows_unlabeled=0)
        return generate(syn, "test").to_pylist()[:FALLBACK_ROWS], "synthetic rows"


def run_canary(model_dir: str, variant: str, run_dir: str | None = None) -> dict[str, Any]:
    """Score the card's canary inputs with `variant` of `model_dir` in this process (CPU, 1 thread).

    Returns `{"inputs", "max_abs_diff", "atol", "source"}`; raises `PromotionRefused` when a
    probability is NaN, infinite or outside [0, 1], or differs from the card's recorded one by more
    than its `atol`, or when the card records none for `variant`."""
    from distillery.onnx_model.card import ModelCard
    from distillery.onnx_model.kinds import open_scorer

    card = ModelCard.read(model_dir)
    canary = card.canary
    if canary is None:
        inputs, source = _fallback_inputs(run_dir or str(Path(model_dir).parents[1]))
        expected, atol = None, None
        log.warning("%s: its card has no canary; checking %d %s for finite probabilities only", model_dir, len(inputs), source)
    else:
        inputs, source, atol = list(canary.get("inputs") or []), "card canary", float(canary.get("atol", 1e-3))
        recorded = (canary.get("probs") or {}).get(variant)
        if not inputs or recorded is None:
            raise PromotionRefused(f"canary: {model_dir}/model_card.json records no canary probabilities for "
                                   f"variant {variant!r} (it has {sorted(canary.get('probs') or {})}: a variant that "
                                   f"failed its gate is left out); not promoted. Serve another with --variant "
                                   f"{card.default_variant or 'fp32'}")
        expected = np.asarray(recorded, dtype=np.float64)
    scorer = open_scorer(model_dir, variant=variant, provider="cpu", intra_op_threads=1)
    probs = np.asarray(scorer.predict(inputs), dtype=np.float64).ravel()
    bad = ~(np.isfinite(probs) & (probs >= 0.0) & (probs <= 1.0))
    if bad.any():
        raise PromotionRefused(f"canary: version {card.version} ({variant}) returned {int(bad.sum())} of {probs.size} "
                               f"probabilities NaN, infinite or outside [0, 1] (first: {probs[bad][0]!r}); not promoted")
    diff = None
    if expected is not None:
        if expected.shape != probs.shape:
            raise PromotionRefused(f"canary: {probs.size} probabilities for {expected.size} recorded; not promoted")
        diff = float(np.max(np.abs(probs - expected), initial=0.0))
        if not diff <= atol:
            worst = int(np.argmax(np.abs(probs - expected)))
            raise PromotionRefused(f"canary: version {card.version} ({variant}) scores input {worst} {probs[worst]:.6f}, "
                                   f"the card recorded {expected[worst]:.6f}: |diff| {diff:.3g} > atol {atol}; not promoted")
    return {"inputs": int(probs.size), "max_abs_diff": diff, "atol": atol, "source": source, "version": card.version}


# ------------------------------------------------------------------------------- the running app


@dataclass
class RunningApp:
    """What promote needs of a running Serve app: its deployment record, settings and replicas."""

    name: str
    declarative: bool          # deployed from a config (`serve deploy`), else by `serve.run`
    details: dict[str, Any]    # Serve's instance details (every app, http options)
    info: Any                  # the CTRServer DeploymentInfo (code version, config, init args)
    args: Any                  # the app's AppArgs

    @property
    def user_config(self) -> dict[str, Any]:
        return dict(self.info.deployment_config.user_config or {})

    @property
    def url(self) -> str:
        http = self.details.get("http_options") or {}
        host = http.get("host") or "127.0.0.1"
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{http.get('port', 8000)}"

    def replica_ids(self) -> set[str]:
        """Ids of the CTRServer replicas that are up or coming up (all but the stopping ones)."""
        from distillery.serving.config import DEPLOYMENT_NAME

        dep = self.details["applications"][self.name]["deployments"][DEPLOYMENT_NAME]
        # UPDATING (being reconfigured) and STARTING ones count: each must answer with the new version
        return {r["replica_id"] for r in dep.get("replicas") or [] if r.get("state") != "STOPPING"}


def _serve_client(address: str):
    """Serve's client on the cluster at `address`; ConfigError when no Serve runs there."""
    import ray
    from ray.serve.context import _get_global_client
    from ray.serve.exceptions import RayServeException

    from distillery.ray_runtime import RaySection, ensure_ray

    ensure_ray(RaySection(address=address, log_to_driver=False))
    try:
        return _get_global_client()
    except RayServeException as err:
        raise ConfigError(f"address: no Ray Serve runs on the Ray cluster at {address} "
                          f"({ray.get_runtime_context().gcs_address}): {err}") from None


def running_app(client, app: str) -> RunningApp:
    """The app `app` as Serve's controller records it; ConfigError naming the apps it has otherwise."""
    from distillery.serving.config import DEPLOYMENT_NAME, AppArgs

    details = client.get_serve_details()
    entry = (details.get("applications") or {}).get(app)
    if entry is None or DEPLOYMENT_NAME not in (entry.get("deployments") or {}):
        raise ConfigError(f"app: no Serve application {app!r} with a {DEPLOYMENT_NAME} deployment "
                          f"(running: {sorted(details.get('applications') or {})})")
    info, _ = client.get_deployment_info(DEPLOYMENT_NAME, app)
    args = AppArgs.model_validate(info.replica_config.init_args[0])
    return RunningApp(app, entry.get("source") == "declarative", details, info, args)


def _push(client, running: RunningApp, user_config: dict[str, Any]) -> None:
    """Give the app's CTRServer deployment `user_config`, nothing else changed (same code version:
    Serve reconfigures the running replicas in place)."""
    if running.declarative:
        _push_config(client, running, user_config)
    else:
        _push_record(client, running, user_config)


def _push_config(client, running: RunningApp, user_config: dict[str, Any]) -> None:
    """Re-apply the deployed configs of every config-deployed app (Serve deletes those left out),
    ours with the new user_config: the app's code version (import path, args, runtime env) is unchanged."""
    from ray.serve.schema import ServeDeploySchema

    from distillery.serving.config import DEPLOYMENT_NAME

    apps = []
    for name, entry in running.details["applications"].items():
        if entry.get("source") != "declarative" or not entry.get("deployed_app_config"):
            continue
        config = json.loads(json.dumps(entry["deployed_app_config"]))
        if name == running.name:
            deployments = config.setdefault("deployments", [])
            ours = next((d for d in deployments if d.get("name") == DEPLOYMENT_NAME), None)
            if ours is None:
                deployments.append(ours := {"name": DEPLOYMENT_NAME})
            ours["user_config"] = user_config
        apps.append(config)
    schema = {"applications": apps}
    if running.details.get("target_capacity") is not None:
        schema["target_capacity"] = running.details["target_capacity"]
    client.deploy_apps(ServeDeploySchema.model_validate(schema))


def _push_record(client, running: RunningApp, user_config: dict[str, Any]) -> None:
    """Re-submit the deployment record `serve.run` made, with the new user_config: the same init
    args, actor options and code version (a fresh `serve.run` would draw a new code version and
    restart every replica)."""
    import ray
    from ray.serve._private.config import DeploymentConfig
    from ray.serve._private.deploy_utils import get_deploy_args
    from ray.serve.generated.serve_pb2 import ApplicationArgs, DeploymentArgs

    from distillery.serving.config import DEPLOYMENT_NAME

    info = running.info
    config = DeploymentConfig.from_proto_bytes(info.deployment_config.to_proto_bytes())
    config.user_config = user_config
    entry = running.details["applications"][running.name]
    args = get_deploy_args(DEPLOYMENT_NAME, info.replica_config, ingress=True, deployment_config=config,
                           version=info.version, route_prefix=entry.get("route_prefix"))
    proto = DeploymentArgs(deployment_name=DEPLOYMENT_NAME, deployment_config=args["deployment_config_proto_bytes"],
                           replica_config=args["replica_config_proto_bytes"], deployer_job_id=args["deployer_job_id"],
                           ingress=True, ingress_request_router=False, uses_multiplexing=False)
    if args["route_prefix"]:
        proto.route_prefix = args["route_prefix"]
    app_args = ApplicationArgs(external_scaler_enabled=bool(entry.get("external_scaler_enabled")))
    ray.get(client._controller.deploy_applications.remote({running.name: [proto.SerializeToString()]},
                                                          {running.name: app_args.SerializeToString()}))


def _health(url: str, token: str | None) -> dict[str, Any] | None:
    """/healthz as the token holder sees it; None when it does not answer 200."""
    request = urllib.request.Request(f"{url}/healthz", headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return json.loads(answer.read())
    except (OSError, ValueError):
        return None


def wait_for_version(client, running: RunningApp, version: str, user_config: dict[str, Any], token: str | None,
                     timeout_s: float) -> dict[str, str]:
    """Poll /healthz until every RUNNING replica has answered with `version`; {replica: version}.
    Raises PromotionRefused when a replica reports it could not load `user_config`, or on timeout."""
    seen: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    replicas, listed_at = running.replica_ids(), time.monotonic()
    while time.monotonic() < deadline:
        h = _health(running.url, token)
        if h is not None and "replica" not in h:
            raise ConfigError(f"{running.url}/healthz answers without the model version: set the bearer token "
                              f"in ${running.args.auth_token_env} for promote, as the server has it")
        if h is not None:
            if h.get("swap_error") and h.get("configured") == user_config:
                raise PromotionRefused(f"replica {h['replica']} could not load {user_config['model_dir']}: {h['swap_error']}")
            seen[h["replica"]] = h.get("model_version")
        if time.monotonic() - listed_at > 1.0:  # replicas come and go (autoscaling, a replaced one)
            running.details = client.get_serve_details()
            replicas, listed_at = running.replica_ids(), time.monotonic()
        if replicas and all(seen.get(r) == version for r in replicas):
            return {r: seen[r] for r in sorted(replicas)}
        time.sleep(0.05)
    raise PromotionRefused(f"timed out after {timeout_s:.0f} s: replicas answered {seen}, not all version {version}")


# ------------------------------------------------------------------------------- the promotion


def run(cfg: PromoteConfig) -> dict[str, Any]:
    """Canary, switch, push and wait (see the module docstring); returns what was promoted, old → new."""
    from distillery.onnx_model.card import ModelCard
    from distillery.serving.config import resolve_model_dir
    from distillery.serving.limits import load_token

    t0 = time.monotonic()
    target = version_folder(cfg.run_dir, cfg.out, cfg.version)
    client = _serve_client(cfg.address)
    running = running_app(client, cfg.app)
    args, old_config = running.args, running.user_config
    variant = cfg.variant or old_config.get("variant") or args.variant(args.model)
    resolve_model_dir(args.model_root, target)  # ConfigError: outside the app's model_root
    old_dir = resolve_model_dir(args.model_root, old_config.get("model_dir") or args.model.model_dir)
    old_version = ModelCard.read(old_dir).version
    canary = run_canary(target, variant, cfg.run_dir)
    print(f"[promote] canary passed: {canary['inputs']} inputs ({canary['source']}), "
          f"max |diff| {canary['max_abs_diff']}, atol {canary['atol']}", flush=True)
    link = os.path.join(os.path.abspath(cfg.run_dir), cfg.out)
    before = switch_current(link, target)
    new_config = {**old_config, "model_dir": target, "variant": variant}
    token = load_token(args.auth_token_env)
    try:
        if new_config != old_config:
            _push(client, running, new_config)
        replicas = wait_for_version(client, running, canary["version"], new_config, token, cfg.timeout_s)
    except PromotionRefused as err:
        if new_config != old_config:
            _push(client, running_app(client, cfg.app), old_config)
        if before is not None:
            switch_current(link, before)
        raise PromotionRefused(f"{err}; put back: user_config {old_config}, {link} -> {before}") from None
    result = {"app": cfg.app, "old_version": old_version, "new_version": canary["version"], "variant": variant,
              "model_dir": target, "link_switched": before != target, "replicas": replicas, "canary": canary,
              "seconds": round(time.monotonic() - t0, 2)}
    print(f"[promote] {cfg.app}: {old_version} -> {canary['version']} on {len(replicas)} replica(s) "
          f"in {result['seconds']} s ({link} -> {os.path.basename(target)})", flush=True)
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`distillery promote`'s flags (PromoteConfig's fields)."""
    parser.add_argument("--run-dir", required=True, help="run directory holding <out> and <out>.versions/")
    parser.add_argument("--version", default=None, help="version folder name or card version (default: the current one)")
    parser.add_argument("--variant", default=None, help="variant to serve (default: the one the app serves)")
    parser.add_argument("--address", default="auto", help="Ray address of the server's cluster (host:port or auto)")
    parser.add_argument("--app", default="distillery", help="Serve application name")
    parser.add_argument("--out", default="onnx", help="the current-version link's name under the run directory")
    parser.add_argument("--timeout-s", type=float, default=120.0, help="wait for every replica this long, s")


def cli_main(args: argparse.Namespace) -> int:
    """`distillery promote`: 0 promoted (or already served), 1 refused or rolled back; ConfigError to the caller."""
    fields = {k: getattr(args, k) for k in ("run_dir", "out", "version", "variant", "address", "app", "timeout_s")}
    cfg = validate_config(PromoteConfig, fields, "distillery promote")
    try:
        print(json.dumps(run(cfg), default=str))
    except PromotionRefused as err:
        print(f"promote refused: {err}", file=sys.stderr)
        return 1
    return 0


def _main(argv: list[str] | None = None) -> int:
    """`python -m distillery.serving.promote ...` until the `distillery promote` subcommand exists."""
    parser = argparse.ArgumentParser(prog="python -m distillery.serving.promote", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return cli_main(parser.parse_args(argv))
    except ConfigError as err:  # as `distillery`'s main reports it
        print(f"config error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(_main())
