"""`distillery promote` against a running app over real HTTP on 127.0.0.1:19610 with a local Ray.

The app is started as `distillery serve` starts it (`serving.app.start_serving`: `serve.run` in
process, two fixed replicas) on a run directory laid out as compress lays it out:
`onnx.versions/<time>-<version>/` folders (tiny INT8 BERTs, each card with a canary) and the
relative link `onnx` naming the first. Then: a version whose canary disagrees with its card, and
one whose model answers NaN, are refused and nothing changes; a good version is promoted under steady load (no request fails, the
same replicas switch in place, the link names it); `distillery promote` from another process (the
CLI, over the Ray address) rolls back.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
import yaml

from distillery.loadtest import run_load
from helpers import REPO, export_int8, wait_for
from tinymodels import save_tiny_bert

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PORT = 19610
URL = f"http://127.0.0.1:{PORT}"
REPLICAS = 2
TEXT = "query: running shoes | site: sports | ad: Marathon-ready footwear | ad category: sports"


def write_canary(folder: Path, shift: float = 0.0, variant: str = "int8") -> None:
    """Record a canary in `folder`'s card as compress will: 64 inputs and the variant's probabilities
    (plus `shift`: a card that disagrees with its model)."""
    from distillery.onnx_model.scorer import OnnxScorer

    inputs = [f"{TEXT} | canary {i}" for i in range(64)]
    probs = OnnxScorer(str(folder), variant=variant, intra_op_threads=1).predict(inputs)
    card = json.loads((folder / "model_card.json").read_text())
    card["canary"] = {"inputs": inputs, "probs": {variant: [float(p) + shift for p in probs]}, "atol": 1e-3}
    (folder / "model_card.json").write_text(json.dumps(card))


def save_nan_bert(path: Path) -> Path:
    """A tiny BERT whose click logit is NaN for every input (a broken training run)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    save_tiny_bert(path, seed=3)
    model = AutoModelForSequenceClassification.from_pretrained(path)
    with torch.no_grad():
        model.classifier.bias.fill_(float("nan"))
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def run_dir(tiny_bert, tmp_path_factory):
    """A run with versions a (current), b (good), bad (b's model, a card whose canary is off by 0.05)
    and nan (a model whose every probability is NaN, recorded so in its card)."""
    run = tmp_path_factory.mktemp("promote_run")
    versions = run / "onnx.versions"
    folders = {"a": versions / "20260101T000000-a", "b": versions / "20260102T000000-b"}
    export_int8(tiny_bert, folders["a"])
    export_int8(save_tiny_bert(tmp_path_factory.mktemp("bert_b"), seed=1), folders["b"])
    for folder in folders.values():
        write_canary(folder)
    folders["bad"] = versions / "20260103T000000-bad"
    shutil.copytree(folders["b"], folders["bad"])
    write_canary(folders["bad"], shift=0.05)
    folders["nan"] = versions / "20260104T000000-nan"
    export_int8(save_nan_bert(tmp_path_factory.mktemp("bert_nan")), folders["nan"])
    write_canary(folders["nan"])  # the card agrees with its model: NaN for NaN
    (run / "onnx").symlink_to(os.path.relpath(folders["a"], run))
    return run, folders


def card_version(folder: Path) -> str:
    return json.loads((folder / "model_card.json").read_text())["version"]


@pytest.fixture(scope="module")
def server(local_ray, run_dir, tmp_path_factory):
    """`distillery serve --model-dir <run>/onnx` in process, with two fixed small replicas."""
    from distillery.serving.app import start_serving
    from distillery.serving.config import load_serve_config

    run, _ = run_dir
    config = load_serve_config()
    dep = config["applications"][0]["deployments"][0]
    dep.pop("autoscaling_config", None)
    dep.update(num_replicas=REPLICAS, ray_actor_options={"num_cpus": 0.25}, health_check_period_s=1)
    path = tmp_path_factory.mktemp("promote_cfg") / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    model_dir = str((run / "onnx").resolve())  # as `distillery serve` resolves --model-dir
    serving = start_serving(model_dir, port=PORT, config=str(path), model_root=str(Path(model_dir).parent),
                            ingress=os.environ.get("DISTILLERY_TEST_INGRESS", "auto"))
    try:
        wait_for(lambda: len(replica_ids()) == REPLICAS, 120, "two running replicas")
        yield serving
    finally:
        serving.shutdown()


