"""Reading one image file as the detector sees it: RGB ``uint8``, in its displayed orientation."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision import tv_tensors

from ..errors import DataError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})


def _exif_orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(0x0112, 1))
    except Exception:  # malformed EXIF must not make a readable image unusable
        return 1


def displayed_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of an image as displayed (EXIF rotation applied), from its header only."""
    with Image.open(path) as im:
        w, h = im.size
        if _exif_orientation(im) in (5, 6, 7, 8):  # rotated by 90 degrees when displayed
            w, h = h, w
    return w, h


def load_image(
    path: str | Path, expected_size: tuple[int, int] | None = None, image_id: int | None = None
) -> tv_tensors.Image:
    """Read an image as RGB ``uint8`` ``[3, H, W]`` in its displayed orientation.

    - EXIF orientation is applied (COCO ``width``/``height`` describe the displayed image).
      If the json size matches only the *stored* pixel grid (an annotation tool that ignored
      EXIF, so its boxes are in stored pixels too), the stored orientation is kept.
    - Grayscale (``1``, ``L``) is replicated to three channels; palette and other colour
      modes are converted by Pillow.
    - Alpha (``RGBA``, ``LA``, ``PA``, palette transparency) is composited on **white**: a
      transparent background reads as blank surface rather than black, and fully opaque
      images are unchanged.
    - 16-bit data (``I;16*``, or ``I`` holding values in ``0..65535``) is scaled by
      ``255 / 65535``, the same mapping for every image, so relative brightness and ordering
      are kept (Pillow's own conversion clips everything above 255). ``I``/``F`` data
      within ``0..255`` is taken as is (fractional ``F`` data within ``[0, 1]`` times 255);
      anything else is stretched min..max to ``0..255``.

    Args:
        path: the image file.
        expected_size: ``(width, height)`` from the json; a mismatch raises :class:`DataError`.
        image_id: only used to name the record in errors.

    Raises:
        DataError: the file is missing, corrupt, truncated, or its size disagrees with the json.
    """
    path = Path(path)
    who = f"image {path}" + (f" (image id {image_id})" if image_id is not None else "")
    try:
        with Image.open(path) as raw:
            raw.load()
            orientation = _exif_orientation(raw)
            shown = ImageOps.exif_transpose(raw) if orientation != 1 else raw
            if expected_size is None or shown.size == tuple(expected_size):
                img = shown
            elif raw.size == tuple(expected_size):
                img = raw  # annotated in stored pixels: keep boxes aligned with them
            else:
                raise DataError(
                    f"{who} is {shown.size[0]}x{shown.size[1]} (width x height, after EXIF orientation "
                    f"{orientation}) but the annotations say {expected_size[0]}x{expected_size[1]}; "
                    f"fix width/height in the annotation file or replace the image"
                )
            array = _to_rgb_uint8(img)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{who} does not exist") from None
    except Image.DecompressionBombError as e:
        raise DataError(
            f"{who} is too large for Pillow's safety limit ({e}); raise PIL.Image.MAX_IMAGE_PIXELS if you trust it"
        ) from None
    except (OSError, SyntaxError, ValueError) as e:  # what Pillow raises for corrupt/truncated data
        raise DataError(f"{who} is corrupt or truncated and cannot be decoded ({e}); re-export or remove it") from None
    return tv_tensors.Image(torch.from_numpy(array).permute(2, 0, 1).contiguous())


def as_image(image: Any) -> torch.Tensor:
    """One input image as RGB uint8 ``[3, H, W]``: a file path (read with :func:`load_image`), a
    Pillow image, a uint8 array ``[H, W]`` / ``[H, W, 3]`` (RGB), or a uint8 tensor ``[3, H, W]``.

    Raises:
        DataError: anything else, naming what was given and what is taken.
    """
    if isinstance(image, (str, os.PathLike)):
        return load_image(image).as_subclass(torch.Tensor)
    if isinstance(image, Image.Image):
        return torch.from_numpy(_to_rgb_uint8(image)).permute(2, 0, 1).contiguous()
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
            raise DataError(
                f"an image array must be uint8 [H, W] or [H, W, 3] (RGB), got {image.dtype} {list(image.shape)}"
            )
        rgb = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image
        return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).contiguous()
    if isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
            raise DataError(
                f"an image tensor must be uint8 [3, H, W] (RGB), got {image.dtype} {list(image.shape)}; "
                f"for a float tensor in [0, 1]: (x * 255).round().to(torch.uint8)"
            )
        return image.as_subclass(torch.Tensor)
    raise DataError(
        f"cannot read an image from {type(image).__name__}: give a file path, a PIL image, a uint8 numpy array "
        f"[H, W, 3] or a uint8 tensor [3, H, W]"
    )


def _to_rgb_uint8(img: Image.Image) -> np.ndarray:
    """``[H, W, 3]`` uint8 from any Pillow mode (see :func:`load_image` for the rules)."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return np.array(img, dtype=np.uint8)  # a writable copy: torch warns on read-only arrays
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32)
        alpha = rgba[..., 3:] / 255.0
        out = rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)
        return np.round(out).astype(np.uint8)
    if mode.startswith("I") or mode == "F":
        gray = _scale_to_uint8(np.asarray(img), sixteen_bit=mode.startswith("I;16"))
        return np.repeat(gray[..., None], 3, axis=2)
    if mode in ("1", "L"):
        gray = np.asarray(img.convert("L"), dtype=np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    return np.array(img.convert("RGB"), dtype=np.uint8)


def _scale_to_uint8(a: np.ndarray, sixteen_bit: bool) -> np.ndarray:
    a = a.astype(np.float64)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if sixteen_bit or (lo >= 0 and 255 < hi <= 65535):
        scale = 255.0 / 65535.0  # fixed 16-bit range: the same mapping for every image
    elif lo >= 0 and hi <= 255:
        scale = 1.0 if hi > 1.0 or not np.any(a % 1) else 255.0  # float data in [0, 1] -> x255
    elif hi > lo:
        return np.round((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    else:
        return np.zeros(a.shape, dtype=np.uint8)
    return np.round(np.clip(a * scale, 0, 255)).astype(np.uint8)


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def collect_images(inputs: Sequence[str | os.PathLike], recursive: bool = False) -> list[Path]:
    """Files, folders (their images; ``recursive``: also in subfolders) and glob patterns -> image paths.

    Order: inputs in the order given, each folder's / pattern's matches sorted; duplicates once.

    Raises:
        DataError: listing every input that matched nothing (a missing file, an empty folder, a
            pattern without matches), or when no image at all was found.
    """
    if not inputs:
        raise DataError("no images given: pass image files, folders or glob patterns (e.g. 'images/*.png')")
    found: list[Path] = []
    unmatched: list[str] = []
    for item in inputs:
        text = os.fspath(item)
        path = Path(text).expanduser()
        if path.is_file():
            matches = [path]
        elif path.is_dir():
            pattern = "**/*" if recursive else "*"
            matches = sorted(p for p in path.glob(pattern) if _is_image(p))
        elif glob.has_magic(text):
            matches = sorted(Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True) if _is_image(Path(p)))
        else:
            matches = []
        if not matches:
            unmatched.append(text)
        found.extend(matches)
    if unmatched:
        exts = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise DataError(
            f"{len(unmatched)} input(s) matched no image: {', '.join(repr(u) for u in unmatched)}. Give existing image "
            f"files, folders holding images ({exts}) or glob patterns such as 'images/*.png' (quote them)"
        )
    seen: set[Path] = set()
    unique = []
    for p in found:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique
