"""`defectfusion evaluate`: checkpoint (+ baseline, + what-if descriptions) and results-file modes; user errors."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import check_html, one_line_error, run_cli, without_class


def test_evaluate_with_a_baseline_prints_the_comparison_and_writes_it(kit, tmp_path, capsys):
    out = tmp_path / "ev"
    code, printed, _ = run_cli(
        [
            "evaluate",
            "--checkpoint",
            kit.fused,
            "--data",
            kit.val_ann,
            "--baseline",
            kit.baseline,
            "--out",
            out,
            "--grid",
            "2",
            "--quiet",
        ],
        capsys,
    )
    assert code == 0
    assert "AP per class: baseline vs fused" in printed and "ROTURA_FRACTURA called RAYONES_ARANAZOS" in printed
    assert "all classes (mAP)" in printed and "wrote" in printed and "report.html" in printed
    for name in ("metrics.json", "baseline_metrics.json", "comparison.json", "report.md", "report.html"):
        assert (out / name).is_file(), name
    rows = json.loads((out / "comparison.json").read_text())["rows"]
    assert len(rows) == 7 and "ap50_delta_fused" in rows[0]
    check_html(out / "report.html")


def test_a_named_pair_is_called_out(kit, tmp_path, capsys):
    code, printed, _ = run_cli(
        [
            "evaluate",
            "--checkpoint",
            kit.fused,
            "--data",
            kit.val_ann,
            "--pair",
            "NORMAL",
            "CONTAMINACION",
            "--out",
            tmp_path,
            "--no-report",
            "--quiet",
        ],
        capsys,
    )
    assert code == 0 and "NORMAL called CONTAMINACION" in printed and "CONTAMINACION called NORMAL" in printed
    assert (tmp_path / "metrics.json").is_file() and not (tmp_path / "report.html").exists()


def test_what_if_with_two_description_files_gives_a_two_row_table(kit, tmp_path, capsys):
    out = tmp_path / "wi"
    code, printed, _ = run_cli(
        [
            "evaluate",
            "--checkpoint",
            kit.fused,
            "--data",
            kit.val_ann,
            "--descriptions",
            "defects6",
            kit.other_descriptions,
            "--cache-dir",
            kit.cache_dir,
            "--out",
            out,
            "--grid",
            "0",
            "--quiet",
        ],
        capsys,
    )
    assert code == 0
    table = printed[printed.index("what-if descriptions") :]
    body = [line for line in table.splitlines() if line.startswith("│")]
    assert len(body) == 2 and "defects6" in body[0] and "reworded" in body[1]
    # descriptions, mAP@0.5, its change, AP@0.5 of each class of the pair, confusions both ways
    assert all(len(line.split("│")[1:-1]) == 7 for line in body)
    rows = json.loads((out / "what_if.json").read_text())["rows"]
    assert [r["descriptions"] for r in rows] == ["defects6", "reworded"]


def test_results_file_mode(kit, tmp_path, capsys):
    code, _, _ = run_cli(
        [
            "predict",
            "--checkpoint",
            kit.fused,
            kit.val_images,
            "--out",
            tmp_path / "pred",
            "--threshold",
            "0",
            "--annotations",
            kit.val_ann,
            "--no-draw",
            "--quiet",
        ],
        capsys,
    )
    assert code == 0
    code, printed, _ = run_cli(
        [
            "evaluate",
            "--predictions",
            tmp_path / "pred" / "results.json",
            "--annotations",
            kit.val_ann,
            "--out",
            tmp_path / "ev",
            "--grid",
            "2",
        ],
        capsys,
    )
    assert code == 0 and "metrics per class" in printed
    from_file = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    code, _, _ = run_cli(
        [
            "evaluate",
            "--checkpoint",
            kit.fused,
            "--data",
            kit.val_ann,
            "--out",
            tmp_path / "ck",
            "--no-report",
            "--quiet",
        ],
        capsys,
    )
    from_model = json.loads((tmp_path / "ck" / "metrics.json").read_text())
    assert from_file["num_detections"] == from_model["num_detections"]
    for name, entry in from_model["per_class"].items():  # the results file rounds boxes and scores a little
        assert from_file["per_class"][name]["ap50"] == pytest.approx(entry["ap50"], abs=1e-3)
    check_html(tmp_path / "ev" / "report.html")


def test_absent_classes_images_without_gt_and_a_model_that_predicts_nothing(kit, tmp_path, capsys):
    ann = without_class(kit.val_ann, "PERFORACIONES", tmp_path / "ann.json")
    code, printed, _ = run_cli(
        [
            "evaluate",
            "--checkpoint",
            kit.silent,
            "--data",
            ann,
            "--images",
            kit.val_images,
            "--baseline",
            kit.baseline,
            "--out",
            tmp_path / "ev",
            "--grid",
            "8",
            "--quiet",
        ],
        capsys,
    )
    assert code == 0
    assert "undefined (no ground truth here, shown as –): PERFORACIONES" in printed
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["per_class"]["PERFORACIONES"]["ap50"] is None
    assert metrics["map50"] == 0.0
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    code, printed, _ = run_cli(
        ["evaluate", "--predictions", empty, "--annotations", ann, "--out", tmp_path / "e2"], capsys
    )
    assert code == 0 and "0 detections" in printed
    saved = json.loads((tmp_path / "e2" / "metrics.json").read_text())
    assert saved["per_class"]["NORMAL"]["precision"] is None and saved["per_class"]["PERFORACIONES"]["ap"] is None
    check_html(tmp_path / "e2" / "report.html")


def test_user_errors_are_one_line(kit, tmp_path, capsys):
    ck, ann = str(kit.fused), str(kit.val_ann)
    other_classes = tmp_path / "other.json"
    other_classes.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "x"}]}))
    bad_results = tmp_path / "bad.json"
    bad_results.write_text('{"not": "a list"}')
    cases = [
        (["evaluate", "--data", ann], "give --checkpoint CKPT --data ANN.json, or --predictions"),
        (["evaluate", "--checkpoint", ck, "--predictions", bad_results, "--data", ann], "not both"),
        (["evaluate", "--checkpoint", ck], "--data/--annotations ANN.json is required"),
        (
            ["evaluate", "--predictions", bad_results, "--annotations", ann, "--baseline", ck],
            "--baseline needs --checkpoint",
        ),
        (
            ["evaluate", "--checkpoint", ck, "--data", ann, "--encoder", "clip:x"],
            "--encoder is only used with --descriptions",
        ),
        (["evaluate", "--checkpoint", ck, "--data", ann, "--iou", "0"], "--iou must be in (0, 1]"),
        (["evaluate", "--checkpoint", ck, "--data", ann, "--conf", "2"], "--conf must be in [0, 1]"),
        (["evaluate", "--checkpoint", ck, "--data", ann, "--top-k", "0"], "--top-k and --batch-size must be >= 1"),
        (
            ["evaluate", "--checkpoint", ck, "--data", ann, "--device", "cuda:3"]
            if not torch.cuda.is_available()
            else ["evaluate", "--checkpoint", ck, "--data", ann, "--device", "tpu"],
            "--device",
        ),
        (
            ["evaluate", "--checkpoint", ck, "--data", ann, "--pair", "ROTURA", "NORMAL"],
            "unknown class 'ROTURA'; the classes are",
        ),
        (["evaluate", "--checkpoint", tmp_path / "missing", "--data", ann], "does not exist"),
        (["evaluate", "--checkpoint", ck, "--data", tmp_path / "missing.json"], "missing.json does not exist"),
        (["evaluate", "--checkpoint", ck, "--data", other_classes], "predicts the classes"),
        (
            ["evaluate", "--checkpoint", kit.baseline, "--data", ann, "--descriptions", "defects6"],
            "no text-fusion head",
        ),
        (["evaluate", "--checkpoint", ck, "--data", ann, "--descriptions", "nosuchset"], "no descriptions file"),
        (["evaluate", "--predictions", bad_results, "--annotations", ann], "expected a JSON list of detections"),
    ]
    for argv, expected in cases:
        line = one_line_error(argv + ["--out", tmp_path / "x", "--quiet"], capsys)
        assert expected in line, (argv, line)