def health() -> dict | None:
    try:
        r = requests.get(f"{URL}/healthz", timeout=2)
        return r.json() if r.status_code == 200 else None
    except requests.RequestException:
        return None


def replica_ids() -> set[str]:
    from ray.serve.context import _get_global_client

    dep = _get_global_client().get_serve_details()["applications"]["distillery"]["deployments"]["CTRServer"]
    return {r["replica_id"] for r in dep["replicas"] if r["state"] == "RUNNING"}


def versions_served(polls: int = 40) -> set[str]:
    """Versions /healthz reported over `polls` answers (both replicas answer among them)."""
    return {h["model_version"] for h in (health() for _ in range(polls)) if h}


def fresh_texts():
    """(path, body, rows) for run_load: a text never sent before on every request."""
    i = 0
    while True:
        i += 1
        yield "/predict", json.dumps({"texts": [f"{TEXT} | fresh {time.monotonic_ns()} {i}"]}).encode(), 1


def promote(run: Path, **fields):
    from distillery.serving.promote import PromoteConfig, run as promote_run

    import ray

    return promote_run(PromoteConfig(run_dir=str(run), address=ray.get_runtime_context().gcs_address, **fields))


def test_a_canary_that_disagrees_with_its_card_is_refused_and_nothing_changes(server, run_dir):
    from distillery.serving.promote import PromotionRefused

    run, folders = run_dir
    before = replica_ids()
    with pytest.raises(PromotionRefused, match=r"canary: .*\|diff\| .* > atol 0.001; not promoted"):
        promote(run, version="bad")
    assert os.path.realpath(run / "onnx") == str(folders["a"].resolve())
    assert versions_served() == {card_version(folders["a"])}
    assert replica_ids() == before


def test_a_model_emitting_nan_is_refused_though_its_card_agrees(server, run_dir):
    from distillery.serving.promote import PromotionRefused

    run, folders = run_dir
    with pytest.raises(PromotionRefused, match=r"returned 64 of 64 probabilities NaN, infinite or outside \[0, 1\]"):
        promote(run, version="nan")
    assert os.path.realpath(run / "onnx") == str(folders["a"].resolve())
    assert versions_served() == {card_version(folders["a"])}


def test_promotion_under_load_fails_no_request_and_switches_link_and_every_replica(server, run_dir):
    run, folders = run_dir
    before = replica_ids()
    stop, results = threading.Event(), []

    def load():
        gen = fresh_texts()
        while not stop.is_set():
            results.append(run_load(URL, gen, requests=10_000, concurrency=2, max_seconds=0.5))

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    try:
        wait_for(lambda: len(results) >= 2, 30, "steady load")
        result = promote(run, version="b", timeout_s=60)
        time.sleep(1.0)
    finally:
        stop.set()
        loader.join(timeout=30)
    statuses: dict[int, int] = {}
    for r in results:
        for s, n in r.statuses.items():
            statuses[s] = statuses.get(s, 0) + n
    print(f"\npromotion under load: {statuses}, {result['seconds']} s")
    assert set(statuses) == {200} and statuses[200] > 50, statuses
    assert result["old_version"] == card_version(folders["a"]) and result["new_version"] == card_version(folders["b"])
    assert set(result["replicas"]) == before == replica_ids()  # reconfigured in place, not restarted
    assert os.path.realpath(run / "onnx") == str(folders["b"].resolve())
    assert os.readlink(run / "onnx") == os.path.relpath(folders["b"], run)  # relative: the run may move
    assert versions_served() == {card_version(folders["b"])}


def test_the_cli_from_another_process_rolls_back(server, run_dir):
    import ray

    run, folders = run_dir
    code = "import sys; from distillery.serving.promote import _main; sys.exit(_main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, "--run-dir", str(run), "--version", "a",
                           "--address", ray.get_runtime_context().gcs_address], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["new_version"] == card_version(folders["a"]) and result["link_switched"]
    assert os.path.realpath(run / "onnx") == str(folders["a"].resolve())
    assert versions_served() == {card_version(folders["a"])}
