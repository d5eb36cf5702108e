"""Reading the YAML configs of the original DEIMv2 code (Intellindust-AI-Lab/DEIMv2).

The original ``YAMLConfig`` merges a file the way this module does: every path listed under
``__include__`` is loaded first (recursively, relative to the file that lists it), in order, and
the file's own keys go on top. Mappings merge key by key at any depth; any other value (lists
included) replaces the earlier one.

Model settings live in sections named after the classes the config selects: ``model: DEIM``
names the ``DEIM`` section, whose ``backbone`` / ``encoder`` / ``decoder`` entries name the
sections holding those modules' constructor arguments (``DINOv3STAs``, ``HybridEncoder``,
``DEIMTransformer``, ...). :class:`Settings` records where each architecture value finally came
from (the YAML, the weights, or the original code's default) for the conversion summary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from transformers import Deimv2Config

from ...errors import CheckpointError, ConfigError
from ..field_types import FieldTypeError, coerce, declared_types

INCLUDE_KEY = "__include__"

MISSING: Any = object()


def merge_into(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Merge ``update`` into ``base`` in place: mappings recursively, everything else replaced."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge_into(base[key], value)
        else:
            base[key] = value
    return base


def load_original_yaml(
    path: str | Path, _chain: tuple[Path, ...] = (), origins: dict[tuple[str, ...], Path] | None = None
) -> dict[str, Any]:
    """The merged content of an original DEIMv2 YAML file and everything it includes.

    ``origins``, when given, receives for every key path (``("HybridEncoder", "depth_mult")``)
    the file whose value won the merge, so that errors name the file to edit.
    """
    path = Path(path).expanduser()
    resolved = path.resolve()
    if resolved in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, resolved))
        raise ConfigError(f"{path}: {INCLUDE_KEY} includes itself ({cycle})")
    if not path.is_file():
        where = f" (included from {_chain[-1]})" if _chain else ""
        raise ConfigError(f"config file {str(path)!r} does not exist{where}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        detail = " ".join(str(exc).split())
        raise ConfigError(f"{path}: not a readable YAML file ({detail})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level, got a {type(data).__name__}")
    includes = data.pop(INCLUDE_KEY, None) or []
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(p, str) for p in includes):
        raise ConfigError(f"{path}: {INCLUDE_KEY} must be a list of file paths, got {includes!r}")
    merged: dict[str, Any] = {}
    for include in includes:
        include_path = Path(include).expanduser()
        if not include_path.is_absolute():
            include_path = path.parent / include_path
        merge_into(merged, load_original_yaml(include_path, (*_chain, resolved), origins))
    if origins is not None:
        origins.update(dict.fromkeys(_key_paths(data), path))
    return merge_into(merged, data)


def _key_paths(data: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for key, value in data.items():
        here = (*prefix, str(key))
        paths.append(here)
        if isinstance(value, dict):
            paths.extend(_key_paths(value, here))
    return paths


class OriginalConfig:
    """A merged original DEIMv2 config with access to the model sections it selects."""

    def __init__(self, data: dict[str, Any], path: Path, origins: dict[tuple[str, ...], Path] | None = None):
        self.data = data
        self.path = path
        self.origins = origins or {}

    @classmethod
    def load(cls, path: str | Path) -> OriginalConfig:
        path = Path(path).expanduser()
        origins: dict[tuple[str, ...], Path] = {}
        return cls(load_original_yaml(path, origins=origins), path, origins)

    def origin(self, *keys: str) -> Path:
        """The file that set ``keys`` (e.g. ``"HybridEncoder", "depth_mult"``); the config itself if unknown."""
        return self.origins.get(tuple(keys), self.path)

    def section(self, name: str | None) -> dict[str, Any]:
        """The constructor arguments of a module class (``{}`` when the YAML has none)."""
        if name is None:
            return self.data
        value = self.data.get(name) or {}
        if not isinstance(value, dict):
            raise ConfigError(f"{self.path}: {name} must be a mapping of settings, got {value!r}")
        return value

    def model_parts(self) -> dict[str, str | None]:
        """The class names the config selects for backbone, encoder and decoder (None if unsaid)."""
        model = self.data.get("model", "DEIM")
        section = self.section(model) if isinstance(model, str) else {}
        return {part: section.get(part) for part in ("backbone", "encoder", "decoder")}

    def val_normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """``(mean, std)`` applied after /255 by the val transforms, or None when they say nothing.

        Follows ``val_dataloader.dataset.transforms.ops``: ``ConvertPILImage(scale=True)`` divides
        by 255, ``Normalize`` subtracts ``mean`` and divides by ``std``; no ``Normalize`` means
        mean 0 and std 1.
        """
        loader = self.data.get("val_dataloader")
        ops = None
        if isinstance(loader, dict):
            dataset = loader.get("dataset")
            transforms = dataset.get("transforms") if isinstance(dataset, dict) else None
            ops = transforms.get("ops") if isinstance(transforms, dict) else None
        if not isinstance(ops, list):
            return None
        scaled = True
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        for op in ops:
            if not isinstance(op, dict):
                continue
            if op.get("type") == "ConvertPILImage":
                scaled = bool(op.get("scale", True))
            elif op.get("type") == "Normalize":
                try:
                    mean = tuple(float(v) for v in op["mean"])
                    std = tuple(float(v) for v in op["std"])
                except (KeyError, TypeError, ValueError):
                    raise ConfigError(
                        f"{self.path}: val_dataloader Normalize needs 'mean' and 'std' lists of 3 numbers, got {op!r}"
                    ) from None
                if len(mean) != 3 or len(std) != 3 or not all(s > 0 for s in std):
                    raise ConfigError(f"{self.path}: val_dataloader Normalize mean/std must be 3 numbers (std > 0)")
        if not scaled:
            # Pixels stay in 0..255: (255 x - m) / s == (x - m / 255) / (s / 255) for x in 0..1.
            mean = tuple(m / 255.0 for m in mean)
            std = tuple(s / 255.0 for s in std)
        return mean, std


# ----------------------------------------------------------------------------- provenance


@dataclass
class Setting:
    """One architecture value of a converted checkpoint and where it came from."""

    key: str  # "DEIMTransformer.hidden_dim"
    value: Any
    source: str  # "config" | "weights" | "default"
    note: str = ""


@dataclass
class Settings:
    """Resolves architecture values from the YAML, the weights and the original defaults.

    ``resolve`` takes the YAML value when there is one (coerced to the type the receiving
    transformers field declares, then checked against what the weights say), otherwise what the
    weights say, otherwise the original code's default, and otherwise raises an error naming the key.
    """

    config: OriginalConfig
    checkpoint: str | None  # None: the architecture comes from the YAML alone
    items: list[Setting] = field(default_factory=list)
    fields: dict[str, tuple[str | None, str]] = field(default_factory=dict)  # Deimv2Config field -> YAML key

    def resolve(
        self,
        section: str | None,
        key: str,
        *,
        field: str | None = None,
        expect: Any = None,
        weights: Any = MISSING,
        default: Any = MISSING,
        same=None,
        why: str = "",
    ) -> Any:
        """One value.

        Args:
            section: the YAML section (module class name), None for top-level keys.
            key: the key inside the section.
            field: the ``Deimv2Config`` field the value feeds: the YAML value is coerced to its
                declared type (``depth_mult: 1`` -> 1.0), and errors about the field name this key.
            expect: the type for a value that feeds no ``Deimv2Config`` field (``int``, ``list[int]``).
            weights: the value the weights imply (``MISSING`` when they cannot tell).
            default: the original code's default (``MISSING`` when it has none that works).
            same: ``same(yaml_value, weights_value) -> bool`` when plain equality is not the test.
            why: how the weights tell it (shown in errors and the summary).
        """
        name = f"{section}.{key}" if section else key
        if field is not None:
            self.fields[field] = (section, key)
            expect = declared_types(Deimv2Config)[field]
        values = self.config.section(section) if section else self.config.data
        value = values.get(key, MISSING)
        if value is not MISSING and value is not None:
            if expect is not None:
                value = self.coerce(section, key, value, expect)
            if weights is not MISSING:
                agrees = same(value, weights) if same else _equal(value, weights)
                if not agrees:
                    raise CheckpointError(
                        f"config {self.config.path} and weights {self.checkpoint} disagree: {name} is {value!r} in "
                        f"the config but {weights!r} in the weights ({why}). Use the config the checkpoint was "
                        f"trained with"
                    )
            note = "matches the weights" if weights is not MISSING else ""
            self.items.append(Setting(name, value, "config", note))
            return value
        if weights is not MISSING:
            self.items.append(Setting(name, weights, "weights", why))
            return weights
        if default is not MISSING:
            self.items.append(Setting(name, default, "default", "the original code's default"))
            return default
        reason = f" ({why})" if why else ""
        source = "the weights cannot tell it" if self.checkpoint else "there are no weights to tell it"
        raise ConfigError(
            f"{self.config.path}: {name} is missing and {source}{reason}; add it to the YAML "
            f"(the value the checkpoint was trained with)"
        )

    def coerce(self, section: str | None, key: str, value: Any, expect: Any) -> Any:
        """A YAML value as type ``expect``; otherwise one ConfigError naming the file that set it."""
        try:
            return coerce(value, expect)
        except FieldTypeError as exc:
            raise self.type_error(section, key, exc) from None

    def type_error(self, section: str | None, key: str, exc: FieldTypeError) -> ConfigError:
        keys = (section, key) if section else (key,)
        return ConfigError(
            f"{self.config.origin(*keys)}: {'.'.join(keys)} is {exc.value!r}; expected {exc.expected}. Fix the value "
            f"in that file"
        )

    def field_error(self, config_field: str, exc: FieldTypeError) -> ConfigError:
        """The error for a ``Deimv2Config`` field whose final value has the wrong type."""
        if config_field in self.fields:
            return self.type_error(*self.fields[config_field], exc)
        return ConfigError(
            f"{self.config.path}: the architecture sets {config_field} to {exc.value!r}, but transformers expects "
            f"{exc.expected}; check the values this config gives for it"
        )

    def note(self, key: str, value: Any, source: str, note: str = "") -> None:
        """Record a value decided elsewhere (e.g. normalisation, class names)."""
        self.items.append(Setting(key, value, source, note))

    def by_source(self, source: str) -> list[Setting]:
        return [s for s in self.items if s.source == source]


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return float(a) == float(b)
    return a == b
