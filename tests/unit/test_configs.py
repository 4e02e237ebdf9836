"""Every shipped YAML parses into its typed config (a broken shipped config fails here, not in a job)."""

import importlib
from pathlib import Path

import pytest

from distillery.config import ConfigError, load_config, parse_overrides

REPO = Path(__file__).resolve().parents[2]

# file-name prefix -> config class; the longest matching prefix wins
CONFIG_CLASSES = {
    "label": "distillery.labeling:LabelConfig",
    "teacher": "distillery.training.job:TeacherJobConfig",
    "train": "distillery.training.job:TrainJobConfig",
    "evaluate": "distillery.evaluate:EvaluateConfig",
    "compress": "distillery.compress.job:CompressConfig",
    "size": "distillery.compress.size:SizeConfig",
    "demo": "distillery.pipeline:PipelineConfig",
    "pipeline": "distillery.pipeline:PipelineConfig",
    "synthetic": "distillery.data.synthetic:SyntheticConfig",
}


def _class_for(path: Path):
    prefix = max((p for p in CONFIG_CLASSES if path.stem.startswith(p)), key=len, default=None)
    assert prefix, f"{path.name}: no config class registered in CONFIG_CLASSES"
    module, name = CONFIG_CLASSES[prefix].split(":")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("path", sorted((REPO / "jobs" / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_config_parses(path):
    cfg = load_config(_class_for(path), path)
    assert cfg.model_dump()


def test_overrides_are_typed_and_nested():
    assert parse_overrides(["a.b=3", "a.c=0.5", "d=[1, 2]", "e=text", "f=true"]) == {
        "a": {"b": 3, "c": 0.5}, "d": [1, 2], "e": "text", "f": True}
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["novalue"])


def test_unknown_and_invalid_fields_are_named(tmp_path):
    from distillery.labeling import LabelConfig

    bad = tmp_path / "bad.yaml"
    bad.write_text("teacher: {kind: hf-classifier}\nactors: {num_cpu: 1}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: actors.num_cpu: Extra inputs"):
        load_config(LabelConfig, bad)
    with pytest.raises(ConfigError, match="format"):
        load_config(LabelConfig, None, ["teacher.kind=hf-classifier", "format=xml"])
    with pytest.raises(ConfigError, match="teacher"):
        load_config(LabelConfig, None, [])
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(LabelConfig, bad)
