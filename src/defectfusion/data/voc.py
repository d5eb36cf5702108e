"""Pascal VOC XML annotations to a COCO dict (and back, for round trips).

Layouts read: any. The XML files are ``SRC/Annotations/`` (any capitalisation) or every ``.xml``
under ``SRC``; each one's image is found by its file name (``<filename>``, else the XML's stem with
an image extension) anywhere under ``SRC`` or under ``images`` when given: ``JPEGImages/``,
``IMAGES/``, per-class subfolders, beside the XML. Folder links are followed, image paths are kept
as found (a link stays a link), and two images of one name are one error naming both.

VOC boxes are 1-based inclusive pixel indexes; they are converted as
detectron2's ``pascal_voc`` loader does ("make pixel indexes 0-based"): ``x1 = xmin - 1``,
``y1 = ymin - 1``, ``x2 = xmax``, ``y2 = ymax``. :func:`write_voc` inverts that exactly.

Why not globox / datumaro: globox is light, but its ``BoundingBox.from_xml`` takes ``xmin``/``ymin``
as they are (no 1-pixel shift), keeps YOLO class indexes as label strings (the names mapping is
left to the caller) and reports a bad value as Python's "could not convert string to float"
without the file or line. datumaro is a large framework (C++/Rust extensions, many plugins and
dependencies) for what is a few hundred lines here, and its VOC reader also keeps the 1-based
values. So ``xml.etree.ElementTree`` and ``yaml`` do the parsing here, with one-line errors.
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError
from .images import IMAGE_EXTENSIONS, displayed_size

__all__ = ["ImportedDataset", "build_coco", "image_files", "read_class_file", "read_voc", "write_voc"]


@dataclass
class ImportedDataset:
    """A dataset read from another format, ready to write as COCO.

    Attributes:
        coco: the COCO dict; image ``file_name``\\ s are relative to ``images_root``.
        sources: the image file of each entry of ``coco["images"]``, same order.
        images_root: folder the ``file_name``\\ s are relative to (where the images were found).
        unlabeled: images without a label file (YOLO: kept as background; VOC: left out).
        orphan_labels: label / XML files whose image was not found (YOLO only; VOC raises).
    """

    coco: dict[str, Any]
    sources: list[Path]
    images_root: Path
    unlabeled: list[str] = field(default_factory=list)
    orphan_labels: list[str] = field(default_factory=list)

    @property
    def num_background(self) -> int:
        """Images without any annotation (empty label files and, for YOLO, missing ones)."""
        used = {a["image_id"] for a in self.coco["annotations"]}
        return sum(1 for im in self.coco["images"] if im["id"] not in used)


def image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively), sorted, hidden files and folders skipped."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def read_class_file(path: Path) -> list[str]:
    """Class names, one per line (blank lines and ``#`` comments skipped); repeats are an error."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except OSError as e:
        raise DataError(f"cannot read the classes file {path}: {e.strerror or e}; check the path") from None
    names: list[str] = []
    for number, line in enumerate(lines, 1):
        name = line.split("#", 1)[0].strip()
        if not name:
            continue
        if name in names:
            raise DataError(f"{path}, line {number}: class {name!r} is listed twice; list each class once")
        names.append(name)
    if not names:
        raise DataError(f"classes file {path} lists no class names; write one name per line")
    return names


def build_coco(
    class_names: list[str],
    images: list[tuple[str, int, int]],
    boxes: list[list[tuple[int, float, float, float, float]]],
) -> dict[str, Any]:
    """A COCO dict: ``images`` ``(file_name, width, height)``, per image ``(label, x, y, w, h)`` boxes.

    Category ids are ``1..C`` in ``class_names`` order; image and annotation ids count from 1.
    """
    coco_images, anns = [], []
    for image_id, ((file_name, width, height), image_boxes) in enumerate(zip(images, boxes, strict=True), 1):
        coco_images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for label, x, y, w, h in image_boxes:
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": label + 1,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i, "name": name} for i, name in enumerate(class_names, 1)]
    return {"images": coco_images, "annotations": anns, "categories": categories}


# --------------------------------------------------------------------------- reading


@dataclass
class _VocObject:
    name: str
    box: tuple[float, float, float, float]  # x1, y1, x2, y2, 0-based


def _text(el: ET.Element, tag: str) -> str | None:
    child = el.find(tag)
    if child is None or child.text is None or not child.text.strip():
        return None
    return child.text.strip()


def _parse_xml(path: Path) -> tuple[str | None, tuple[int, int] | None, list[_VocObject]]:
    """``(<filename>, (width, height) or None, objects)`` of one VOC XML file."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        line, col = e.position
        raise DataError(
            f"{path}, line {line}, column {col}: not well-formed XML ({str(e).split(':')[0]}); "
            f"fix the file or re-export it from the annotation tool"
        ) from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    if root.tag != "annotation":
        raise DataError(f"{path}: the root element is <{root.tag}>, expected a Pascal VOC <annotation>")
    size = None
    size_el = root.find("size")
    if size_el is not None:
        w, h = _text(size_el, "width"), _text(size_el, "height")
        try:
            size = (int(float(w)), int(float(h))) if w and h else None
        except ValueError:
            raise DataError(
                f"{path}: <size> has width={w!r}, height={h!r}; expected integer pixel counts: fix or delete <size>"
            ) from None
        if size is not None and (size[0] <= 0 or size[1] <= 0):
            size = None  # some tools write 0: read the size from the image instead
    objects = []
    for k, obj in enumerate(root.findall("object"), 1):
        where = f"{path}: <object> #{k}"
        name = _text(obj, "name")
        if name is None:
            raise DataError(f"{where} has no <name>; every object needs its class name: add it or delete the object")
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise DataError(
                f"{where} ({name}) has no <bndbox>; expected <bndbox> with xmin, ymin, xmax, ymax: add it or "
                f"delete the object"
            )
        coords = []
        for tag in ("xmin", "ymin", "xmax", "ymax"):
            raw = _text(bndbox, tag)
            try:
                value = float(raw) if raw is not None else math.nan
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                raise DataError(
                    f"{where} ({name}): <bndbox>/<{tag}> is {raw!r}; expected a pixel coordinate number "
                    f"(1-based): fix the value"
                )
            coords.append(value)
        xmin, ymin, xmax, ymax = coords
        if xmax < xmin or ymax < ymin:
            raise DataError(
                f"{where} ({name}): <bndbox> has xmin={xmin:g} > xmax={xmax:g} or ymin={ymin:g} > ymax={ymax:g}; "
                f"expected xmin <= xmax and ymin <= ymax: swap or fix them"
            )
        objects.append(_VocObject(name, (xmin - 1.0, ymin - 1.0, xmax, ymax)))
    return _text(root, "filename"), size, objects


def _walk_images(root: Path) -> list[Path]:
    """Image files under ``root``, following folder links (each real folder once), hidden ones skipped."""
    found, seen = [], set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [
            Path(folder) / f
            for f in sorted(files)
            if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_EXTENSIONS
        ]
    return found


class _ImageIndex:
    """Every image under the search roots, by file name and by stem (case kept, then case-folded)."""

    def __init__(self, roots: list[Path]):
        self.by_name: dict[str, list[Path]] = {}
        self.by_stem: dict[str, list[Path]] = {}
        for root in roots:
            for path in _walk_images(root):
                self.by_name.setdefault(path.name.lower(), []).append(path)
                self.by_stem.setdefault(path.stem.lower(), []).append(path)

    def find(self, xml: Path, filename: str | None) -> list[Path]:
        """The candidates for ``xml``'s image: its ``<filename>``'s name, else its stem with any image extension."""
        if filename:
            named = self.by_name.get(Path(filename.replace("\\", "/")).name.lower(), [])
            if named:
                return named
        return self.by_stem.get(xml.stem.lower(), [])


def _pick(xml: Path, filename: str | None, candidates: list[Path]) -> Path:
    """One image of several with the same name: the one beside the XML, or whose path ends with ``<filename>``."""
    unique = list(dict.fromkeys(candidates))
    if len(unique) == 1:
        return unique[0]
    beside = [c for c in unique if c.parent == xml.parent]
    if len(beside) == 1:
        return beside[0]
    if filename:
        tail = Path(filename.replace("\\", "/")).parts
        ending = [c for c in unique if c.parts[-len(tail) :] == tail]
        if len(ending) == 1:
            return ending[0]
    shown = " and ".join(str(c) for c in unique[:2]) + (f" (and {len(unique) - 2} more)" if len(unique) > 2 else "")
    raise DataError(
        f"{xml}: its image {filename or xml.stem!r} matches {len(unique)} files: {shown}; keep one, or give the "
        f"images folder with --images"
    )


def _common_root(paths: list[Path]) -> Path:
    """The deepest folder holding every path, as the paths are written (links not resolved)."""
    return Path(os.path.commonpath([str(p.parent.absolute()) for p in paths]))


def _annotation_files(src: Path) -> list[Path]:
    folder = next((d for d in sorted(src.iterdir()) if d.is_dir() and d.name.lower() == "annotations"), src)
    return sorted(p for p in folder.rglob("*.xml") if not any(s.startswith(".") for s in p.relative_to(src).parts))


def read_voc(src: str | Path, classes: str | Path | None = None, images: str | Path | None = None) -> ImportedDataset:
    """Read a Pascal VOC dataset as COCO.

    Args:
        src: the dataset folder: ``Annotations/`` (any capitalisation) or XML files anywhere under it.
        classes: a file with one class name per line: category order (default: sorted class names);
            an object whose name is not listed is an error.
        images: where the images are (default: anywhere under ``src``); may lie outside ``src``.

    Images without an XML file are left out and listed in ``unlabeled``; an XML without objects
    is a background image (kept). The ``file_name`` of each image is relative to the deepest folder holding
    every image, as found (a linked image keeps its link path).

    Raises:
        DataError: one line naming the XML file and element for a malformed file, an unknown
            class, an XML whose image cannot be found, or two images of one name.
    """
    src = Path(src)
    if not src.is_dir():
        raise DataError(f"VOC source {src} is not a folder; pass the dataset folder (with Annotations/ or XML files)")
    images_root = Path(images) if images is not None else src
    if not images_root.is_dir():
        raise DataError(f"images folder {images_root} does not exist; pass the folder that holds the images")
    xmls = _annotation_files(src)
    if not xmls:
        raise DataError(f"no .xml annotation files under {src}; is it a Pascal VOC dataset?")
    index = _ImageIndex([images_root])
    parsed = []
    for xml in xmls:
        filename, size, objects = _parse_xml(xml)
        candidates = index.find(xml, filename)
        if not candidates:
            raise DataError(
                f"{xml}: its image {filename or xml.stem + '.*'!r} is nowhere under {images_root}; add the image, fix "
                f"<filename>, or give the images folder with --images"
            )
        parsed.append((xml, _pick(xml, filename, candidates), size, objects))

    found = sorted({o.name for _, _, _, objs in parsed for o in objs})
    names = read_class_file(Path(classes)) if classes is not None else found
    class_index = {name: i for i, name in enumerate(names)}
    root = _common_root([image for _, image, _, _ in parsed])
    rows, boxes, sources = [], [], []
    for xml, image, size, objects in parsed:
        for k, o in enumerate(objects, 1):
            if o.name not in class_index:
                raise DataError(
                    f"{xml}: <object> #{k} has class {o.name!r}, which is not in {classes} ({', '.join(names)}); "
                    f"add it to the classes file or fix the name"
                )
        width, height = size if size is not None else displayed_size(image)
        rows.append((os.path.relpath(image.absolute(), root).replace(os.sep, "/"), width, height))
        boxes.append(
            [(class_index[o.name], o.box[0], o.box[1], o.box[2] - o.box[0], o.box[3] - o.box[1]) for o in objects]
        )
        sources.append(image)
    used = {s.absolute() for s in sources}
    unlabeled = [
        os.path.relpath(p.absolute(), images_root.absolute()).replace(os.sep, "/")
        for p in _walk_images(images_root)
        if p.absolute() not in used
    ]
    return ImportedDataset(build_coco(names, rows, boxes), sources, root, unlabeled=unlabeled)


# --------------------------------------------------------------------------- writing


def _number(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def write_voc(coco: dict[str, Any], annotations_dir: str | Path) -> list[Path]:
    """Write one VOC XML per COCO image into ``annotations_dir`` (``<image stem>.xml``).

    Inverse of the reader: ``xmin = x + 1``, ``ymin = y + 1``, ``xmax = x + w``, ``ymax = y + h``.
    Integer-valued coordinates are written as integers (what VOC tools expect).
    """
    out = Path(annotations_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = {c["id"]: c["name"] for c in coco["categories"]}
    by_image: dict[int, list[dict[str, Any]]] = {im["id"]: [] for im in coco["images"]}
    for a in coco["annotations"]:
        by_image[a["image_id"]].append(a)
    written = []
    for im in coco["images"]:
        root = ET.Element("annotation")
        ET.SubElement(root, "filename").text = Path(im["file_name"]).name
        size = ET.SubElement(root, "size")
        ET.SubElement(size, "width").text = str(im["width"])
        ET.SubElement(size, "height").text = str(im["height"])
        ET.SubElement(size, "depth").text = "3"
        for a in by_image[im["id"]]:
            x, y, w, h = a["bbox"]
            obj = ET.SubElement(root, "object")
            ET.SubElement(obj, "name").text = names[a["category_id"]]
            ET.SubElement(obj, "difficult").text = "0"
            box = ET.SubElement(obj, "bndbox")
            for tag, v in (("xmin", x + 1), ("ymin", y + 1), ("xmax", x + w), ("ymax", y + h)):
                ET.SubElement(box, tag).text = _number(v)
        ET.indent(root)
        path = out / (Path(im["file_name"]).stem + ".xml")
        ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
        written.append(path)
    return written
