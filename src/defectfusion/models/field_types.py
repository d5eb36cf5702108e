"""Values written by people (YAML) into transformers' strict configs, each with the type its field declares.

transformers 5 validates every config field against its annotation: ``depth_mult: 1`` (an int)
is refused where a float is declared, a tuple where a list is, and PyYAML reads ``1e-4`` (no dot)
as text. :func:`coerce` converts what means the same thing (1 -> 1.0, 2.0 -> 2, "1e-4" -> 1e-4,
(1, 2) -> [1, 2]) and raises :class:`FieldTypeError` with a readable expected type otherwise.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import functools
import types
import typing
from typing import Any, Literal, Union

_NONE = type(None)


class FieldTypeError(ValueError):
    """A value that cannot mean the declared type; ``expected`` says what would."""

    def __init__(self, value: Any, expected: str):
        super().__init__(f"{value!r} is not {expected}")
        self.value = value
        self.expected = expected


@functools.cache
def declared_types(config_class: type) -> dict[str, Any]:
    """The annotation of every dataclass field of a (strict) config class, evaluated where possible."""
    namespace: dict[str, Any] = {**vars(typing), "collections": collections, "Literal": Literal}
    try:
        import torch

        namespace["torch"] = torch
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    result: dict[str, Any] = {}
    for f in dataclasses.fields(config_class):
        annotation = f.type
        if isinstance(annotation, str):
            try:
                annotation = eval(annotation, namespace)  # an installed library's own annotation text
            except Exception:
                annotation = Any
        result[f.name] = annotation
    return result


def describe(annotation: Any) -> str:
    """``float`` -> "a number", ``list[int]`` -> "a list of integers", unions joined with "or"."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return "any value"
    if origin in (Union, types.UnionType):
        parts = [describe(a) for a in args if a is not _NONE]
        text = " or ".join(dict.fromkeys(parts))
        return f"{text} (or null)" if _NONE in args else text
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, tuple, collections.abc.Sequence):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"a list of {len(args)} " + _plural(args[0])
        return "a list of " + _plural(args[0] if args else Any)
    if origin is dict or annotation is dict:
        return "a mapping"
    names = {float: "a number", int: "an integer", bool: "true or false", str: "text", _NONE: "null"}
    return names.get(annotation, f"a {getattr(annotation, '__name__', annotation)}")


def _plural(annotation: Any) -> str:
    words = {float: "numbers", int: "integers", bool: "booleans", str: "texts"}
    return words.get(annotation, describe(annotation).removeprefix("a ").removeprefix("an ") + "s")


def coerce(value: Any, annotation: Any) -> Any:
    """``value`` as ``annotation`` declares it, or :class:`FieldTypeError`."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any or isinstance(annotation, typing.TypeVar):
        return value
    if origin in (Union, types.UnionType):
        if value is None:
            if _NONE in args:
                return None
            raise FieldTypeError(value, describe(annotation))
        members = [a for a in args if a is not _NONE]
        # A value that already has one of the types keeps it (an int stays an int in int | list[int]).
        for member in members:
            if _is_exactly(value, member):
                return coerce(value, member)
        for member in members:
            try:
                return coerce(value, member)
            except FieldTypeError:
                continue
        raise FieldTypeError(value, describe(annotation))
    if origin is Literal:
        if value in args:
            return value
        raise FieldTypeError(value, describe(annotation))
    if origin in (list, tuple, collections.abc.Sequence):
        if not isinstance(value, list | tuple):
            raise FieldTypeError(value, describe(annotation))
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise FieldTypeError(value, describe(annotation))
            return tuple(coerce(v, a) for v, a in zip(value, args, strict=True))
        item = args[0] if args else Any
        items = [coerce(v, item) for v in value]
        return tuple(items) if origin is tuple else items
    if annotation is float:
        if isinstance(value, bool):
            raise FieldTypeError(value, describe(annotation))
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise FieldTypeError(value, describe(annotation))
    if annotation is int:
        if isinstance(value, bool):
            raise FieldTypeError(value, describe(annotation))
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            return int(value)
        raise FieldTypeError(value, describe(annotation))
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise FieldTypeError(value, describe(annotation))
    if annotation is str:
        if isinstance(value, str):
            return value
        raise FieldTypeError(value, describe(annotation))
    if origin is dict or annotation is dict:
        if isinstance(value, dict):
            return value
        raise FieldTypeError(value, describe(annotation))
    if isinstance(annotation, type):
        if isinstance(value, annotation | dict):
            return value
        raise FieldTypeError(value, describe(annotation))
    return value


def _is_exactly(value: Any, annotation: Any) -> bool:
    """Whether ``value`` already is ``annotation``'s type (bool is not an int here)."""
    origin = typing.get_origin(annotation)
    if origin in (list, tuple, collections.abc.Sequence):
        return isinstance(value, list | tuple)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation in (int, float):
        return type(value) is annotation
    if origin is None and isinstance(annotation, type):
        return isinstance(value, annotation)
    return False


def coerce_kwargs(
    config_class: type, kwargs: dict[str, Any], on_error: typing.Callable[[str, FieldTypeError], Exception]
) -> dict[str, Any]:
    """Every value of ``kwargs`` coerced to the type ``config_class`` declares for it.

    Keys the class does not declare pass unchanged. ``on_error(field, error)`` builds the
    exception raised for a value that cannot be coerced.
    """
    types_ = declared_types(config_class)
    result = dict(kwargs)
    for key, value in kwargs.items():
        if key in types_:
            try:
                result[key] = coerce(value, types_[key])
            except FieldTypeError as exc:
                raise on_error(key, exc) from None
    return result
