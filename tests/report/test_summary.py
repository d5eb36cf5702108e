"""report.md links files that exist; report.html carries every image inside it and escapes user text."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

from defectfusion.errors import DefectFusionError
from defectfusion.report.summary import Section, build_report, write_report
from tests.helpers import REPORT_CLASSES as NAMES
from tests.helpers import check_html
from tests.helpers import fake_metrics as make_metrics


def fake_metrics(ap50s, crack_as_scratch, absent=(), silent=()):
    """Metrics whose ROTURA_FRACTURA boxes were called RAYONES_ARANAZOS ``crack_as_scratch`` times."""
    counts = np.array(
        [
            [50, 1, 0, 0, 3],
            [0, 30, crack_as_scratch, 0, 4],
            [1, 3, 40, 0, 2],
            [0, 0, 0, 25, 1],
            [2, 3, 4, 1, 0],
        ]
    )
    for name in absent:
        counts[NAMES.index(name), :] = 0
    return make_metrics(ap50s, counts, absent, map_ratio=None, silent=silent)


def md_links(path: Path) -> list[Path]:
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", path.read_text(encoding="utf-8"))
    return [path.parent / unquote(link) for link in links]


def png(path: Path, color=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (64, 48), color)
    image.putpixel((3, 3), (0, 0, 0))
    image.save(path)
    return path


def test_write_report_inlines_images_and_links_them(tmp_path):
    out = tmp_path / "report"
    inside = png(out / "plots" / "a.png")
    outside = png(tmp_path / "elsewhere" / "my plot.png", (20, 200, 20))
    clash = png(tmp_path / "other" / "a.png", (20, 20, 200))  # same name as the one inside, other content
    sections = [
        Section(
            "Results",
            "Some **bold** text and `code`.\n\n- one\n- two",
            table=[{"class": "A", "AP": 0.5}],
            images=[inside, (outside, "a caption")],
        ),
        Section("More", images=[clash], level=3),
    ]
    md, html_path = write_report(out, "My report", sections)
    assert (md, html_path) == (out / "report.md", out / "report.html")
    links = md_links(md)
    assert len(links) == 3 and all(p.is_file() for p in links)
    assert all(p.resolve().is_relative_to(out.resolve()) for p in links)  # copied in: the folder is portable
    assert len({p.read_bytes() for p in links}) == 3  # the name clash did not overwrite anything
    parser = check_html(html_path)
    assert len(parser.images) == 3
    text = html_path.read_text()
    assert "<strong>bold</strong>" in text and "<code>code</code>" in text and "<li>two</li>" in text
    assert '<td class="num">0.500</td>' in text and "<figcaption>a caption</figcaption>" in text
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


def test_user_text_is_escaped(tmp_path):
    evil = '<script>alert("x")</script> & <img src="http://evil/x.png">'
    sections = [
        Section(
            f"Class {evil}",
            f"Description: {evil}\n\n[click](http://example.com/x) and [top](#top)",
            table=[{"class": evil, "value": None}],
            images=[(png(tmp_path / "p.png"), evil)],
        )
    ]
    md, html_path = write_report(tmp_path / "r", f"Report {evil}", sections)
    parser = check_html(html_path)
    assert parser.tags.count("img") == 1  # only the inlined figure, not the user's <img>
    text = html_path.read_text()
    assert "&lt;script&gt;" in text and "&lt;img src=" in text
    assert 'href="#top"' in text and "http://example.com/x" in text and 'href="http' not in text
    assert '<td class="num">–</td>' in text or "<td>–</td>" in text  # None shown as undefined, not 0
    assert "| – |" in md.read_text()
    assert "<script" not in md.read_text() and "<img" not in md.read_text()  # no raw HTML in the markdown


def test_markdown_blocks_render(tmp_path):
    text = (
        "# Sub heading\n\n1. first\n2. second\n\n| a | b |\n|---|---:|\n| x\\|y | 1 |\n\n"
        "```\n<raw> code\n```\nplain *it*"
    )
    _, html_path = write_report(tmp_path, "T", [Section("S", text)])
    out = html_path.read_text()
    assert "<h3>Sub heading</h3>" in out and "<ol><li>first</li><li>second</li></ol>" in out
    assert "<td>x|y</td>" in out and "<pre><code>&lt;raw&gt; code</code></pre>" in out
    assert "<em>it</em>" in out


def test_missing_or_bad_image_is_a_clear_error(tmp_path):
    with pytest.raises(DefectFusionError, match="does not exist"):
        write_report(tmp_path, "T", [Section("S", images=[tmp_path / "nope.png"])])
    fake = tmp_path / "fake.png"
    fake.write_text("not an image")
    with pytest.raises(DefectFusionError, match="not a PNG"):
        write_report(tmp_path / "r", "T", [Section("S", images=[fake])])


def test_build_report_end_to_end(tmp_path):
    baseline = fake_metrics([0.98, 0.58, 0.81, 0.92], crack_as_scratch=12)
    fused = fake_metrics([0.98, 0.67, 0.84, 0.92], crack_as_scratch=7, absent=("PERFORACIONES",))
    records = [{"phase": "baseline", "map50": 0.82}] + [
        {"phase": p, "epoch": e, "map50": 0.8 + 0.01 * e, "train_loss": 3 - 0.1 * e}
        for p in ("phase1", "phase2")
        for e in range(1, 4)
    ]
    rng = np.random.default_rng(0)
    images = [
        {
            "image": rng.integers(0, 255, (64, 80, 3), dtype=np.uint8),
            "detections": {"boxes": [[5, 5, 40, 40]], "labels": [1], "scores": [0.9]},
            "gt": ([[6, 6, 42, 38]], [2]),
            "title": "val_0.png",
        }
    ]
    md, html_path = build_report(
        tmp_path / "report",
        fused,
        baseline=baseline.to_dict(),  # a metrics.json read back reads the same
        training=records,
        images=images,
        what_if=[("defects6.yml", fused), ("short.yml", baseline)],
        pair=("ROTURA_FRACTURA", "RAYONES_ARANAZOS"),
    )
    links = md_links(md)
    assert len(links) >= 8 and all(p.is_file() for p in links)
    parser = check_html(html_path)
    assert len(parser.images) == len(links)
    text = md.read_text()
    assert "ROTURA_FRACTURA called RAYONES_ARANAZOS: 12 -> 7 (-5)" in text
    assert "| PERFORACIONES | 26 | 0.920 | – | – |" in text  # baseline defined, fused undefined: no delta
    assert "undefined (no ground truth in this data, shown as –): PERFORACIONES" in text
    assert "| **all classes (mAP)** |  | 0.823 | 0.830 | +0.007 | – | – | – |" in text


def test_build_report_without_pair_or_baseline(tmp_path):
    m = dataclasses.replace(fake_metrics([0.9, 0.5, 0.8, 0.7], crack_as_scratch=3), pr_curves={})
    md, html_path = build_report(tmp_path, m, pair=False, training=tmp_path / "no_run")
    text = md.read_text()
    assert "called" not in text and "Training curves" in text and "Not drawn" in text
    assert len(md_links(md)) == 2  # the two confusion matrices
    check_html(html_path)


def test_a_pair_that_was_never_predicted_says_so_and_the_grid_is_titled_by_its_split(tmp_path):
    """Zeros from a model that predicts neither class read as "neither detected", not as "0 -> 0"; the image grid
    is named after the split evaluated. Fails if the counts were printed regardless."""
    silent = fake_metrics([0.9, 0.5, 0.8, 0.7], crack_as_scratch=0, silent=("ROTURA_FRACTURA", "RAYONES_ARANAZOS"))
    title = "a title long enough to need wrapping in a cell of this grid, twice over, at least"
    images = [{"image": np.zeros((32, 40, 3), dtype=np.uint8), "detections": None, "gt": ([[2, 2, 9, 9]], [1]),
               "title": title}]  # fmt: skip
    md, _ = build_report(
        tmp_path, silent, baseline=silent, pair=("ROTURA_FRACTURA", "RAYONES_ARANAZOS"), images=images, split="test"
    )
    text = md.read_text()
    assert "detected neither ROTURA_FRACTURA nor RAYONES_ARANAZOS" in text and "0 -> 0" not in text
    assert "Predictions on the test images" in text and "validation images" not in text
    talking = fake_metrics([0.9, 0.5, 0.8, 0.7], crack_as_scratch=0)
    md, _ = build_report(tmp_path / "b", talking, baseline=talking, pair=("ROTURA_FRACTURA", "RAYONES_ARANAZOS"))
    assert "ROTURA_FRACTURA called RAYONES_ARANAZOS: 0 -> 0 (0)" in md.read_text()
