"""`defectfusion explain`: maps and matches written and summarised; user errors."""

from __future__ import annotations

import json

from tests.helpers import one_line_error, run_cli


def test_explain_writes_maps_matches_and_numbers(kit, tmp_path, capsys):
    image = kit.val_images / "000000.png"
    code, printed, _ = run_cli(
        ["explain", "--checkpoint", kit.fused, image, "--out", tmp_path, "--threshold", "0", "--max-detections", "3"],
        capsys,
    )
    assert code == 0
    assert "maps: model.model.enc_score_head.fusion" in printed
    assert "similarity maps (cosine)" in printed and "what each detection matched in text" in printed
    for name in ("similarity_maps.png", "detection_matches.png", "explanation.json", "similarity_maps.npz"):
        assert (tmp_path / name).is_file()
    assert len(json.loads((tmp_path / "explanation.json").read_text())["detections"]["items"]) == 3

    code, _, _ = run_cli(
        ["explain", "--checkpoint", kit.fused, image, kit.val_images / "000001.png", "--out", tmp_path / "two"], capsys
    )
    assert code == 0
    assert (tmp_path / "two" / "000000" / "explanation.png").is_file()  # several images: the main figure
    assert (tmp_path / "two" / "000001" / "explanation.json").is_file()


def test_explain_with_annotations_prints_how_well_each_map_kind_points(kit, tmp_path, capsys):
    code, printed, _ = run_cli(
        ["explain", "--checkpoint", kit.fused, "--annotations", kit.val_ann, "--limit", "2", "--out", tmp_path],
        capsys,
    )
    assert code == 0
    assert "how well the maps point at the boxes (2 images)" in printed
    for kind in ("gradcam", "pixel", "text_gradcam", "sampling", "similarity"):
        assert kind in printed
    assert "logit = base + text + LQE" in printed and f"summary: {tmp_path / 'report.html'}" in printed


def test_user_errors_are_one_line(kit, tmp_path, capsys):
    image = str(kit.val_images / "000000.png")
    fake = tmp_path / "m.onnx"
    fake.write_bytes(b"x")
    cases = [
        (["explain", "--checkpoint", kit.baseline, image], "no text-fusion head"),
        (["explain", "--checkpoint", kit.fused, str(tmp_path / "none.png")], "none.png does not exist"),
        (["explain", "--checkpoint", fake, image], "explain needs the PyTorch detector folder"),
        (["explain", "--checkpoint", kit.fused, image, "--threshold", "3"], "--threshold must be in [0, 1]"),
        (["explain", "--checkpoint", kit.fused], "nothing to explain"),
        (["explain", "--checkpoint", kit.fused, image, "--annotations", kit.val_ann], "not both"),
        (["explain", "--checkpoint", kit.fused, "--annotations", tmp_path / "no.json"], "no.json does not exist"),
        (["explain", "--checkpoint", kit.fused, image, "--limit", "0"], "--limit must be at least 1"),
        (["explain", "--checkpoint", kit.fused, image, "--max-detections", "-1"], "--max-detections must be >= 0"),
        (["explain", "--checkpoint", tmp_path / "none", image], "does not exist"),
    ]
    for argv, expected in cases:
        line = one_line_error(argv + ["--out", tmp_path / "x"], capsys)
        assert expected in line, (argv, line)
