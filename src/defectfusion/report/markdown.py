"""``report.md`` and a self-contained ``report.html`` from sections of text, tables and figures.

:func:`write_report` writes both. The HTML file carries everything inside it: images are inlined
as base64 ``data:`` URIs, the style sheet is embedded, nothing is fetched from anywhere. All text
is HTML-escaped (class names and descriptions come from users); markdown links to other places
are shown as text, not links.
"""

from __future__ import annotations

import base64
import html
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..errors import DefectFusionError
from ..io import atomic_path, atomic_write_text
from ..version import __version__
from .values import format_cell, markdown_table, numeric_columns

__all__ = ["ImageRef", "Section", "render_html", "render_markdown", "write_report"]

ImageRef = str | os.PathLike | tuple[str | os.PathLike, str]


@dataclass
class Section:
    """One part of a report.

    Attributes:
        heading: the section title (plain text).
        text: markdown: paragraphs, ``-`` / ``1.`` lists, ``**bold**``, ``*italic*``, ```code```,
            ``|`` tables and fenced code blocks are rendered in the HTML too.
        table: optional rows (dicts with the same keys, in column order); ``None`` -> ``–``,
            floats to three decimals, strings as given (markdown emphasis allowed).
        images: PNG files, each a path or ``(path, caption)``.
        level: heading level (2 = top-level section).
    """

    heading: str
    text: str = ""
    table: Sequence[Mapping[str, Any]] | None = None
    images: Sequence[ImageRef] = field(default_factory=list)
    level: int = 2


@dataclass(frozen=True)
class _Image:
    path: Path  # where the file is (inside the report folder)
    caption: str


# ----------------------------------------------------------------------------------------------
# images
# ----------------------------------------------------------------------------------------------
_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"))


def _mime(data: bytes, path: Path) -> str:
    for magic, mime in _SIGNATURES:
        if data.startswith(magic):
            return mime
    raise DefectFusionError(f"{path}: not a PNG or JPEG image; report images must be PNG (or JPEG) files")


def _collect_images(out_dir: Path, sections: Sequence[Section]) -> list[list[_Image]]:
    """Resolve each section's images; files outside ``out_dir`` are copied into ``out_dir/plots``."""
    out_root = out_dir.resolve()
    used: set[Path] = set()
    copied: dict[Path, Path] = {}
    result = []
    for section in sections:
        images = []
        for ref in section.images:
            path, caption = ref if isinstance(ref, tuple) else (ref, "")
            path = Path(path)
            if not path.is_file():
                raise DefectFusionError(f"report section {section.heading!r}: image {path} does not exist")
            resolved = path.resolve()
            if resolved in copied:
                resolved = copied[resolved]
            elif not resolved.is_relative_to(out_root):
                target = out_root / "plots" / path.name
                stem, n = path.stem, 1
                while target in used or (target.exists() and target.read_bytes() != path.read_bytes()):
                    target = out_root / "plots" / f"{stem}_{n}{path.suffix}"
                    n += 1
                with atomic_path(target, suffix=path.suffix) as tmp:
                    shutil.copyfile(path, tmp)
                copied[resolved] = target
                resolved = target
            used.add(resolved)
            images.append(_Image(resolved, str(caption)))
        result.append(images)
    return result


# ----------------------------------------------------------------------------------------------
# markdown
# ----------------------------------------------------------------------------------------------
def _md_body(text: str) -> str:
    """Section markdown with ``<`` outside code written as an entity: user text in it
    (class names, descriptions) never becomes raw HTML in a markdown viewer."""
    parts = re.split(r"(```.*?```|`[^`\n]*`)", text, flags=re.S)
    return "".join(p if p.startswith("`") else p.replace("<", "&lt;") for p in parts)


def _md_text(text: str) -> str:
    """Plain user text (titles, headings, captions) for markdown: no raw HTML, no line breaks."""
    return " ".join(text.replace("<", "&lt;").split())


