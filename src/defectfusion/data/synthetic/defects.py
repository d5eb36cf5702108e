"""The six defect classes drawn procedurally: what each looks like, how it is planned and painted.

Constants, the records every generated object and split produce, the per-image random
generator and the drawing canvas live here too; :mod:`.scene` composes surfaces and defects into
images and datasets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CATEGORIES: tuple[str, ...] = (
    "NORMAL",
    "DEFORMACIONES",
    "ROTURA_FRACTURA",
    "RAYONES_ARANAZOS",
    "PERFORACIONES",
    "CONTAMINACION",
)
NORMAL, DEFORMACIONES, ROTURA, RAYONES, PERFORACIONES, CONTAMINACION = range(6)
SPLITS: tuple[str, ...] = ("train", "val", "test")  # the index seeds each split: adding one changes no other
DESCRIPTIONS_RESOURCE = "configs/descriptions/defects6.yml"
MIN_SIZE = 64
EMPTY_FRACTION = 0.08  # share of images drawn without any object
MAX_OBJECTS = 12
MAX_IOU = 0.3  # placements overlapping an earlier object more than this are retried
MAX_COVER = 0.5  # ... and so are those whose box lies mostly inside another one
DEFECT_SCALES: tuple[str, ...] = ("normal", "small")
SMALL_SIDES = (12.0, 48.0)  # "small" defects: longer box side in pixels, whatever the image size
SMALL_SCALES = (0.3, 0.8)  # ... drawn at this range of the 256 px design scale

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels


@dataclass(frozen=True)
class SynthObject:
    """One drawn object: its COCO category id and tight box ``[x, y, w, h]`` in pixels."""

    category_id: int
    bbox: tuple[float, float, float, float]


@dataclass(frozen=True)
class SplitSummary:
    """What one split holds: ``instances`` maps every class name to its object count."""

    name: str
    images_dir: Path
    annotations: Path
    num_images: int
    num_empty_images: int
    instances: dict[str, int]


@dataclass(frozen=True)
class SynthSummary:
    """Where the generated dataset lies and what it holds, per split (``"train"``, ``"val"``)."""

    root: Path
    descriptions: Path
    size: int
    seed: int
    splits: dict[str, SplitSummary] = field(default_factory=dict)


def image_rng(seed: int, split_index: int, index: int) -> np.random.Generator:
    """The generator of one image: independent of every other image of the dataset."""
    return np.random.default_rng([seed, split_index, index])


# --------------------------------------------------------------------------- the canvas


@dataclass
class Canvas:
    img: np.ndarray  # H x W x 3 float32 in [0, 1]
    light: np.ndarray  # unit (x, y) vector pointing towards the light, shared by all objects
    scale: float  # size / 256: object sizes are designed at 256 px

    @property
    def size(self) -> int:
        return self.img.shape[0]


def _window(canvas: Canvas, box: Box, pad: float) -> tuple[slice, slice, np.ndarray, np.ndarray]:
    """Integer window around ``box`` with pixel-centre coordinate grids."""
    n = canvas.size
    x0, y0 = max(0, int(box[0] - pad)), max(0, int(box[1] - pad))
    x1, y1 = min(n, int(np.ceil(box[2] + pad))), min(n, int(np.ceil(box[3] + pad)))
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
    return slice(y0, y1), slice(x0, x1), xx, yy


def _mask_box(mask: np.ndarray, ys: slice, xs: slice, size: int, margin: float = 1.0) -> Box | None:
    """Tight box of the pixels where ``mask`` is set, grown by ``margin`` and clipped."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return None
    x0, x1 = xs.start + cols[0] - margin, xs.start + cols[-1] + 1 + margin
    y0, y1 = ys.start + rows[0] - margin, ys.start + rows[-1] + 1 + margin
    return (max(0.0, x0), max(0.0, y0), min(float(size), x1), min(float(size), y1))


