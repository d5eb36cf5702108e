"""The YAML loader: ``include:`` chains, ``-o key=value`` overrides, relative paths, validation.

A config file is YAML. ``include:`` lists other files (paths relative to the including file, or
the name of a packaged config such as ``progressive_relative`` when no such file is there)
merged in order, later wins, the including file last; ``null`` over a mapping removes it (an
included phase or gate). ``-o key.sub=value`` overrides apply on top. Unknown keys are rejected
with a did-you-mean suggestion. Relative paths inside a file are resolved against that file's
folder, so a config can be moved with its data.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ..errors import ConfigError
from .schema import Config

PACKAGED_CONFIGS = "configs"


def _packaged(filename: str) -> Path:
    return Path(str(resources.files("defectfusion").joinpath(PACKAGED_CONFIGS, filename)))


def packaged_config_names() -> list[str]:
    """The names of the configs shipped with the package."""
    return sorted(p.stem for p in _packaged("baseline.yml").parent.glob("*.yml"))


def _close_names(name: str) -> list[str]:
    return difflib.get_close_matches(Path(name).stem, packaged_config_names(), n=3)


def packaged_config_path(name: str) -> Path:
    """Path of a config shipped with the package, by name (``baseline`` or ``baseline.yml``)."""
    filename = name if name.endswith((".yml", ".yaml")) else f"{name}.yml"
    path = _packaged(filename)
    if not path.is_file():
        close = _close_names(filename)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"no packaged config named {name!r}.{hint} Packaged configs: {', '.join(packaged_config_names())}."
        )
    return path


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A path that exists, else a packaged config name."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.suffix in {".yml", ".yaml"} and (path.parent != Path(".") or path.exists()):
        raise ConfigError(f"config file {str(path)!r} does not exist")
    return packaged_config_path(str(name_or_path))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {str(path)!r}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: invalid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level, got {type(data).__name__}")
    return data


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively merge ``update`` into a copy of ``base``; mappings merge, everything else replaces.

    ``null`` over a mapping removes it (e.g. ``gates: {phase1: null}`` drops an included gate).
    """
    merged = copy.deepcopy(dict(base))
    for key, value in update.items():
        if value is None and isinstance(merged.get(key), Mapping):
            del merged[key]
        elif isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


# Config keys holding file paths: relative values are resolved against the file that sets them.
PATH_KEYS: set[tuple[str, ...]] = {
    ("model", "checkpoint"),
    ("model", "backbone_weights"),
    ("data", "train", "annotations"),
    ("data", "train", "images"),
    ("data", "val", "annotations"),
    ("data", "val", "images"),
    ("data", "test", "annotations"),
    ("data", "test", "images"),
    ("train", "cache_dir"),
    ("fusion", "descriptions"),
    ("fusion", "cache_dir"),
}


def _resolve_path_value(value: str, base_dir: Path) -> str:
    path = Path(value).expanduser()
    if path.is_absolute():
        return str(path)
    looks_like_path = "/" in value or "\\" in value or path.suffix != ""
    # A bare word (e.g. the packaged descriptions "defects6") stays a name unless such a file exists.
    if looks_like_path or (base_dir / path).exists():
        return str((base_dir / path).resolve())
    return value


def _resolve_encoder_spec(spec: str, base_dir: Path) -> str:
    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        return spec
    if kind == "file":
        return f"file:{_resolve_path_value(rest, base_dir)}"
    # clip:/sentence: take hub names like "org/name": only an existing local folder is a path.
    local = Path(rest).expanduser()
    if not local.is_absolute() and (base_dir / local).exists():
        return f"{kind}:{(base_dir / local).resolve()}"
    return spec


def _resolve_relative_paths(data: dict[str, Any], base_dir: Path, prefix: tuple[str, ...] = ()) -> None:
    for key, value in data.items():
        here = (*prefix, key)
        if isinstance(value, dict):
            _resolve_relative_paths(value, base_dir, here)
        elif isinstance(value, str) and value and here in PATH_KEYS:
            data[key] = _resolve_path_value(value, base_dir)
        elif isinstance(value, str) and value and here == ("fusion", "encoder"):
            data[key] = _resolve_encoder_spec(value, base_dir)


def _included(path: Path, include: str) -> Path:
    """The file ``include`` names from the config ``path``: beside it, or else a packaged config by name."""
    included = Path(include)
    target = included if included.is_absolute() else path.parent / included
    if target.is_file():
        return target
    if not included.is_absolute() and len(included.parts) == 1 and included.stem in packaged_config_names():
        return packaged_config_path(included.stem)
    close = _close_names(include)
    hint = f"; did you mean the packaged {', '.join(close)}?" if close else ""
    raise ConfigError(f"{path}: included file {include!r} not found (looked for {target}){hint}")


def load_raw(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a config file and its ``include:`` chain into one merged dict (not yet validated)."""
    path = resolve_config_path(path).resolve()
    if path in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, path))
        raise ConfigError(f"include cycle: {chain}")
    data = _read_yaml(path)
    includes = data.pop("include", []) or []
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise ConfigError(f"{path}: 'include' must be a list of file paths, got {includes!r}")
    _resolve_relative_paths(data, path.parent)
    merged: dict[str, Any] = {}
    for include in includes:
        merged = deep_merge(merged, load_raw(_included(path, include), (*_seen, path)))
    return deep_merge(merged, data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], parsed value); the value is read as YAML (numbers, lists, null)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.subkey=value")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """``data`` with ``key.sub=value`` overrides applied; relative paths in them mean the working directory."""
    result = copy.deepcopy(data)
    for text in overrides:
        parts, value = parse_override(text)
        if isinstance(value, str) and value:
            if tuple(parts) in PATH_KEYS:
                value = _resolve_path_value(value, Path.cwd())
            elif tuple(parts) == ("fusion", "encoder"):
                value = _resolve_encoder_spec(value, Path.cwd())
        node = result
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = value
    return result


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names valid at ``loc`` (a pydantic error location), for suggestions."""
    import typing

    current: Any = model
    skip_key = False
    for part in loc[:-1]:
        if isinstance(part, int) or skip_key:
            skip_key = False
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)) or part not in current.model_fields:
            return []
        annotation = current.model_fields[part].annotation
        skip_key = typing.get_origin(annotation) is dict  # e.g. phases.<name>.<field>
        candidates = [annotation, *typing.get_args(annotation)]
        current = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if current is None:
            return []
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def format_validation_error(error: ValidationError, source: str, schema: type[BaseModel] = Config) -> str:
    lines = []
    for item in error.errors():
        loc = tuple(item["loc"])
        dotted = ".".join(str(p) for p in loc)
        if item["type"] == "extra_forbidden":
            known = _known_keys(schema, loc)
            close = difflib.get_close_matches(str(loc[-1]), known, n=3)
            hint = (
                f" Similar keys: {', '.join(close)}."
                if close
                else (f" Known keys: {', '.join(known)}." if known else "")
            )
            lines.append(f"unknown key '{dotted}'.{hint}")
        else:
            lines.append(f"'{dotted}': {item['msg']} (got {item.get('input')!r})")
    return f"{source}: " + "; ".join(lines)


def validate_config(data: Mapping[str, Any], source: str = "config", schema: type[BaseModel] = Config) -> Any:
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, schema)) from None


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Load, merge includes, apply ``-o`` overrides and validate. ``None`` gives the defaults."""
    data = load_raw(path) if path is not None else {}
    data = apply_overrides(data, overrides)
    return validate_config(data, str(path) if path is not None else "config")


def dump_config(config: BaseModel) -> str:
    """The resolved config as YAML (what a run folder keeps as ``config.yaml``)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
