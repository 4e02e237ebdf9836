"""Typed job configs: YAML files plus `key=value` overrides, validated before any work starts.

    cfg = load_config(LabelConfig, "jobs/configs/label.yaml", ["batch_size=64", "actors.num_cpus=0.5"])

Every job has one pydantic model with `extra="forbid"`, so a misspelt or misplaced key fails at
once with a message that names the field (`ConfigError: label.yaml: actors.num_cpu: extra inputs are
not permitted`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = ["Section", "ConfigError", "load_config", "parse_overrides", "config_hash"]


class Section(BaseModel):
    """Base of every config model: unknown keys are errors, defaults are validated too."""

    model_config = ConfigDict(extra="forbid", validate_default=True, protected_namespaces=())


class ConfigError(ValueError):
    """A config that cannot work; the message names the offending field."""


C = TypeVar("C", bound=BaseModel)


def _coerce_scalar(text: str) -> Any:
    """`key=value` values are YAML scalars: `3` is an int, `0.5` a float, `[0, 2]` a list."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_overrides(items: list[str] | tuple[str, ...] | None) -> dict[str, Any]:
    """Turn `["a.b=1", "c=x"]` into the nested dict `{"a": {"b": 1}, "c": "x"}`."""
    nested: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected key=value")
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part} is both a value and a section")
            node = child
        node[parts[-1]] = _coerce_scalar(value)
    return nested


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _describe(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "<root>"
        lines.append(f"{source}: {field}: {e['msg']}")
    return "\n".join(lines)


def validate_config(cls: type[C], data: dict[str, Any], source: str = "config") -> C:
    """Build `cls` from a dict, turning pydantic's error into a ConfigError naming each field."""
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_describe(err, source)) from None


def load_config(cls: type[C], path: str | Path | None = None, overrides: list[str] | None = None) -> C:
    """Load YAML at `path` (optional), apply `key=value` overrides, validate into `cls`."""
    data: dict[str, Any] = {}
    source = "config"
    if path is not None:
        source = Path(path).name
        try:
            text = Path(path).read_text()
        except OSError as err:
            raise ConfigError(f"{path}: cannot read config ({err.strerror})") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping, got {type(loaded).__name__}")
        data = loaded
    data = _merge(data, parse_overrides(overrides))
    return validate_config(cls, data, source)


def config_hash(cfg: BaseModel) -> str:
    """Stable short hash of a config's content, for lineage in manifests and model cards."""
    blob = json.dumps(cfg.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
