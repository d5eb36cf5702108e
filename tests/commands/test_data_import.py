"""`defectfusion data import voc|yolo` and `data split`, through the command function and the CLI."""

from __future__ import annotations

import json

import pytest

from defectfusion.commands.data_import import import_dataset
from defectfusion.data.coco import load_coco
from tests.data.test_split import skewed_coco
from tests.data.test_voc import voc_case
from tests.data.test_yolo import as_boxes, yolo_case
from tests.helpers import one_line_error, run_cli


def test_cli_imports_yolo_with_links_and_reports_unlabeled_images(tmp_path, capsys):
    src, out = tmp_path / "yolo", tmp_path / "coco"
    coco = yolo_case(src)
    (src / "labels" / "im2.txt").unlink()
    code, stdout, err = run_cli(["data", "import", "yolo", src, out], capsys)
    assert code == 0, err
    assert "3 images (1 without objects)" in stdout
    assert "1 image(s) without a label file, kept as background: im2.png" in stdout
    index = load_coco(out / "annotations.json")
    assert index.images_dir == out / "images" and index.class_names == ("stain", "crack", "hole")
    assert all(
        rec.path.is_symlink() and rec.path.resolve() == (src / "images" / rec.file_name).resolve()
        for rec in index.images
    )
    got = as_boxes(json.loads((out / "annotations.json").read_text()))
    for g, w in zip(got, as_boxes(coco), strict=True):
        assert g[:2] == w[:2] and g[2] == pytest.approx(w[2], abs=1e-6)


def test_copy_and_rerun_replace_the_images(tmp_path):
    src, out = tmp_path / "yolo", tmp_path / "coco"
    yolo_case(src)
    import_dataset("yolo", src, out)
    summary = import_dataset("yolo", src, out, copy=True)
    files = sorted((out / "images").iterdir())
    assert [f.name for f in files] == ["im0.png", "im1.png", "im2.png"]
    assert not any(f.is_symlink() for f in files) and summary.copied
    assert len(load_coco(summary.annotations)) == 3


def test_cli_imports_voc_and_splits_in_one_go(tmp_path, capsys):
    src, out = tmp_path / "voc", tmp_path / "coco"
    voc_case(src)
    code, stdout, err = run_cli(["data", "import", "voc", src, out, "--split", "0.34", "0.33", "0.33"], capsys)
    assert code == 0, err
    assert (out / "annotations.json").is_file()
    total = 0
    for name in ("train", "val", "test"):
        index = load_coco(out / name / "annotations.json")
        assert index.class_names == ("crack", "dent", "scratch")
        assert f"{name}: {len(index)} images" in stdout
        total += len(index)
    assert total == 3


def test_cli_split_is_deterministic_and_loads_back(tmp_path, capsys):
    from PIL import Image

    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    coco = skewed_coco(1, images=40)
    for im in coco["images"]:
        Image.new("RGB", (16, 16)).save(src / "images" / im["file_name"])
    (src / "annotations.json").write_text(json.dumps(coco))
    runs = []
    for out in (tmp_path / "a", tmp_path / "b"):
        argv = ["data", "split", src / "annotations.json", out, "--fractions", "0.7", "0.15", "0.15", "--seed", "0"]
        code, stdout, err = run_cli(argv, capsys)
        assert code == 0, err
        runs.append(
            {n: [r.file_name for r in load_coco(out / n / "annotations.json").images] for n in ("train", "val", "test")}
        )
    assert runs[0] == runs[1]
    assert sum(len(v) for v in runs[0].values()) == 40 and all(runs[0].values())


def test_cli_yolo_line_with_four_numbers_is_one_error_line(tmp_path, capsys):
    src = tmp_path / "yolo"
    yolo_case(src)
    label = src / "labels" / "im1.txt"
    label.write_text("0.5 0.5 0.25 0.25\n")
    line = one_line_error(["data", "import", "yolo", src, tmp_path / "out"], capsys)
    assert line.startswith(f"error: {label}, line 1: expected 5 values")
    assert not (tmp_path / "out" / "annotations.json").exists()


def test_cli_malformed_xml_is_one_error_line(tmp_path, capsys):
    src = tmp_path / "voc"
    voc_case(src)
    xml = src / "Annotations" / "img0.xml"
    xml.write_text(xml.read_text().replace("<ymin>1</ymin>", "<ymin></ymin>"))
    line = one_line_error(["data", "import", "voc", src, tmp_path / "out"], capsys)
    assert line.startswith(f"error: {xml}: <object> #1") and "<ymin>" in line


def test_output_inside_the_source_is_refused(tmp_path, capsys):
    src = tmp_path / "yolo"
    yolo_case(src)
    line = one_line_error(["data", "import", "yolo", src, src / "coco"], capsys)
    assert "inside the source" in line


def test_cli_imports_voc_xml_apart_from_their_images_folder(tmp_path, capsys):
    coco = voc_case(tmp_path / "src", images_folder="IMAGES", xml_folder="ANNOTATIONS")
    images = tmp_path / "pictures"
    (tmp_path / "src" / "IMAGES").rename(images)  # outside SRC: found with --images
    code, printed, _ = run_cli(
        ["data", "import", "voc", tmp_path / "src", tmp_path / "out", "--images", images], capsys
    )
    assert code == 0 and "3 images" in printed
    index = load_coco(tmp_path / "out" / "annotations.json")
    assert len(index.images) == len(coco["images"]) and all(r.path.is_file() for r in index.images)
    code, _, err = run_cli(["data", "import", "yolo", tmp_path / "src", tmp_path / "o2", "--images", images], capsys)
    assert code != 0 and "--images is for VOC datasets" in err
