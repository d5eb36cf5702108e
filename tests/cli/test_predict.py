"""`defectfusion predict`: folders and globs, json + drawn images, threshold, ONNX checkpoints, user errors."""

from __future__ import annotations

import json

import pytest

from tests.helpers import one_line_error, run_cli


def test_predict_on_a_folder_and_a_glob(kit, tmp_path, capsys):
    out = tmp_path / "p"
    code, printed, _ = run_cli(
        [
            "predict",
            "--checkpoint",
            kit.fused,
            kit.val_images / "000001.png",
            str(kit.val_images / "00000[4-7].png"),
            "--out",
            out,
            "--threshold",
            "0.4",
        ],
        capsys,
    )
    assert code == 0
    assert "detections with score ≥ 0.4" in printed and "000001.png" in printed and "results.json" in printed
    records = json.loads((out / "results.json").read_text())
    assert records and all(r["score"] >= 0.4 for r in records)
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"00000{i}.png" for i in (1, 4, 5, 6, 7)]
    summary = json.loads((out / "predictions.json").read_text())
    assert summary["num_images"] == 5 and summary["num_detections"] == len(records)

    code, _, _ = run_cli(
        [
            "predict",
            "--checkpoint",
            kit.fused,
            kit.val_images,
            "--out",
            tmp_path / "all",
            "--threshold",
            "0",
            "--category-ids",
            "1,2,3,4,5,6",
            "--no-draw",
            "--quiet",
        ],
        capsys,
    )
    assert code == 0
    records = json.loads((tmp_path / "all" / "results.json").read_text())
    assert len(records) == 8 * 180 and {r["category_id"] for r in records} <= set(range(1, 7))
    assert not (tmp_path / "all" / "images").exists()


def test_a_model_that_predicts_nothing(kit, tmp_path, capsys):
    code, printed, _ = run_cli(["predict", "--checkpoint", kit.silent, kit.val_images, "--out", tmp_path], capsys)
    assert code == 0 and "0 detections in 8 images" in printed
    assert json.loads((tmp_path / "results.json").read_text()) == []
    assert len(list((tmp_path / "images").iterdir())) == 8


def test_predict_runs_an_exported_onnx_model_like_pytorch(kit, tmp_path, capsys):
    export = pytest.importorskip("defectfusion.commands.export")
    pytest.importorskip("onnxruntime")
    onnx_path = tmp_path / "fused.onnx"
    export.export_onnx(kit.fused, onnx_path, check=False)
    code, _, _ = run_cli(
        [
            "predict",
            "--checkpoint",
            onnx_path,
            kit.val_images,
            "--out",
            tmp_path / "onnx",
            "--threshold",
            "0.3",
            "--no-draw",
        ],
        capsys,
    )
    assert code == 0
    code, _, _ = run_cli(
        [
            "predict",
            "--checkpoint",
            kit.fused,
            kit.val_images,
            "--out",
            tmp_path / "torch",
            "--threshold",
            "0.3",
            "--no-draw",
        ],
        capsys,
    )
    onnx_records = json.loads((tmp_path / "onnx" / "results.json").read_text())
    torch_records = json.loads((tmp_path / "torch" / "results.json").read_text())
    assert len(onnx_records) == len(torch_records) > 0
    for a, b in zip(onnx_records, torch_records, strict=True):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        assert a["score"] == pytest.approx(b["score"], abs=1e-4)
        assert a["bbox"] == pytest.approx(b["bbox"], abs=1e-2)


def test_user_errors_are_one_line(kit, tmp_path, capsys):
    ck, images = str(kit.fused), str(kit.val_images)
    garbage = tmp_path / "m.onnx"
    garbage.write_bytes(b"garbage")
    cases = [
        (
            ["predict", "--checkpoint", ck, str(tmp_path / "*.png"), str(tmp_path / "none")],
            "2 input(s) matched no image",
        ),
        (["predict", "--checkpoint", ck, images, "--threshold", "1.5"], "--threshold must be in [0, 1]"),
        (["predict", "--checkpoint", ck, images, "--top-k", "0"], "--top-k and --batch-size must be >= 1"),
        (["predict", "--checkpoint", ck, images, "--category-ids", "1,two"], "comma-separated integers"),
        (["predict", "--checkpoint", ck, images, "--category-ids", "1,2"], "got 2 category ids for 6 classes"),
        (["predict", "--checkpoint", ck, images, "--annotations", tmp_path / "none.json"], "does not exist"),
        (["predict", "--checkpoint", tmp_path / "nope", images], "does not exist"),
        (["predict", "--checkpoint", garbage, images], "m.onnx"),
    ]
    for argv, expected in cases:
        line = one_line_error(argv + ["--out", tmp_path / "x", "--quiet"], capsys)
        assert expected in line, (argv, line)
