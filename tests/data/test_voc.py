"""Pascal VOC XML -> COCO: round trips through the writer, detectron2's 1-based box handling, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from defectfusion.data.voc import read_voc, write_voc
from defectfusion.errors import DataError
from tests.helpers import coco_from_boxes

CLASSES = ["scratch", "crack", "dent"]  # not sorted: the reader sorts unless --classes says otherwise


def voc_case(root: Path, images_folder: str = "JPEGImages", xml_folder: str = "Annotations") -> dict:
    """Three images with integer-valued pixel boxes (VOC stores integers) written as a VOC dataset."""
    sizes = [(40, 30), (50, 20), (32, 32)]
    # (annotation id, image id, category id, x, y, w, h): integer-valued pixels
    boxes = [(1, 1, 1, 0, 0, 10, 12), (2, 1, 1, 5, 3, 20, 9), (3, 2, 2, 1, 2, 30, 17), (4, 2, 3, 7, 8, 3, 4)]
    coco = coco_from_boxes(sizes, boxes, CLASSES, prefix="img")
    images = coco["images"]
    (root / images_folder).mkdir(parents=True, exist_ok=True)
    for im in images:
        Image.new("RGB", (im["width"], im["height"]), (90, 90, 90)).save(root / images_folder / im["file_name"])
    write_voc(coco, root / xml_folder)
    return coco


def boxes_by_name(coco: dict) -> dict[str, list[tuple[str, tuple[float, ...]]]]:
    names = {c["id"]: c["name"] for c in coco["categories"]}
    files = {im["id"]: Path(im["file_name"]).name for im in coco["images"]}
    result: dict[str, list] = {f: [] for f in files.values()}
    for a in coco["annotations"]:
        result[files[a["image_id"]]].append((names[a["category_id"]], tuple(a["bbox"])))
    return {k: sorted(v) for k, v in result.items()}


def test_round_trip_keeps_boxes_and_classes(tmp_path):
    coco = voc_case(tmp_path)
    data = read_voc(tmp_path)
    got, want = boxes_by_name(data.coco), boxes_by_name(coco)
    assert got.keys() == want.keys()
    for name in want:
        assert [c for c, _ in got[name]] == [c for c, _ in want[name]]
        for (_, g), (_, w) in zip(got[name], want[name], strict=True):
            assert g == pytest.approx(w, abs=1e-6)
    assert [c["name"] for c in data.coco["categories"]] == sorted(CLASSES)  # sorted by default
    assert [c["id"] for c in data.coco["categories"]] == [1, 2, 3]
    assert data.num_background == 1  # img2.png: an XML without objects is kept
    assert [(im["width"], im["height"]) for im in data.coco["images"]] == [(40, 30), (50, 20), (32, 32)]
    assert all(a["iscrowd"] == 0 and a["area"] == a["bbox"][2] * a["bbox"][3] for a in data.coco["annotations"])


def test_one_based_pixels_become_zero_based_as_detectron2(tmp_path):
    voc_case(tmp_path)
    xml = (tmp_path / "Annotations" / "img0.xml").read_text()
    assert "<xmin>1</xmin>" in xml and "<xmax>10</xmax>" in xml  # box [0, 0, 10, 12] stored 1-based
    data = read_voc(tmp_path)
    first = data.coco["annotations"][0]["bbox"]
    assert first == [0.0, 0.0, 10.0, 12.0]


def test_size_comes_from_the_image_when_the_xml_has_none(tmp_path):
    voc_case(tmp_path)
    xml = tmp_path / "Annotations" / "img1.xml"
    text = xml.read_text()
    xml.write_text(text[: text.index("<size>")] + text[text.index("</size>") + len("</size>") :])
    data = read_voc(tmp_path)
    assert (data.coco["images"][1]["width"], data.coco["images"][1]["height"]) == (50, 20)


def test_classes_file_sets_the_order_and_rejects_unknown_names(tmp_path):
    voc_case(tmp_path)
    order = tmp_path / "order.txt"
    order.write_text("dent\n# a comment\nscratch\ncrack\n")
    data = read_voc(tmp_path, classes=order)
    assert [c["name"] for c in data.coco["categories"]] == ["dent", "scratch", "crack"]
    assert boxes_by_name(data.coco) == boxes_by_name(read_voc(tmp_path).coco)
    order.write_text("dent\nscratch\n")
    with pytest.raises(DataError, match=r"img\d\.xml: <object> #\d has class 'crack', which is not in"):
        read_voc(tmp_path, classes=order)


def test_flat_folder_and_images_without_xml(tmp_path):
    voc_case(tmp_path, images_folder=".", xml_folder=".")
    Image.new("RGB", (8, 8)).save(tmp_path / "unlabeled.png")
    data = read_voc(tmp_path)
    assert sorted(im["file_name"] for im in data.coco["images"]) == ["img0.png", "img1.png", "img2.png"]
    assert data.unlabeled == ["unlabeled.png"]
    assert len(data.coco["annotations"]) == 4


@pytest.mark.parametrize(
    ("broken", "expected"),
    [
        (lambda s: s.replace("</annotation>", ""), r"img1\.xml, line \d+, column \d+: not well-formed XML"),
        (lambda s: s.replace("<name>crack</name>", "", 1), r"img1\.xml: <object> #1 has no <name>"),
        (lambda s: s.replace("<xmax>31</xmax>", "<xmax>3x1</xmax>"), r"img1\.xml: <object> #1 \(.*<xmax> is '3x1'"),
        (lambda s: s.replace("<bndbox>", "<box>").replace("</bndbox>", "</box>"), r"has no <bndbox>"),
    ],
)
def test_malformed_xml_is_one_line_naming_file_and_element(tmp_path, broken, expected):
    voc_case(tmp_path)
    xml = tmp_path / "Annotations" / "img1.xml"
    text = xml.read_text()
    assert "<xmax>31</xmax>" in text and "<name>crack</name>" in text
    xml.write_text(broken(text))
    with pytest.raises(DataError, match=expected) as err:
        read_voc(tmp_path)
    assert "\n" not in str(err.value) and str(xml) in str(err.value)


def _same_dataset(a: dict, b: dict) -> bool:
    return boxes_by_name(a) == boxes_by_name(b) and len(a["images"]) == len(b["images"])


def test_any_layout_gives_the_same_images_and_boxes(tmp_path):
    """NEU-DET's ANNOTATIONS/ + IMAGES/, per-class image folders, a tree of links to images elsewhere and an
    images folder given apart: the same images and boxes. Fails if images were looked for in JPEGImages/ or
    beside the XML only, or if a link's path were resolved against the source."""
    reference = voc_case(tmp_path / "voc")
    neu = tmp_path / "neu"
    voc_case(neu, images_folder="IMAGES", xml_folder="ANNOTATIONS")
    assert _same_dataset(read_voc(neu).coco, reference)

    per_class = tmp_path / "per_class"
    voc_case(per_class, images_folder="IMAGES", xml_folder="ANNOTATIONS")
    for image in sorted((per_class / "IMAGES").glob("*.png")):
        folder = per_class / "IMAGES" / ("a" if image.stem.endswith("0") else "b")
        folder.mkdir(exist_ok=True)
        image.rename(folder / image.name)
    data = read_voc(per_class)
    assert _same_dataset(data.coco, reference)
    assert {im["file_name"].split("/")[0] for im in data.coco["images"]} == {"a", "b"}  # kept as found

    elsewhere = tmp_path / "elsewhere"
    voc_case(elsewhere)  # the real images, outside the linked tree
    linked = tmp_path / "linked"
    (linked / "Annotations").mkdir(parents=True)
    (linked / "images").mkdir()
    for xml in (elsewhere / "Annotations").glob("*.xml"):
        (linked / "Annotations" / xml.name).write_text(xml.read_text())
    for image in (elsewhere / "JPEGImages").glob("*.png"):
        (linked / "images" / image.name).symlink_to(image)
    data = read_voc(linked)
    assert _same_dataset(data.coco, reference)
    assert all(p.is_symlink() and p.parent == linked / "images" for p in data.sources)  # links stay links

    apart = tmp_path / "apart"
    (apart / "xml").mkdir(parents=True)
    for xml in (elsewhere / "Annotations").glob("*.xml"):
        (apart / "xml" / xml.name).write_text(xml.read_text())
    assert _same_dataset(read_voc(apart, images=elsewhere / "JPEGImages").coco, reference)


def test_two_images_of_one_name_are_one_error_naming_both(tmp_path):
    voc_case(tmp_path, images_folder="IMAGES", xml_folder="ANNOTATIONS")
    (tmp_path / "IMAGES" / "copy").mkdir()
    (tmp_path / "IMAGES" / "img1.png").rename(tmp_path / "IMAGES" / "copy" / "img1.png")
    (tmp_path / "other").mkdir()
    Image.new("RGB", (50, 20)).save(tmp_path / "other" / "img1.png")
    with pytest.raises(DataError, match=r"img1.xml: its image 'img1.png' matches 2 files: .*copy/img1.png and .*"):
        read_voc(tmp_path)


def test_an_image_nowhere_says_where_it_looked_and_a_link_loop_ends(tmp_path):
    voc_case(tmp_path)
    (tmp_path / "JPEGImages" / "img2.png").unlink()
    (tmp_path / "JPEGImages" / "loop").symlink_to(tmp_path)  # a folder link back up: walked once
    with pytest.raises(DataError, match=f"img2.xml: its image 'img2.png' is nowhere under {tmp_path}"):
        read_voc(tmp_path)
