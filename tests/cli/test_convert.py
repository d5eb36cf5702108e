"""`defectfusion convert` end to end on checkpoints written by the original DEIMv2 code."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from defectfusion import load_detector
from defectfusion.cli import main
from defectfusion.commands.convert import convert_original
from defectfusion.models.original.config import load_original_yaml
from tests.helpers import ORIGINAL_FIXTURES

NAMES = ["mini_dinov3", "mini_hgnetv2"]


pytestmark = pytest.mark.usefixtures("one_thread")


def fixture_dir(name: str) -> Path:
    folder = ORIGINAL_FIXTURES / name
    if not (folder / "checkpoint.pth").is_file():
        pytest.skip(f"original DEIMv2 fixture {folder} is absent (it lives in ../shared beside the checkout)")
    return folder


def _load(path: Path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _top_detections(logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores and labels of the original post-processor's top-k (query, class) pairs, by score."""
    scores, index = logits.sigmoid().flatten(1).topk(top_k, dim=-1)
    return scores[0], index[0] % logits.shape[-1]


@pytest.mark.parametrize("name", NAMES)
def test_convert_writes_a_folder_that_reproduces_the_original(tmp_path, capsys, name, six_classes):
    folder = fixture_dir(name)
    ann = tmp_path / "train.json"
    ann.write_text(
        json.dumps(
            {"images": [], "annotations": [], "categories": [{"id": i, "name": n} for i, n in enumerate(six_classes)]}
        )
    )
    code = main(
        [
            "convert",
            str(folder / "checkpoint.pth"),
            "--config",
            str(folder / "config.yml"),
            "--out",
            str(tmp_path / "out"),
            "--annotations",
            str(ann),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    for heading in ("read from the YAML", "weights: ema", "verified: decoder.anchors", f"wrote {tmp_path / 'out'}"):
        assert heading in " ".join(printed.split()), heading
    model = load_detector(tmp_path / "out")
    assert model.class_names == six_classes

    # The CLI's folder is exactly what the engine function builds ...
    engine = convert_original(folder / "checkpoint.pth", folder / "config.yml").model
    for key, tensor in engine.state_dict().items():
        assert torch.equal(tensor, model.state_dict()[key]), key
    # ... and it computes the original's detections.
    expected = _load(folder / "expected.pt")
    with torch.no_grad():
        logits = model(pixel_values=_load(folder / "input.pt")).logits
    scores, labels = _top_detections(logits, expected["num_top_queries"])
    ref_scores, ref_labels = expected["ema"]["scores"], expected["ema"]["labels"]
    assert torch.allclose(scores, ref_scores, atol=1e-4)
    # Where a score has no near-tie, the detection at that rank must carry the same class.
    gaps = (ref_scores[:-1] - ref_scores[1:]).abs()
    isolated = torch.cat([gaps[:1], torch.minimum(gaps[:-1], gaps[1:]), gaps[-1:]]) > 2e-4
    assert isolated.sum() > len(ref_scores) // 4
    assert torch.equal(labels[isolated], ref_labels[isolated])


def test_convert_takes_the_model_weights_when_asked(tmp_path, capsys):
    folder = fixture_dir("mini_dinov3")
    code = main(
        [
            "convert",
            str(folder / "checkpoint.pth"),
            "--config",
            str(folder / "config.yml"),
            "--out",
            str(tmp_path / "out"),
            "--weights",
            "model",
            "--class-names",
            "a,b,c,d,e,f",
        ]
    )
    assert code == 0 and "weights: model" in capsys.readouterr().out
    model = load_detector(tmp_path / "out")
    assert model.class_names == ["a", "b", "c", "d", "e", "f"]
    expected = _load(folder / "expected.pt")["model"]
    with torch.no_grad():
        out = model(pixel_values=_load(folder / "input.pt"))
    assert (
        out.logits.max(-1).values.sort().values - expected["pred_logits"].max(-1).values.sort().values
    ).abs().max() < 1e-4


def _expect_one_line_error(capsys, code: int, *fragments: str) -> str:
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


@pytest.mark.parametrize("kind", ["truncated", "text", "foreign"])
def test_corrupted_or_foreign_checkpoints_fail_in_one_line_and_write_nothing(tmp_path, capsys, kind):
    folder = fixture_dir("mini_hgnetv2")
    bad = tmp_path / f"{kind}.pth"
    if kind == "truncated":
        data = (folder / "checkpoint.pth").read_bytes()
        bad.write_bytes(data[: len(data) * 2 // 3])
    elif kind == "text":
        bad.write_text("epoch,map\n187,0.785\n")
    else:
        torch.save({"encoder.weight": torch.randn(4, 4), "head.bias": torch.randn(4)}, bad)
    code = main(["convert", str(bad), "--config", str(folder / "config.yml"), "--out", str(tmp_path / "out")])
    _expect_one_line_error(capsys, code, str(bad))
    assert not (tmp_path / "out").exists()


def test_a_key_missing_from_the_yaml_is_named(tmp_path, capsys):
    folder = fixture_dir("mini_dinov3")
    cfg = load_original_yaml(folder / "config.yml")
    del cfg["DINOv3STAs"]["interaction_indexes"]
    (tmp_path / "cfg.yml").write_text(yaml.safe_dump(cfg))
    code = main(
        [
            "convert",
            str(folder / "checkpoint.pth"),
            "--config",
            str(tmp_path / "cfg.yml"),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    _expect_one_line_error(capsys, code, "DINOv3STAs.interaction_indexes is missing")
    assert not (tmp_path / "out").exists()


def test_wrong_number_of_class_names_is_a_user_error(tmp_path, capsys):
    folder = fixture_dir("mini_hgnetv2")
    code = main(
        [
            "convert",
            str(folder / "checkpoint.pth"),
            "--config",
            str(folder / "config.yml"),
            "--out",
            str(tmp_path / "out"),
            "--class-names",
            "crack,scratch",
        ]
    )
    _expect_one_line_error(capsys, code, "2 class names given, but the checkpoint predicts 6")
    assert not (tmp_path / "out").exists()


def test_annotations_and_class_names_exclude_each_other(tmp_path):
    with pytest.raises(SystemExit) as info:
        main(
            [
                "convert",
                "x.pth",
                "--config",
                "c.yml",
                "--out",
                str(tmp_path / "o"),
                "--annotations",
                "a.json",
                "--class-names",
                "a,b",
            ]
        )
    assert info.value.code == 2


def test_numbers_written_as_people_write_them_convert(tmp_path, capsys):
    """``depth_mult: 1``-style values (ints for floats, ``1e-4`` read as text) reach transformers typed."""
    folder = fixture_dir("mini_dinov3")
    cfg = load_original_yaml(folder / "config.yml")
    cfg["DEIMTransformer"].update(label_noise_ratio=1, box_noise_scale=1, reg_scale=4, num_denoising=100.0)
    cfg["HybridEncoder"].update(pe_temperature=1e4, expansion="0.34")
    (tmp_path / "cfg.yml").write_text(yaml.safe_dump(cfg))
    code = main(
        [
            "convert",
            str(folder / "checkpoint.pth"),
            "--config",
            str(tmp_path / "cfg.yml"),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 0, capsys.readouterr().err
    config = load_detector(tmp_path / "out").config
    assert config.box_noise_scale == 1.0 and isinstance(config.box_noise_scale, float)
    assert config.num_denoising == 100 and isinstance(config.num_denoising, int)
    assert config.positional_encoding_temperature == 10000 and config.hidden_expansion == 0.34


def test_a_value_of_the_wrong_type_is_one_line(tmp_path, capsys):
    folder = fixture_dir("mini_dinov3")
    cfg = load_original_yaml(folder / "config.yml")
    cfg["HybridEncoder"]["depth_mult"] = [0.34]
    (tmp_path / "cfg.yml").write_text(yaml.safe_dump(cfg))
    code = main(
        [
            "convert",
            str(folder / "checkpoint.pth"),
            "--config",
            str(tmp_path / "cfg.yml"),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    _expect_one_line_error(
        capsys, code, str(tmp_path / "cfg.yml"), "HybridEncoder.depth_mult is [0.34]", "expected a number"
    )
    assert not (tmp_path / "out").exists()
