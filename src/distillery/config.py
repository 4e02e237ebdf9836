"""Typed job configs: YAML files plus `key=value` overrides, validated before any work starts.

    cfg = load_config(LabelConfig, "jobs/configs/label.yaml", ["batch_size=64", "actors.num_cpus=0.5"])

Every job has one pydantic model with `extra="forbid"`, so a misspelt or misplaced key fails at
once with a message that names the field (`ConfigError: label.yaml: actors.num_cpu: extra inputs are
not permitted`). A job config that works in one run directory derives from `RunSection`: `{run_dir}`
in its paths is replaced once, as the config is built, so no job substitutes it again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, ClassVar, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = ["Section", "RunSection", "AbsolutePath", "FolderName", "ConfigError", "load_config", "validate_config", "parse_overrides",
           "substitute_run_dir", "config_hash"]


class Section(BaseModel):
    """Base of every config model: unknown keys are errors, defaults are validated too."""

    model_config = ConfigDict(extra="forbid", validate_default=True, protected_namespaces=())


class ConfigError(ValueError):
    """A config that cannot work; the message names the offending field."""


def _absolute(path: str) -> str:
    from distillery import io  # pyarrow: loaded when a config is validated, not by `distillery --help`

    return io.absolute(path)


# A local path made absolute when the config is built (Ray workers do not run in the driver's cwd);
# a URI is kept as written.
AbsolutePath = Annotated[str, AfterValidator(_absolute)]


def _folder_name(name: str) -> str:
    if not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith((".", "_")) or ":" in name:
        raise ValueError(f"{name!r}: expected one folder name inside run_dir (no '/', '..', ':', leading '.' or '_'); "
                         "the job replaces that folder, so it must be its own")
    return name


# An output a job replaces wholesale: one folder name under run_dir, never a path that could name the
# run directory itself (`..`), an absolute path outside it (`/tmp/x`) or a hidden folder of the run.
FolderName = Annotated[str, AfterValidator(_folder_name)]


def substitute_run_dir(value: Any, run_dir: str) -> Any:
    """`value` with `{run_dir}` replaced in every string in it (lists, dicts' values, nested configs);
    the same object where there is nothing to replace."""
    if isinstance(value, str):
        return value.replace("{run_dir}", run_dir) if "{run_dir}" in value else value
    if isinstance(value, (list, tuple)):
        items = [substitute_run_dir(v, run_dir) for v in value]
        return type(value)(items) if any(a is not b for a, b in zip(items, value)) else value
    if isinstance(value, dict):
        items = {k: substitute_run_dir(v, run_dir) for k, v in value.items()}
        return items if any(items[k] is not v for k, v in value.items()) else value
    if isinstance(value, BaseModel):
        changed = {name: new for name in type(value).model_fields
                   if (new := substitute_run_dir(old := getattr(value, name), run_dir)) is not old}
        return value.model_copy(update=changed) if changed else value
    return value


class RunSection(Section):
    """Base of a job config that works in one run directory. `{run_dir}` in any of its strings
    (nested sections, lists and dicts too) is replaced by `run_dir`, without a trailing slash, once,
    as the config is built: a job reads finished paths and never substitutes again."""

    run_dir: str = Field("runs/demo", description="run directory (local path or URI)")
    # True: `{run_dir}` becomes the absolute run directory, for jobs whose workers run in another cwd
    absolute_paths: ClassVar[bool] = False

    @model_validator(mode="after")
    def _substitute_run_dir(self) -> "RunSection":
        run_dir = (_absolute(self.run_dir) if self.absolute_paths else self.run_dir).rstrip("/")
        for name in type(self).model_fields:
            value = getattr(self, name)
            if (new := substitute_run_dir(value, run_dir)) is not value:
                setattr(self, name, new)
        return self


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
