import pytest

from defectfusion.data.descriptions import load_descriptions, validate_against_classes
from defectfusion.errors import ConfigError, DataError


def test_packaged_defaults_hold_the_six_classes(six_classes):
    d = load_descriptions("defects6")
    assert d.names == six_classes
    rotura = d.prompts()[2]
    assert rotura[0].startswith("A defect showing DEEP crack")
    assert any("deep crack" in p for p in rotura) and any("CRITICAL DIFFERENCE" in p for p in rotura)


def test_mismatch_lists_both_sides_in_one_error():
    d = load_descriptions("defects6")
    with pytest.raises(ConfigError) as info:
        validate_against_classes(
            d, ["NORMAL", "DEFORMACIONES", "ROTURA", "RAYONES_ARANAZOS", "PERFORACIONES", "CONTAMINACION", "OXIDO"]
        )
    message = str(info.value)
    assert "without a description: ROTURA, OXIDO" in message
    assert "not in the dataset: ROTURA_FRACTURA" in message


def test_order_follows_the_dataset(six_classes):
    d = load_descriptions("defects6").ordered_like(list(reversed(six_classes)))
    assert d.names == list(reversed(six_classes))


def test_extra_prompts_and_field_selection(tmp_path):
    path = tmp_path / "d.yml"
    path.write_text(
        "use: [description, prompts]\n"
        "classes:\n"
        "  - {name: A, description: a crack, keywords: [k], contrast: c, prompts: ['photo of a crack']}\n"
        "  - {name: B, description: a scratch}\n"
    )
    d = load_descriptions(path)
    assert d.prompts() == [["A defect showing a crack", "photo of a crack"], ["A defect showing a scratch"]]


@pytest.mark.parametrize(
    "body, message",
    [
        ("classes: []", "'classes' is empty"),
        ("classes:\n  - {name: A, description: x}\n  - {name: A, description: y}", "described twice"),
        ("classes:\n  - {name: A, descripton: x}", "descripton"),
        ("- just a list", "expected a mapping"),
        ("classes: [", "cannot read"),
    ],
)
def test_bad_files_name_the_problem(tmp_path, body, message):
    path = tmp_path / "bad.yml"
    path.write_text(body)
    with pytest.raises(DataError, match=message):
        load_descriptions(path)


def test_unknown_packaged_name_suggests():
    with pytest.raises(DataError, match="Did you mean defects6"):
        load_descriptions("defect6")
