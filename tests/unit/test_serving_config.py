"""The serving config has one home: the shipped YAML is found from any cwd, its defaults are the
deployment's, and offline code never imports the online package (`distillery.serving`)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from distillery.config import ConfigError, validate_config
from distillery.serving.config import (SHIPPED_CONFIG, AppArgs, app_args, decorator_options, deployment_options,
                                       load_serve_config)

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src" / "distillery"
# Modules outside serving/ that deploy the app, and so may import serving, inside the function that deploys.
DEPLOYERS = {"distillery.cli", "distillery.pipeline_stages"}


def test_the_shipped_config_is_found_from_any_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert SHIPPED_CONFIG.resolve() == (REPO / "serve" / "serve_config.yaml").resolve()
    config = load_serve_config()
    assert config == yaml.safe_load((REPO / "serve" / "serve_config.yaml").read_text())
    config["applications"][0]["args"]["model"]["model_dir"] = "patched"
    assert load_serve_config()["applications"][0]["args"]["model"]["model_dir"] == "demo/onnx"  # a fresh copy each call
    args = validate_config(AppArgs, app_args(load_serve_config()), "serve_config.yaml")
    assert args.model.model_dir == "demo/onnx" and args.model_root == str((tmp_path / "runs").resolve())


def test_a_bad_serve_config_file_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match="missing.yaml: cannot read"):
        load_serve_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="list.yaml: top level must be a mapping"):
        load_serve_config(tmp_path / "list.yaml")


def test_the_deployment_defaults_are_the_shipped_ones():
    """The decorator takes the YAML's CTRServer entry, less what each deploy sets (replicas, autoscaling, model)."""
    pytest.importorskip("ray.serve")
    from distillery.serving.deployment import CTRServer

    shipped = deployment_options(load_serve_config())
    defaults = decorator_options(load_serve_config())
    assert not {"autoscaling_config", "num_replicas", "user_config", "name"} & set(defaults)
    assert CTRServer.max_ongoing_requests == shipped["max_ongoing_requests"]
    assert CTRServer.ray_actor_options["num_cpus"] == shipped["ray_actor_options"]["num_cpus"]


def _serving_imports(path: Path) -> list[tuple[int, bool]]:
    """(line, at module level) of each import of `distillery.serving` in a source file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    in_function = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for n in ast.walk(f) if n is not f}
    out = []
    for node in ast.walk(tree):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [f"{node.module}.{a.name}" for a in node.names] if isinstance(node, ast.ImportFrom) and node.module else []
        if any(n == "distillery.serving" or n.startswith("distillery.serving.") for n in names):
            out.append((node.lineno, id(node) not in in_function))
    return out


def test_offline_code_does_not_import_the_online_package():
    """Outside serving/, only the modules that deploy import it, and only inside the function that deploys."""
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        module = ".".join(path.relative_to(SRC.parent).with_suffix("").parts).removesuffix(".__init__")
        if module == "distillery.serving" or module.startswith("distillery.serving."):
            continue
        for line, module_level in _serving_imports(path):
            if module_level or module not in DEPLOYERS:
                problems.append(f"{path.relative_to(REPO)}:{line}")
    assert not problems, ("offline code imports distillery.serving (the model lives in distillery.onnx_model): "
                          + ", ".join(problems))
