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
