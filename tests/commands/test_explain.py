"""explain over a COCO file: every map kind scored on the boxes, a summary page, files per image."""

from __future__ import annotations

import json

import pytest

from defectfusion.commands.explain import explain
from defectfusion.errors import ConfigError

KINDS = {"similarity", "text_term", "gradcam", "pixel", "text_gradcam", "sampling", "contrast", "boxes"}


def test_a_coco_file_is_explained_scored_against_the_control_and_summarised(kit, tmp_path):
    result = explain(
        kit.fused, None, tmp_path / "ex", annotations=kit.val_ann, limit=3, threshold=0.05, faithfulness=2, steps=3
    )
    assert len(result.images) == 3 and set(result.quality) == KINDS
    gt = json.loads(kit.val_ann.read_text())
    names = {c["id"]: c["name"] for c in gt["categories"]}
    first3 = [im["id"] for im in gt["images"][:3]]
    present = [{names[a["category_id"]] for a in gt["annotations"] if a["image_id"] == i} for i in first3]
    pair = set(result.images[0].explanation.pair or ())
    for kind, summary in result.quality.items():
        # the contrast map exists for the confusable pair's classes only
        expected = sum(len(p & pair) if kind == "contrast" else len(p) for p in present)
        assert summary.overall["pairs"] == expected, kind
        if expected:
            assert 0.0 <= summary.overall["pointing_game"] <= 1.0 and 0.0 <= summary.overall["auroc"] <= 1.0
    # every kind against the detections-only control, and each class's map against the other classes' boxes
    assert set(result.comparisons) == KINDS and result.comparisons["boxes"].to_dict()["vs_control"]
    wrong = sum(len(p) * (len(p) - 1) for p in present)
    assert len([q for item in result.images for q in item.wrong["gradcam"]]) == wrong
    # the faithfulness test ran on the first two images' detailed detections, with its two references
    assert [bool(item.faithfulness) for item in result.images] == [True, True, False]
    faith = result.faithfulness.to_dict()["kinds"]
    assert {"boxes", "random", "gradcam", "sampling"} <= set(faith)
    for item in result.images:  # one figure per image and the numbers; the heavy files only when asked
        folder = item.files.json.parent
        assert (folder / "explanation.png").is_file() and (folder / "explanation.json").is_file()
        assert not (folder / "similarity_maps.npz").exists() and not (folder / "similarity_maps.png").exists()
        assert item.explanation.class_maps == {}  # not kept in memory
    saved = json.loads((tmp_path / "ex" / "map_quality.json").read_text())
    assert set(saved["quality"]) == KINDS and saved["default_kind"] == "sampling"
    assert all(q["reads_as"] and "vs_control" in q for q in saved["quality"].values())
    assert saved["faithfulness_measured"] and "deletion_auc" in saved["quality"]["gradcam"]["faithfulness"]
    html = (tmp_path / "ex" / "report.html").read_text()
    assert "pointing game" in html and "Best and worst examples" in html and "the bar" not in html
    for name in (
        "map_quality.png",
        "best_examples.png",
        "worst_examples.png",
        "contrast_best.png",
        "contrast_worst.png",
    ):
        assert (tmp_path / "ex" / "plots" / name).stat().st_size > 10_000


def test_faithfulness_and_tiles_are_refused_together(kit, tmp_path):
    with pytest.raises(ConfigError, match="drop --faithfulness or --tiles"):
        explain(kit.fused, None, tmp_path / "x", annotations=kit.val_ann, limit=1, faithfulness=1, tiles=64)


def test_folders_are_explained_without_scores(kit, tmp_path):
    result = explain(kit.fused, kit.val_images, tmp_path / "ex", limit=2, save_maps=True, progress=False)
    assert len(result.images) == 2 and result.quality == {} and result.summary is None
    assert all(item.files.npz and item.files.npz.is_file() for item in result.images)


def test_classes_that_differ_from_the_model_are_refused(kit, tmp_path):
    data = json.loads(kit.val_ann.read_text())
    data["categories"][0]["name"] = "SOMETHING_ELSE"
    other = tmp_path / "ann.json"
    other.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="are not the model's"):
        explain(kit.fused, None, tmp_path / "x", annotations=other, images_dir=kit.val_images, limit=1)
    with pytest.raises(ConfigError, match="limit must be at least 1"):
        explain(kit.fused, None, tmp_path / "x", annotations=kit.val_ann, limit=0)