def render_markdown(
    title: str, sections: Sequence[Section], images: Sequence[Sequence[_Image]], out_dir: Path, generated: str
) -> str:
    out = [f"# {_md_text(title)}", "", f"*{generated}*", ""]
    for section, imgs in zip(sections, images, strict=True):
        out += ["#" * max(2, min(6, section.level)) + " " + _md_text(section.heading), ""]
        if section.text.strip():
            out += [_md_body(section.text.strip()), ""]
        if section.table:
            out += [markdown_table(section.table), ""]
        for img in imgs:
            rel = Path(os.path.relpath(img.path, out_dir.resolve())).as_posix()
            alt = _md_text(img.caption or img.path.stem).replace("[", "(").replace("]", ")")
            out.append(f"![{alt}]({quote(rel)})")
            if img.caption:
                out += ["", f"*{_md_text(img.caption)}*"]
            out.append("")
    return "\n".join(out).rstrip() + "\n"


# ----------------------------------------------------------------------------------------------
# HTML
# ----------------------------------------------------------------------------------------------
_CSS = """
body { font-family: -apple-system, "Segoe UI", "DejaVu Sans", Helvetica, Arial, sans-serif; color: #222;
       max-width: 1100px; margin: 2em auto; padding: 0 1.2em; line-height: 1.5; }
h1 { border-bottom: 2px solid #0072B2; padding-bottom: .2em; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: .15em; margin-top: 2em; }
.meta { color: #666; font-size: .9em; }
table { border-collapse: collapse; margin: 1em 0; font-size: .92em; }
th, td { border: 1px solid #d0d0d0; padding: .3em .65em; text-align: left; }
th { background: #f3f6f9; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr:nth-child(even) td { background: #fafafa; }
.pos { color: #1B7837; font-weight: 600; } .neg { color: #B2182B; font-weight: 600; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: .9em; font-style: italic; }
code { background: #f4f4f4; padding: 0 .25em; border-radius: 3px; }
pre { background: #f4f4f4; padding: .7em; overflow-x: auto; }
nav ul { columns: 2; }
"""

_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_ITALIC = re.compile(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])")


def _inline(text: str) -> str:
    """Escape ``text`` and render ``code``, **bold**, *italic* and links (anchors only)."""
    parts = re.split(r"(`[^`]*`)", text)
    out = []
    for part in parts:
        if len(part) >= 2 and part.startswith("`") and part.endswith("`"):
            out.append(f"<code>{html.escape(part[1:-1])}</code>")
            continue
        s = html.escape(part, quote=True)

        def link(m: re.Match[str]) -> str:
            label, target = m.group(1), m.group(2)
            if target.startswith("#"):
                return f'<a href="{target}">{label}</a>'
            return f"{label} (<code>{target}</code>)"

        s = _LINK.sub(link, s)
        s = _BOLD.sub(r"<strong>\1</strong>", s)
        s = _ITALIC.sub(r"<em>\1</em>", s)
        out.append(s)
    return "".join(out)


def _cell_class(text: str) -> str:
    """Signed decimals are metric changes (higher is better): green up, red down.

    Signed integers (changes of confusion counts, where lower is better) are not coloured.
    """
    if re.fullmatch(r"\+\d+\.\d+", text):
        return "num pos"
    if re.fullmatch(r"-\d+\.\d+", text):
        return "num neg"
    return "num"