def _shift(a: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """``a`` moved by whole pixels, zero-filled: cheap one-sided lips and shadows."""
    out = np.zeros_like(a)
    h, w = a.shape
    out[max(0, dy) : h + min(0, dy), max(0, dx) : w + min(0, dx)] = a[
        max(0, -dy) : h + min(0, -dy), max(0, -dx) : w + min(0, -dx)
    ]
    return out


def _polyline_field(xx: np.ndarray, yy: np.ndarray, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance of every pixel to a polyline and the arc position (0..1) of its nearest point."""
    a, ab = pts[:-1], np.diff(pts, axis=0)
    seg2 = (ab**2).sum(1) + 1e-9
    px = xx[None] - a[:, 0, None, None]
    py = yy[None] - a[:, 1, None, None]
    t = np.clip((px * ab[:, 0, None, None] + py * ab[:, 1, None, None]) / seg2[:, None, None], 0, 1)
    d2 = (px - t * ab[:, 0, None, None]) ** 2 + (py - t * ab[:, 1, None, None]) ** 2
    k = d2.argmin(0)[None]
    seg = np.sqrt(seg2)
    start = np.concatenate([[0.0], np.cumsum(seg)[:-1]])
    u = (start[k[0]] + np.take_along_axis(t, k, 0)[0] * seg[k[0]]) / seg.sum()
    return np.sqrt(np.take_along_axis(d2, k, 0)[0]), np.clip(u, 0, 1).astype(np.float32)


def _line_alpha(xx: np.ndarray, yy: np.ndarray, pts: np.ndarray, width: Callable[[np.ndarray], np.ndarray]):
    """Antialiased coverage of a polyline whose width varies along its length."""
    d, u = _polyline_field(xx, yy, pts)
    return np.clip(width(u) / 2 - d + 0.5, 0, 1), u


def _hump(u: np.ndarray, power: float) -> np.ndarray:
    """0 at both ends of a line, 1 in its middle: tapers widths and strengths."""
    return np.clip(np.sin(np.pi * u), 0, 1) ** power


def _extent(pts: np.ndarray, pad: float) -> Box:
    return (pts[:, 0].min() - pad, pts[:, 1].min() - pad, pts[:, 0].max() + pad, pts[:, 1].max() + pad)


def _brighten(img: np.ndarray, alpha: np.ndarray) -> None:
    img += alpha[..., None] * (1 - img)


def _darken(img: np.ndarray, alpha: np.ndarray) -> None:
    img *= 1 - alpha[..., None]


# --------------------------------------------------------------------------- the six classes
# Each planner draws the object's random parameters around the origin and returns its extent
# and a painter; the painter, given an offset, draws it and returns its tight box.

Painter = Callable[[Canvas, float, float], "Box | None"]


def _random_walk(rng: np.random.Generator, length: float, heading: float, step: float, turns: float) -> np.ndarray:
    """Jagged path: a mean-reverting heading with occasional sharp turns, like a crack."""
    n = max(3, int(length / step))
    dev, pts, h = 0.0, [np.zeros(2)], heading
    for _ in range(n):
        dev = 0.5 * dev + rng.normal(0, 0.3)
        if rng.random() < turns:
            dev += rng.choice([-1, 1]) * rng.uniform(0.6, 1.1)
        h = heading + dev
        pts.append(pts[-1] + step * rng.uniform(0.7, 1.3) * np.array([np.cos(h), np.sin(h)]))
    return np.array(pts, dtype=np.float32)


def _plan_crack(rng: np.random.Generator, s: float) -> tuple[Box, Painter]:
    length = rng.uniform(28, 95) * s
    heading = rng.uniform(0, np.pi)
    turns = rng.uniform(0.12, 0.3)  # how jagged: the straighter thin cracks are the hard cases
    main = _random_walk(rng, length, heading, rng.uniform(3, 5.5) * s, turns)
    wmax = max(1.6, rng.uniform(1.6, 4.2) * s)
    paths = [(main, wmax)]
    for _ in range(rng.integers(0, 3)):  # 0-2 thinner branches leaving the middle of the crack
        i = rng.integers(len(main) // 5, max(len(main) // 5 + 1, 4 * len(main) // 5))
        h = heading + rng.choice([-1, 1]) * rng.uniform(0.5, 1.1)
        branch = _random_walk(rng, length * rng.uniform(0.25, 0.5), h, 3.5 * s, turns) + main[i]
        paths.append((branch, max(1.5, wmax * rng.uniform(0.45, 0.7))))
    depth = rng.uniform(0.6, 0.9)
    ext = _extent(np.concatenate([p for p, _ in paths]), wmax / 2 + 2)

    def paint(c: Canvas, dx: float, dy: float) -> Box | None:
        ys, xs, xx, yy = _window(c, (ext[0] + dx, ext[1] + dy, ext[2] + dx, ext[3] + dy), 3)
        core = np.zeros_like(xx)
        for pts, w in paths:  # tapered ends: thick in the middle, thin at the tips
            alpha, _ = _line_alpha(xx, yy, pts + (dx, dy), lambda u, w=w: w * (0.45 + 0.55 * _hump(u, 0.5)))
            core = np.maximum(core, alpha)
        # the separation: a lit lip on the light's side and a shadow on the other
        o = max(1, round(wmax / 2))
        lx, ly = round(o * c.light[0]), round(o * c.light[1])
        lip = np.clip(_shift(core, lx, ly) - core, 0, 1)
        shadow = np.clip(_shift(core, -lx, -ly) - core, 0, 1)
        region = c.img[ys, xs]
        _darken(region, depth * core + 0.35 * shadow)
        _brighten(region, 0.3 * lip)
        return _mask_box(core > 0.3, ys, xs, c.size)

    return ext, paint


def _plan_scratch(rng: np.random.Generator, s: float) -> tuple[Box, Painter]:
    length = rng.uniform(28, 95) * s
    heading = rng.uniform(0, np.pi)
    d = np.array([np.cos(heading), np.sin(heading)])
    bend = 0.0 if rng.random() < 0.4 else rng.normal(0, 0.1) * length  # straight or gently curved
    p0, p2 = -d * length / 2, d * length / 2
    p1 = np.array([-d[1], d[0]]) * bend
    t = np.linspace(0, 1, 16)[:, None]
    pts = ((1 - t) ** 2 * p0 + 2 * t * (1 - t) * p1 + t**2 * p2).astype(np.float32)
    width = rng.uniform(2.2, 3.4) * max(1.0, s)
    bright = rng.random() < 0.75
    strength = rng.uniform(0.85, 1.0) if bright else rng.uniform(0.7, 0.85)
    wobble = rng.uniform(0, 2 * np.pi, 2)  # scratches fade in and out along their length
    ext = _extent(pts, width / 2 + 2)

    def paint(c: Canvas, dx: float, dy: float) -> Box | None:
        ys, xs, xx, yy = _window(c, (ext[0] + dx, ext[1] + dy, ext[2] + dx, ext[3] + dy), 2)
        alpha, u = _line_alpha(xx, yy, pts + (dx, dy), lambda u: np.full_like(u, width))
        fade = _hump(u, 0.15) * (0.85 + 0.15 * np.sin(7 * u + wobble[0]) * np.sin(3 * u + wobble[1]))
        alpha = alpha * fade * strength
        region = c.img[ys, xs]
        # a bright scratch would vanish on a near-white surface: there it shows dark
        (_brighten if bright and region.mean() < 0.75 else _darken)(region, alpha)
        return _mask_box(alpha > 0.3 * strength, ys, xs, c.size)  # where it is visible

    return ext, paint


def _plan_hole(rng: np.random.Generator, s: float) -> tuple[Box, Painter]:
    r = rng.uniform(5, 20) * s
    inside = rng.uniform(0.03, 0.12)
    ext = (-r - 3, -r - 3, r + 3, r + 3)

    def paint(c: Canvas, dx: float, dy: float) -> Box | None:
        ys, xs, xx, yy = _window(c, (ext[0] + dx, ext[1] + dy, ext[2] + dx, ext[3] + dy), 1)
        ux, uy = xx - dx, yy - dy
        d = np.sqrt(ux**2 + uy**2) + 1e-6
        toward = (ux * c.light[0] + uy * c.light[1]) / d  # +1 on the light's side of the hole
        disc = np.clip(r - d + 0.5, 0, 1)
        wall = np.clip((d - 0.6 * r) / (0.4 * r), 0, 1) * np.clip(toward, 0, 1) * 0.25  # far wall, lit
        ring = np.clip(1 - np.abs(d - r - 0.8) / 1.3, 0, 1) * (0.25 + 0.3 * np.clip(-toward, 0, 1))
        region = c.img[ys, xs]
        region += disc[..., None] * (inside + wall[..., None] - region)
        _brighten(region, ring)
        return _mask_box(np.maximum(disc, ring) > 0.2, ys, xs, c.size)

    return ext, paint


def _plan_rivet(rng: np.random.Generator, s: float) -> tuple[Box, Painter]:
    """NORMAL: an intact rivet head, a bright shaded dome with an outline and a drop shadow."""
    r = rng.uniform(7, 17) * s
    base = rng.uniform(0.55, 0.8) + rng.uniform(-0.04, 0.04, 3)
    slot = rng.random() < 0.4
    slot_angle = rng.uniform(0, np.pi)
    ext = (-r - 0.4 * r - 2, -r - 0.4 * r - 2, r + 0.4 * r + 2, r + 0.4 * r + 2)

    def paint(c: Canvas, dx: float, dy: float) -> Box | None:
        ys, xs, xx, yy = _window(c, (ext[0] + dx, ext[1] + dy, ext[2] + dx, ext[3] + dy), 1)
        ux, uy = (xx - dx) / r, (yy - dy) / r
        d = np.sqrt(ux**2 + uy**2)
        disc = np.clip((1 - d) * r + 0.5, 0, 1)
        sx, sy = ux + 0.3 * c.light[0], uy + 0.3 * c.light[1]  # the shadow falls away from the light
        shadow = np.clip((1.05 - np.sqrt(sx**2 + sy**2)) * r / 2, 0, 1) * (1 - disc)
        nz = np.sqrt(np.clip(1 - d**2, 0, 1))
        l3 = np.array([0.6 * c.light[0], 0.6 * c.light[1], 0.8])
        lam = np.clip(ux * l3[0] + uy * l3[1] + nz * l3[2], 0, 1)
        dome = base * (0.35 + 0.7 * lam[..., None]) + 0.45 * (lam**24)[..., None]
        rim = np.clip(1 - np.abs(d - 0.97) * r / 1.2, 0, 1) * 0.5
        if slot:
            across = np.abs(-np.sin(slot_angle) * ux + np.cos(slot_angle) * uy) * r
            dome = dome * (1 - 0.6 * (np.clip(1.2 - across, 0, 1) * (d < 0.7))[..., None])
        region = c.img[ys, xs]
        _darken(region, 0.4 * shadow)
        region += disc[..., None] * (dome - region)
        _darken(region, rim * disc)
        return _mask_box(np.maximum(disc, shadow) > 0.2, ys, xs, c.size)

    return ext, paint


STAIN_COLOURS = np.array(
    [[0.55, 0.28, 0.10], [0.12, 0.10, 0.08], [0.35, 0.32, 0.18], [0.33, 0.45, 0.15], [0.92, 0.90, 0.84]],
    dtype=np.float32,
)


def _contrasting(colour: np.ndarray, region: np.ndarray) -> np.ndarray:
    """``colour``, or a dark version of it where it would hardly differ from the surface."""
    if np.abs(colour - region.mean((0, 1))).mean() < 0.12:
        return colour * 0.35
    return colour


def _plan_contamination(rng: np.random.Generator, s: float) -> tuple[Box, Painter]:
    """A soft-edged stain of another hue, or a cluster of small particles."""
    colour = STAIN_COLOURS[rng.integers(len(STAIN_COLOURS))] + rng.uniform(-0.05, 0.05, 3)
    if rng.random() < 0.6:
        big = rng.uniform(10, 38) * s
        k = rng.integers(3, 8)
        centres = rng.normal(0, 0.4 * big, (k, 2))
        sigmas = rng.uniform(0.3, 0.6, k) * big
        opacity = rng.uniform(0.6, 0.9)
        ext = _extent(centres, 2.2 * sigmas.max())

        def paint(c: Canvas, dx: float, dy: float) -> Box | None:
            ys, xs, xx, yy = _window(c, (ext[0] + dx, ext[1] + dy, ext[2] + dx, ext[3] + dy), 0)
            f = np.zeros_like(xx)
            for (cx, cy), sg in zip(centres, sigmas, strict=True):
                f += np.exp(-((xx - dx - cx) ** 2 + (yy - dy - cy) ** 2) / (2 * sg**2))
            body = np.clip((f - 0.3) / 0.4, 0, 1)
            edge = np.clip(1 - np.abs(f - 0.5) / 0.12, 0, 1)  # dried stains have a darker tide line
            alpha = opacity * np.clip(body + 0.3 * edge, 0, 1)
            region = c.img[ys, xs]
            target = _contrasting(colour * (region.mean(-1, keepdims=True) * 0.5 + 0.6), region)
            region += alpha[..., None] * (target - region)
            return _mask_box(alpha > 0.3 * opacity, ys, xs, c.size)

        return ext, paint

    spread = rng.uniform(10, 28) * s
    n = rng.integers(12, 32)
    pos = np.clip(rng.normal(0, spread / 2.5, (n, 2)), -spread, spread)
    radii = rng.uniform(1.5, 3.2, n) * s
    colour = colour * 0.5 if rng.random() < 0.6 else colour
    ext = _extent(pos, radii.max() + 1)

    def paint_particles(c: Canvas, dx: float, dy: float) -> Box | None:
        ys, xs, xx, yy = _window(c, (ext[0] + dx, ext[1] + dy, ext[2] + dx, ext[3] + dy), 1)
        d = np.sqrt((xx[None] - dx - pos[:, 0, None, None]) ** 2 + (yy[None] - dy - pos[:, 1, None, None]) ** 2)
        alpha = np.clip(radii[:, None, None] - d + 0.5, 0, 1).max(0) * 0.9
        region = c.img[ys, xs]
        region += alpha[..., None] * (_contrasting(colour, region) - region)
        return _mask_box(alpha > 0.2, ys, xs, c.size)

    return ext, paint_particles


def _plan_dent(rng: np.random.Generator, s: float) -> tuple[Box, Painter]:
    """A dent or bulge: shading without an edge, light on one side and dark on the other."""
    sa = rng.uniform(7, 24) * s
    sb = sa * rng.uniform(0.5, 1.0)
    theta = rng.uniform(0, np.pi)
    amp = rng.uniform(0.4, 0.6) * rng.choice([-1, 1])
    reach = 2.2 * sa
    ext = (-reach, -reach, reach, reach)

    def paint(c: Canvas, dx: float, dy: float) -> Box | None:
        ys, xs, xx, yy = _window(c, (ext[0] + dx, ext[1] + dy, ext[2] + dx, ext[3] + dy), 0)
        ux, uy = xx - dx, yy - dy
        a = np.cos(theta) * ux + np.sin(theta) * uy
        b = -np.sin(theta) * ux + np.cos(theta) * uy
        g = np.exp(-0.5 * ((a / sa) ** 2 + (b / sb) ** 2))
        gx = -g * (np.cos(theta) * a / sa**2 - np.sin(theta) * b / sb**2)  # d g / d x
        gy = -g * (np.sin(theta) * a / sa**2 + np.cos(theta) * b / sb**2)
        shade = gx * c.light[0] + gy * c.light[1]
        shade = shade / (np.abs(shade).max() + 1e-9)
        c.img[ys, xs] *= 1 + amp * shade[..., None]
        return _mask_box(g > 0.135, ys, xs, c.size)  # the 2-sigma ellipse: where the eye sees it

    return ext, paint


PLANNERS: dict[int, Callable[[np.random.Generator, float], tuple[Box, Painter]]] = {
    NORMAL: _plan_rivet,
    DEFORMACIONES: _plan_dent,
    ROTURA: _plan_crack,
    RAYONES: _plan_scratch,
    PERFORACIONES: _plan_hole,
    CONTAMINACION: _plan_contamination,
}


# --------------------------------------------------------------------------- surfaces
