"""Class descriptions: the text side of the fusion.

A descriptions file is YAML (see ``configs/descriptions/defects6.yml``)::

    version: 1
    description_template: "A defect showing {description}"
    keywords_template: "a surface with {keywords}"
    use: [description, keywords, contrast, prompts]
    classes:
      - name: ROTURA_FRACTURA          # must equal the dataset's category name
        description: DEEP crack ...
        keywords: [deep crack, fracture]
        contrast: "penetrates deeply ... vs intact surface"
        prompts: ["a photo of a cracked metal part"]   # optional extra prompts
    confusable_pair: [ROTURA_FRACTURA, RAYONES_ARANAZOS]   # optional: the look-alikes to call out

Every class yields one or more prompts (its *prompt ensemble*); the text encoder embeds each and
the class embedding is their re-normalised mean.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import ConfigError, DataError

Field_ = Literal["description", "keywords", "contrast", "prompts"]
PACKAGED = "configs/descriptions"


class ClassDescription(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str
    keywords: list[str] = Field(default_factory=list)
    contrast: str | None = None
    prompts: list[str] = Field(default_factory=list)

    @field_validator("name", "description")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()


class DescriptionSet(BaseModel):
    """A validated descriptions file."""

    model_config = ConfigDict(extra="forbid")

    version: int = 1
    description_template: str = "A defect showing {description}"
    keywords_template: str = "a surface with {keywords}"
    use: list[Field_] = Field(default_factory=lambda: ["description", "keywords", "contrast", "prompts"])
    classes: list[ClassDescription]
    confusable_pair: tuple[str, str] | None = Field(
        None, description="the two look-alike classes evaluations call out (confusions both ways)"
    )
    source: str | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _unique_names(self) -> DescriptionSet:
        seen: set[str] = set()
        for item in self.classes:
            if item.name in seen:
                raise ValueError(f"class {item.name!r} is described twice")
            seen.add(item.name)
        if not self.classes:
            raise ValueError("'classes' is empty")
        if "description" not in self.use and "prompts" not in self.use:
            raise ValueError("'use' must include 'description' or 'prompts'")
        if self.confusable_pair is not None:
            a, b = self.confusable_pair
            unknown = [n for n in (a, b) if n not in seen]
            if a == b or unknown:
                raise ValueError(
                    f"confusable_pair must name two different described classes, got {[a, b]}"
                    + (f" ({', '.join(unknown)} not described)" if unknown else "")
                )
        return self

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    def prompts_for(self, item: ClassDescription) -> list[str]:
        """The prompt ensemble of one class, in a fixed order."""
        prompts: list[str] = []
        if "description" in self.use:
            prompts.append(self.description_template.format(name=item.name, description=item.description))
        if "keywords" in self.use and item.keywords:
            prompts.append(self.keywords_template.format(name=item.name, keywords=", ".join(item.keywords)))
        if "contrast" in self.use and item.contrast:
            prompts.append(item.contrast)
        if "prompts" in self.use:
            prompts.extend(p for p in item.prompts if p.strip())
        return prompts or [self.description_template.format(name=item.name, description=item.description)]

    def prompts(self) -> list[list[str]]:
        """One prompt list per class, in class order."""
        return [self.prompts_for(c) for c in self.classes]

    def ordered_like(self, class_names: Sequence[str]) -> DescriptionSet:
        """The same set with classes in the dataset's order, after checking both sides agree."""
        validate_against_classes(self, class_names)
        by_name = {c.name: c for c in self.classes}
        return self.model_copy(update={"classes": [by_name[n] for n in class_names]})


def packaged_descriptions() -> list[str]:
    folder = resources.files("defectfusion").joinpath(PACKAGED)
    return sorted(Path(str(p)).stem for p in folder.iterdir() if str(p).endswith(".yml"))


def resolve_descriptions_path(name_or_path: str | Path) -> Path:
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    if path.suffix or "/" in str(name_or_path):
        raise DataError(f"descriptions file {str(path)!r} does not exist")
    packaged = Path(str(resources.files("defectfusion").joinpath(PACKAGED, f"{name_or_path}.yml")))
    if packaged.is_file():
        return packaged
    available = packaged_descriptions()
    close = difflib.get_close_matches(str(name_or_path), available, n=2)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise DataError(
        f"no descriptions file or packaged description set named {str(name_or_path)!r}.{hint} "
        f"Packaged sets: {', '.join(available)}."
    )


def load_descriptions(name_or_path: str | Path) -> DescriptionSet:
    """Read and validate a descriptions YAML (a path, or the name of a packaged set)."""
    path = resolve_descriptions_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise DataError(f"cannot read descriptions file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a mapping with a 'classes' list, got {type(data).__name__}")
    try:
        result = DescriptionSet.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'file'}: {e['msg']}" for e in exc.errors())
        raise DataError(f"{path}: invalid descriptions: {problems}") from None
    return result.model_copy(update={"source": str(path)})


def validate_against_classes(descriptions: DescriptionSet, class_names: Sequence[str]) -> None:
    """Raise one error listing the dataset classes without a description and vice versa."""
    described, dataset = set(descriptions.names), list(class_names)
    missing = [n for n in dataset if n not in described]
    extra = [n for n in descriptions.names if n not in set(dataset)]
    if missing or extra:
        where = descriptions.source or "descriptions"
        parts = []
        if missing:
            parts.append(f"dataset classes without a description: {', '.join(missing)}")
        if extra:
            parts.append(f"described classes not in the dataset: {', '.join(extra)}")
        raise ConfigError(
            f"{where} does not match the dataset's categories ({'; '.join(parts)}). "
            f"Dataset classes: {', '.join(dataset)}. Edit the descriptions so every class has exactly one entry."
        )


def descriptions_near(annotations: str | Path) -> list[Path]:
    """Descriptions files that belong to a dataset: ``descriptions.yml`` beside its annotations or one level up.

    ``defectfusion synth`` writes ``<out>/descriptions.yml`` beside ``<out>/train`` and ``<out>/val``.
    """
    folder = Path(annotations).expanduser().parent
    return [p for p in (folder / "descriptions.yml", folder.parent / "descriptions.yml") if p.is_file()]


def _checked_pair(pair: Sequence[str], names: list[str], what: str) -> tuple[str, str]:
    if len(pair) != 2 or pair[0] == pair[1]:
        raise ConfigError(f"{what} needs two different class names, got {list(pair)}")
    for name in pair:
        if name not in names:
            close = [n for n in names if name.lower() in n.lower()] or difflib.get_close_matches(name, names, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{what}: unknown class {name!r}; the classes are {', '.join(names)}.{hint}")
    return (pair[0], pair[1])


def resolve_pair(
    pair: Sequence[str] | None,
    class_names: Sequence[str],
    descriptions: Sequence[str | Path | None] = (),
    configured: Sequence[str] | None = None,
) -> tuple[str, str] | None:
    """The confusable pair to call out, checked against the classes.

    In this order: ``pair`` (``--pair``), ``configured`` (a run config's ``data.confusable_pair``),
    the first ``confusable_pair`` of ``descriptions`` (files or packaged names; unreadable ones are
    skipped) whose classes all exist, else None.
    """
    names = list(class_names)
    if pair is not None:
        return _checked_pair(pair, names, "the confusable pair (--pair)")
    if configured is not None:
        return _checked_pair(configured, names, "data.confusable_pair of the run's config")
    for source in descriptions:
        if source is None:
            continue
        try:
            found = load_descriptions(source).confusable_pair
        except DataError:
            continue
        if found is not None and all(n in names for n in found):
            return found
    return None
