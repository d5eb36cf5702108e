"""Report figures are real PNGs of the numbers given; undefined values do not crash them."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from defectfusion.errors import DefectFusionError
from defectfusion.report import plots
from defectfusion.structures import Detections
from tests.helpers import REPORT_CLASSES as NAMES
from tests.helpers import fake_metrics

PAIR = ("ROTURA_FRACTURA", "RAYONES_ARANAZOS")
COUNTS_A = [[50, 1, 0, 0, 3], [0, 30, 12, 0, 4], [1, 3, 40, 0, 2], [0, 0, 0, 25, 1], [2, 3, 4, 1, 0]]
COUNTS_B = [[50, 1, 0, 0, 3], [0, 36, 6, 0, 4], [1, 2, 41, 0, 2], [0, 0, 0, 25, 1], [2, 1, 2, 1, 0]]
BEFORE = fake_metrics([0.98, 0.58, 0.81, 0.92], COUNTS_A)
AFTER = fake_metrics([0.98, 0.67, 0.84, 0.92], COUNTS_B)


def load_png(path, min_size=(300, 200)) -> np.ndarray:
    """Open ``path`` as a PNG, check it is big enough and not blank; return its pixels."""
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    with Image.open(path) as im:
        im.load()
        assert im.format == "PNG"
        assert im.width >= min_size[0] and im.height >= min_size[1], im.size
        pixels = np.asarray(im.convert("RGB"), dtype=np.float32)
    assert pixels.std() > 10, f"{path} looks blank"
    return pixels


def no_temp_files(folder) -> bool:
    return not [p for p in folder.iterdir() if p.name.startswith(".")]


def test_confusion_matrix_images_follow_the_numbers(tmp_path):
    raw = plots.plot_confusion_matrix(BEFORE, tmp_path / "cm.png", normalized=False, highlight=PAIR)
    assert raw == tmp_path / "cm.png"
    a = load_png(raw, (600, 500))
    b = load_png(plots.plot_confusion_matrix(AFTER, tmp_path / "cm_after.png", highlight=PAIR))
    c = load_png(plots.plot_confusion_matrix(BEFORE.confusion_matrix, tmp_path / "cm_norm.png", normalized=True))
    assert a.shape != b.shape or np.abs(a - b).mean() > 0.01  # other counts, another picture
    assert a.shape != c.shape or np.abs(a - c).mean() > 0.01
    assert no_temp_files(tmp_path)


def test_confusion_matrix_undefined_row_and_bad_input(tmp_path):
    counts = [row[:] for row in COUNTS_A]
    counts[3] = [0, 0, 0, 0, 0]  # PERFORACIONES absent: its normalised row is undefined
    m = fake_metrics([0.98, 0.58, 0.81, 0.92], counts, absent=("PERFORACIONES",))
    assert m.confusion_matrix["normalized"][3] == [None] * 5
    load_png(plots.plot_confusion_matrix(m, tmp_path / "cm.png", normalized=True, highlight=PAIR))
    with pytest.raises(DefectFusionError, match="highlight class 'ROTURA'"):
        plots.plot_confusion_matrix(m, tmp_path / "x.png", highlight=("ROTURA", "RAYONES_ARANAZOS"))
    with pytest.raises(DefectFusionError, match="confusion_matrix"):
        plots.plot_confusion_matrix({"labels": ["a", "background"], "counts": [[1]]}, tmp_path / "y.png")
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "y.png").exists()


def test_pr_curves_skip_undefined_classes(tmp_path):
    m = fake_metrics([0.98, 0.58, 0.81, 0.92], COUNTS_A, absent=("PERFORACIONES",))
    m.pr_curves.pop("RAYONES_ARANAZOS")  # a class nothing is known about at all
    a = load_png(plots.plot_pr_curves(m, tmp_path / "pr.png"), (500, 500))
    b = load_png(plots.plot_pr_curves(AFTER, tmp_path / "pr_after.png"))
    assert a.shape != b.shape or not np.array_equal(a, b)


def test_ap_bars_two_and_many_models(tmp_path):
    load_png(plots.plot_ap_bars(BEFORE, AFTER, tmp_path / "bars.png"), (600, 400))
    absent = fake_metrics([0.98, 0.6, 0.8, 0.9], COUNTS_A, absent=("PERFORACIONES",))
    models = [("defects6.yml", AFTER), ("short.yml", BEFORE), ("contrast.yml", absent.to_dict())]  # as read back
    load_png(plots.plot_ap_bars(models, None, tmp_path / "many.png"))
    load_png(plots.plot_ap_bars_many(models, tmp_path / "many_ap.png", metric="ap"))
    with pytest.raises(DefectFusionError, match="metric"):
        plots.plot_ap_bars_many(models, tmp_path / "x.png", metric="f1")


def write_jsonl(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def phase_records(phase, start, n, hour):
    return [
        {
            "phase": phase,
            "epoch": e,
            "map50": start + 0.002 * e,
            "map": start / 2,
            "train_loss": 5 - 0.1 * e,
            "lr": 1e-4,
            "time": f"2025-01-01T{hour:02d}:{e:02d}:00",
        }
        for e in range(1, n + 1)
    ]


def test_training_curves_from_run_folder(tmp_path):
    run = tmp_path / "run"
    # written in a different alphabetical order than they ran: ordered by time
    write_jsonl(run / "a_second" / "metrics.jsonl", phase_records("phase2", 0.80, 5, 2))
    write_jsonl(run / "b_first" / "metrics.jsonl", phase_records("phase1", 0.79, 5, 1))
    write_jsonl(
        run / "baseline" / "metrics.jsonl",
        [{"phase": "baseline", "epoch": 0, "map50": 0.785, "time": "2025-01-01T00:00:00"}],
    )
    with open(run / "a_second" / "metrics.jsonl", "a") as f:
        f.write('{"phase": "phase2", "epo')  # killed mid-write
    records = plots.load_training_records(run)
    assert [r["phase"] for r in records][:2] == ["baseline", "phase1"] and records[-1]["phase"] == "phase2"
    load_png(plots.plot_training_curves(run, tmp_path / "curves.png"), (600, 500))
    # records with missing keys, no phase, no loss
    sparse = [
        {"epoch": 1, "map50": 0.5},
        {"epoch": 2},
        {"epoch": 3, "map50": None, "train_loss": None},
        {"map50": 0.6},
    ]
    load_png(plots.plot_training_curves(sparse, tmp_path / "sparse.png", baseline=0.55))


def test_training_curves_errors(tmp_path):
    with pytest.raises(DefectFusionError, match="no training records"):
        plots.plot_training_curves([{"phase": "baseline", "map50": 0.7}], tmp_path / "x.png")
    with pytest.raises(DefectFusionError, match="no such training log"):
        plots.load_training_records(tmp_path / "missing")
    bad = tmp_path / "bad" / "metrics.jsonl"
    bad.parent.mkdir()
    bad.write_text("not json\n{}\n")
    with pytest.raises(DefectFusionError, match="metrics.jsonl, line 1: not valid JSON"):
        plots.load_training_records(bad)


def test_draw_detections_boxes_in_class_colour():
    image = np.full((120, 160, 3), 128, dtype=np.uint8)
    det = Detections(
        torch.tensor([[20.0, 30.0, 100.0, 90.0], [5.0, 5.0, 15.0, 15.0]]),
        torch.tensor([0.9, 0.1]),
        torch.tensor([1, 3]),
    )
    out = plots.draw_detections(
        image,
        det,
        NAMES,
        gt=(torch.tensor([[40.0, 40.0, 150.0, 110.0]]), torch.tensor([2])),
        score_threshold=0.5,
    )
    assert isinstance(out, Image.Image) and out.size == (160, 120)
    px = np.asarray(out)
    assert tuple(px[60, 100]) == plots.class_color(1)  # right edge of the prediction box
    assert not (px == plots.class_color(3)).all(axis=-1).any()  # the box below the score threshold is not drawn
    right_edge = [tuple(p) for p in px[55:110, 150]]  # the GT box's right edge: dashed, class colour and white
    assert plots.class_color(2) in right_edge and (255, 255, 255) in right_edge
    assert (image == 128).all()  # input untouched


def test_draw_detections_inputs_and_resize(tmp_path):
    chw = torch.rand(3, 64, 80)
    out = plots.draw_detections(
        chw, {"boxes": np.array([[4, 4, 40, 40]]), "labels": [3], "scores": [0.7]}, NAMES, resize_to=320
    )
    assert out.size == (320, 256)
    empty = plots.draw_detections(Image.new("RGB", (50, 40), "red"), Detections.empty(), NAMES)
    assert np.asarray(empty).reshape(-1, 3).tolist().count([255, 0, 0]) == 50 * 40
    unknown = plots.draw_detections(np.zeros((30, 30), np.uint8), (np.array([[2, 2, 20, 20]]), np.array([9])), NAMES)
    assert np.asarray(unknown).std() > 0
    with pytest.raises(DefectFusionError, match="same length"):
        plots.draw_detections(np.zeros((30, 30, 3), np.uint8), {"boxes": [[0, 0, 1, 1]], "labels": [0, 1]}, NAMES)


def test_image_grid(tmp_path):
    rng = np.random.default_rng(0)
    items = []
    for k in range(5):
        image = rng.integers(60, 200, (96, 128, 3), dtype=np.uint8)
        det = Detections(torch.tensor([[10.0, 10.0, 60.0, 50.0]]), torch.tensor([0.8]), torch.tensor([k % 4]))
        items.append(plots.GridItem(image, det, (np.array([[12, 12, 58, 52]]), np.array([1])), f"val_{k}.png"))
    items.append({"image": rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), "title": "no boxes"})
    items.append(Image.new("RGB", (80, 60), "white"))
    path = plots.plot_image_grid(items, tmp_path / "grid.png", NAMES, cols=3)
    load_png(path, (900, 600))
    assert no_temp_files(tmp_path)
    with pytest.raises(DefectFusionError, match="no images"):
        plots.plot_image_grid([], tmp_path / "none.png", NAMES)


def test_user_text_with_dollar_signs_is_not_math(tmp_path):
    m = json.loads(json.dumps(BEFORE.to_dict()).replace("RAYONES_ARANAZOS", "co$t $ <b>&"))
    load_png(plots.plot_pr_curves(m, tmp_path / "pr.png"))


def test_no_pyplot_global_state(tmp_path):
    pyplot = sys.modules.get("matplotlib.pyplot")
    figures = pyplot.get_fignums() if pyplot else None
    plots.plot_ap_bars({"map50": 0.5, "per_class": {"a": {"ap50": 0.5}}}, None, tmp_path / "x.png")
    if pyplot is None:
        assert "matplotlib.pyplot" not in sys.modules
    else:
        assert pyplot.get_fignums() == figures
