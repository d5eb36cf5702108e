"""Procedural industrial-defect images with COCO annotations: the demo's and the tests' dataset.

Every image is a surface (brushed metal, plastic, paint, or a real CC0 texture from
scikit-image) with 0 or 4..12 objects of the user's six classes, then lit, blurred and noised. The
classes are drawn to be learnable by a tiny detector but not trivially: a deep crack
(ROTURA_FRACTURA) and a superficial scratch (RAYONES_ARANAZOS) are both long lines of the same
lengths and orientations; what separates them is width, jaggedness, branches and the shadowed
lip of a crack, the cues the class descriptions talk about. With ``defect_scale="small"`` the
objects are 12-48 px whatever the image size, several per 512 px square, on large surfaces
(e.g. 2048 px): the case for ``data slice`` and tiled inference.

Each image has its own random generator seeded by ``(seed, split, index)``, so an image does not
depend on how many came before it, and the same arguments give the same bytes.
"""

from .defects import CATEGORIES, SplitSummary, SynthObject, SynthSummary, image_rng
from .scene import generate_synthetic_dataset, render_image

__all__ = [
    "CATEGORIES",
    "SplitSummary",
    "SynthObject",
    "SynthSummary",
    "generate_synthetic_dataset",
    "image_rng",
    "render_image",
]
