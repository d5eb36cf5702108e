"""Values as people write them, coerced to the types transformers' strict configs declare."""

import pytest
from transformers import Deimv2Config

from defectfusion.models.field_types import FieldTypeError, coerce, coerce_kwargs, declared_types, describe


@pytest.mark.parametrize(
    ("value", "annotation", "expected"),
    [
        (1, float, 1.0),
        ("1e-4", float, 1e-4),  # PyYAML reads a number without a dot as text
        (4.0, int, 4),
        ((1, 2), list[int], [1, 2]),
        ([3, 6.0, 3], int | list[int], [3, 6, 3]),
        (4, int | list[int], 4),
        ([640.0, 480], tuple[int, int], (640, 480)),
        (None, int | None, None),
        (True, bool, True),
    ],
)
def test_values_that_mean_the_type_become_it(value, annotation, expected):
    result = coerce(value, annotation)
    assert result == expected and type(result) is type(expected)


@pytest.mark.parametrize(
    ("value", "annotation", "words"),
    [
        ("one", float, "a number"),
        (4.5, int, "an integer"),
        (True, float, "a number"),  # a boolean is not a number here
        (1, bool, "true or false"),
        ([1, "x"], list[int], "an integer"),
        ([1, 2, 3], tuple[int, int], "a list of 2 integers"),
        (None, float, "a number"),
    ],
)
def test_values_that_do_not_are_refused_with_a_readable_type(value, annotation, words):
    with pytest.raises(FieldTypeError) as info:
        coerce(value, annotation)
    assert words in info.value.expected


def test_every_declared_deimv2_field_resolves_and_describes():
    types = declared_types(Deimv2Config)
    assert types["depth_mult"] is float and "decoder_n_points" in types
    assert describe(types["decoder_n_points"]) == "an integer or a list of integers"
    out = coerce_kwargs(Deimv2Config, {"depth_mult": 1, "unknown_key": "kept"}, lambda f, e: ValueError(f))
    assert out == {"depth_mult": 1.0, "unknown_key": "kept"}
    with pytest.raises(ValueError, match="^d_model$"):
        coerce_kwargs(Deimv2Config, {"d_model": "wide"}, lambda f, e: ValueError(f))