def _html_table(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return ""
    columns = list(rows[0])
    numeric = numeric_columns(rows)
    head = "".join(
        f'<th class="num">{_inline(str(c))}</th>' if c in numeric else f"<th>{_inline(str(c))}</th>" for c in columns
    )
    body = []
    for row in rows:
        cells = []
        for c in columns:
            text = format_cell(row.get(c))
            cls = f' class="{_cell_class(text)}"' if c in numeric else ""
            cells.append(f"<td{cls}>{_inline(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>"


def _md_table_rows(lines: list[str]) -> list[dict[str, str]]:
    def split(line: str) -> list[str]:
        cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
        return [html.unescape(c.strip().replace("\\|", "|").replace("\\\\", "\\")) for c in cells]

    header = split(lines[0])
    body = [split(x) for x in lines[1:] if not re.fullmatch(r"\s*\|?[\s:|-]+\|?\s*", x)]
    return [dict(zip(header, cells + [""] * (len(header) - len(cells)), strict=False)) for cells in body]


def _markdown_to_html(text: str) -> str:
    """A small markdown subset: paragraphs, headings, lists, tables, fenced code. Everything escaped."""
    out: list[str] = []
    lines = text.strip("\n").splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if not stripped:
            i += 1
            continue
        if stripped.startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith("```"):
                j += 1
            out.append("<pre><code>" + html.escape("\n".join(lines[i + 1 : j])) + "</code></pre>")
            i = j + 1
            continue
        heading = re.match(r"^(#{1,6})\s+(.*)$", stripped)
        if heading:
            level = min(6, len(heading.group(1)) + 2)
            out.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
            i += 1
            continue
        if stripped.startswith("|"):
            j = i
            while j < len(lines) and lines[j].strip().startswith("|"):
                j += 1
            out.append(_html_table(_md_table_rows(lines[i:j])))
            i = j
            continue
        bullet = re.match(r"^\s*([-*]|\d+\.)\s+", line)
        if bullet:
            ordered = bullet.group(1)[0].isdigit()
            items = []
            while i < len(lines):
                m = re.match(r"^\s*([-*]|\d+\.)\s+(.*)$", lines[i])
                if m:
                    items.append(m.group(2))
                elif lines[i].strip() and items and lines[i].startswith((" ", "\t")):
                    items[-1] += " " + lines[i].strip()
                else:
                    break
                i += 1
            tag = "ol" if ordered else "ul"
            out.append(f"<{tag}>" + "".join(f"<li>{_inline(x)}</li>" for x in items) + f"</{tag}>")
            continue
        para = []
        while i < len(lines) and lines[i].strip() and not re.match(r"^\s*([-*]|\d+\.)\s+|^\s*[|#]|^\s*```", lines[i]):
            para.append(lines[i].strip())
            i += 1
        if not para:  # a line that looked like a block start but was not one
            para.append(stripped)
            i += 1
        out.append("<p>" + "<br>\n".join(_inline(p) for p in para) + "</p>")
    return "\n".join(out)


def _anchor(text: str, seen: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"
    anchor, n = base, 2
    while anchor in seen:
        anchor, n = f"{base}-{n}", n + 1
    seen.add(anchor)
    return anchor


def render_html(title: str, sections: Sequence[Section], images: Sequence[Sequence[_Image]], generated: str) -> str:
    seen: set[str] = set()
    anchors = [_anchor(s.heading, seen) for s in sections]
    toc = "".join(
        f'<li><a href="#{a}">{html.escape(s.heading)}</a></li>'
        for s, a in zip(sections, anchors, strict=True)
        if s.level <= 2
    )
    body = []
    for section, anchor, imgs in zip(sections, anchors, images, strict=True):
        level = max(2, min(6, section.level))
        body.append(f'<section>\n<h{level} id="{anchor}">{html.escape(section.heading)}</h{level}>')
        if section.text.strip():
            body.append(_markdown_to_html(section.text))
        if section.table:
            body.append(_html_table(section.table))
        for img in imgs:
            data = img.path.read_bytes()
            uri = f"data:{_mime(data, img.path)};base64," + base64.b64encode(data).decode("ascii")
            alt = html.escape(img.caption or img.path.stem, quote=True)
            caption = f"<figcaption>{_inline(img.caption)}</figcaption>" if img.caption else ""
            body.append(f'<figure><img src="{uri}" alt="{alt}">{caption}</figure>')
        body.append("</section>")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f'<h1>{html.escape(title)}</h1>\n<p class="meta">{html.escape(generated)}</p>\n'
        + (f"<nav><ul>{toc}</ul></nav>\n" if len(sections) > 2 else "")
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def write_report(out_dir: str | os.PathLike, title: str, sections: Sequence[Section]) -> tuple[Path, Path]:
    """Write ``out_dir/report.md`` (images linked relatively) and ``out_dir/report.html`` (self-contained).

    Images outside ``out_dir`` are copied into ``out_dir/plots`` so the folder can be moved as a
    whole. Both files are written atomically. Returns ``(md_path, html_path)``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = _collect_images(out, sections)
    generated = f"Generated by defectfusion {__version__} on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"
    md_path, html_path = out / "report.md", out / "report.html"
    atomic_write_text(md_path, render_markdown(title, sections, images, out, generated))
    atomic_write_text(html_path, render_html(title, sections, images, generated))
    return md_path, html_path
