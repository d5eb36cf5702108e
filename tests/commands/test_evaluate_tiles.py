"""evaluate --tiles: the model (and the baseline) run on tiles at native resolution, merged, then scored."""

from __future__ import annotations

import pytest

from defectfusion.cli import main
from defectfusion.commands.evaluate import evaluate_checkpoint

pytest.importorskip("sahi")


def test_evaluate_with_tiles_scores_the_merged_tile_detections(kit):
    plain = evaluate_checkpoint(kit.baseline, kit.val_ann, report=False, progress=False)
    tiled = evaluate_checkpoint(
        kit.baseline, kit.val_ann, baseline=kit.baseline, tiles=48, overlap=0.25, report=False, progress=False
    )
    assert tiled.metrics.num_images == plain.metrics.num_images
    assert tiled.metrics.map50 != plain.metrics.map50  # other detections: 48 px crops, not the resized image
    assert tiled.baseline.map50 == tiled.metrics.map50  # the baseline tiles the same way


def test_tiles_need_a_checkpoint(kit, tmp_path, capsys):
    results = tmp_path / "r.json"
    results.write_text("[]")
    argv = ["evaluate", "--predictions", str(results), "--annotations", str(kit.val_ann), "--tiles", "64"]
    assert main(argv) == 2
    assert "--tiles needs --checkpoint" in capsys.readouterr().err
    argv = ["evaluate", "--checkpoint", str(kit.baseline), "--annotations", str(kit.val_ann), "--overlap", "0.3"]
    assert main(argv) == 2
    assert "add --tiles" in capsys.readouterr().err
