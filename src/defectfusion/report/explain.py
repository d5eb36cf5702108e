"""Why a box was called a crack and not a scratch: text-visual similarity maps and per-detection matches.

For one image and a fused detector:

- **Similarity maps.** The encoder's multi-scale feature maps (``encoder_last_hidden_state``,
  ``[B, d, h, w]`` per level) go through the decoder's input projection (and ``enc_output``),
  exactly as the features the query-selection head scores, and then through a fusion head's
  projection ``P`` into the text space. The cosine similarity of every position with each class's
  text embedding gives one ``[h, w]`` map per class and level; each is upsampled bilinearly to the
  image size and the levels are averaged. The head used is the query-selection head's fusion
  (``model.model.enc_score_head.fusion``), which is trained on these very features, when the model
  has one; otherwise the evaluation decoder layer's head (``model.model.decoder.class_embed[i].fusion``),
  which is trained on decoder query features: an approximation, and the output says so.
- **Detection matches.** For each detection, the query feature it came from (the hidden state the
  evaluation decoder layer's class head scored) is projected by that head, and its cosine
  similarity with every class's text embedding is reported: what the box matched in text.

:func:`explain` writes ``similarity_maps.png``, ``detection_matches.png``, ``explanation.json``
(all numbers: per-level maps, per-class summaries, every detection's similarities) and
``similarity_maps.npz`` (the full-resolution maps).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator
from torchvision.ops import box_convert

from ..errors import CheckpointError, ConfigError
from ..io import atomic_path, atomic_write_json
from . import plots

__all__ = ["DetectionMatch", "Explanation", "explain_image", "plot_similarity_maps", "plot_detection_matches",
           "write_explanation", "explain"]


@dataclass
class DetectionMatch:
    """One detection and the similarity of its query feature to every class text.

    Attributes:
        box: ``x1, y1, x2, y2`` in original-image pixels.
        label, class_name, score: the detection.
        query: index of the decoder query it came from.
        similarity: ``C`` cosine similarities (projected query feature vs class text), label order.
    """

    box: list[float]
    label: int
    class_name: str
    score: float
    query: int
    similarity: list[float]

    def top_matches(self, class_names: Sequence[str], k: int | None = None) -> list[tuple[str, float]]:
        order = np.argsort(-np.asarray(self.similarity), kind="stable")
        return [(class_names[i], float(self.similarity[i])) for i in order[: k or len(order)]]


@dataclass
class Explanation:
    """Similarity maps and detection matches of one image.

    Attributes:
        image: the image, uint8 ``[H, W, 3]``.
        class_names: ``C`` names.
        maps: ``[C, H, W]`` float32 cosine similarity per class at the image's size (mean of levels).
        level_maps: per feature level, ``[C, h, w]`` before upsampling.
        map_head: which fusion head projected the feature maps (module path).
        map_head_note: what that head is trained on.
        query_head: which fusion head scored the detections' query features.
        detections: the detections at or above ``threshold``, best first.
        threshold: the score threshold.
        source: image path, if read from a file.
        text: where the model's class texts came from (descriptions file, encoder).
    """

    image: np.ndarray
    class_names: list[str]
    maps: torch.Tensor
    level_maps: list[torch.Tensor]
    map_head: str
    map_head_note: str
    query_head: str
    detections: list[DetectionMatch]
    threshold: float
    source: str | None = None
    text: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        return int(self.image.shape[0]), int(self.image.shape[1])

    def to_json(self) -> dict[str, Any]:
        names = self.class_names

        def r(x: float) -> float:
            return round(float(x), 5)

        return {
            "image": self.source,
            "image_size": {"height": self.size[0], "width": self.size[1]},
            "classes": names,
            "text": self.text,
            "similarity": "cosine between the fusion head's projection of a visual feature and a class text embedding",
            "maps": {
                "head": self.map_head,
                "head_note": self.map_head_note,
                "combined": "each level upsampled bilinearly to the image size, then the mean over levels",
                "per_class": {
                    n: {"min": r(self.maps[c].min()), "max": r(self.maps[c].max()), "mean": r(self.maps[c].mean())}
                    for c, n in enumerate(names)
                },
                "best_class_share": {  # fraction of pixels where each class's text matches best
                    n: r(v) for n, v in zip(names, _argmax_share(self.maps), strict=True)
                },
                "levels": [
                    {"height": int(m.shape[1]), "width": int(m.shape[2]),
                     "similarity": {n: [[r(v) for v in row] for row in m[c].tolist()] for c, n in enumerate(names)}}
                    for m in self.level_maps
                ],
            },
            "detections": {
                "head": self.query_head,
                "threshold": self.threshold,
                "items": [
                    {"box_xyxy": [round(v, 2) for v in d.box], "label": d.label, "class": d.class_name,
                     "score": r(d.score), "query": d.query,
                     "similarity": {n: r(v) for n, v in zip(names, d.similarity, strict=True)},
                     "top_matches": [[n, r(v)] for n, v in d.top_matches(names, 3)]}
                    for d in self.detections
                ],
            },
        }


def _argmax_share(maps: torch.Tensor) -> list[float]:
    best = maps.argmax(0).flatten()
    counts = torch.bincount(best, minlength=maps.shape[0]).float()
    return (counts / max(1, best.numel())).tolist()


# ---------------------------------------------------------------------------------- computing


def _require_fused(model: Any) -> None:
    if not getattr(model, "is_fused", False):
        raise ConfigError(
            "this detector has no text-fusion head, so there is no text-visual similarity to show; explain a fused "
            "checkpoint (e.g. RUN/phase1/best or RUN/final of a fusion run)"
        )


def _heads(model: Any) -> tuple[Any, str, str, Any, str, int]:
    """(map head, its path, note, query head, its path, eval layer)."""
    decoder = model.model.decoder
    layer = int(getattr(decoder, "eval_idx", len(decoder.class_embed) - 1))
    query_head = decoder.class_embed[layer].fusion
    query_path = f"model.model.decoder.class_embed[{layer}].fusion"
    enc = getattr(model.model.enc_score_head, "fusion", None)
    if enc is not None:
        return (enc, "model.model.enc_score_head.fusion",
                "the query-selection head's fusion, trained on these encoder features", query_head, query_path, layer)
    return (query_head, query_path,
            "the decoder class head's fusion (the model has no query-selection fusion head); it is trained on "
            "decoder query features, so on encoder features the maps are an approximation", query_head, query_path,
            layer)


def _cosine(head: Any, features: torch.Tensor) -> torch.Tensor:
    """Cosine similarity ``[.., C]`` of the head's projection of ``features`` with each class text.

    The head's own ``similarity`` assumes unit-norm text embeddings (true as built); normalising
    here keeps the numbers cosines even for a checkpoint whose stored embeddings drifted.
    """
    projected = F.normalize(head.proj(features), dim=-1)
    return projected @ F.normalize(head.text_embeddings.float(), dim=-1).t()


def _to_uint8_chw(image: Any) -> tuple[torch.Tensor, str | None]:
    from ..data.images import load_image

    if isinstance(image, (str, os.PathLike)):
        return load_image(image).as_subclass(torch.Tensor), str(image)
    if isinstance(image, np.ndarray):
        array = image if image.ndim == 3 and image.shape[-1] == 3 else None
        if array is None or array.dtype != np.uint8:
            raise ConfigError(f"explain: image array must be uint8 [H, W, 3], got {image.dtype} {list(image.shape)}")
        return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1), None
    tensor = torch.as_tensor(image)
    if tensor.dtype != torch.uint8 or tensor.dim() != 3 or tensor.shape[0] != 3:
        raise ConfigError(f"explain: image tensor must be uint8 [3, H, W], got {tensor.dtype} {list(tensor.shape)}")
    return tensor, None


@torch.inference_mode()
def explain_image(model: Any, image: Any, *, threshold: float = 0.3, max_detections: int = 8, top_k: int = 300,
                  device: str | torch.device = "cpu") -> Explanation:
    """Similarity maps and detection matches of one image (a path, uint8 ``[3, H, W]`` tensor or ``[H, W, 3]`` array)."""
    _require_fused(model)
    from ..engine.predictor import Predictor

    device = torch.device(device)
    model = model.to(device).eval()
    pixels_u8, source = _to_uint8_chw(image)
    H, W = int(pixels_u8.shape[-2]), int(pixels_u8.shape[-1])
    pre = Predictor(lambda *_: [], model.class_names, model.meta.image_size, model.meta.image_mean,
                    model.meta.image_std)
    pixel_values, _ = pre.preprocess([pixels_u8])

    map_head, map_path, map_note, query_head, query_path, layer = _heads(model)
    captured: list[torch.Tensor] = []
    hook = model.model.decoder.class_embed[layer].register_forward_hook(
        lambda _m, inputs, _o: captured.append(inputs[0].detach()))
    try:
        outputs = model(pixel_values=pixel_values.to(device))
    finally:
        hook.remove()
    if not captured:
        raise RuntimeError(f"the class head of decoder layer {layer} was not called; cannot read query features")
    query_features = captured[-1][0]  # [Q, d]

    # similarity maps: encoder maps -> the decoder's input projection (+ enc_output) -> fusion projection
    level_maps, upsampled = [], []
    for level, fmap in enumerate(outputs.encoder_last_hidden_state):
        source_map = model.model.decoder_input_proj[level](fmap)  # [1, d, h, w]
        h, w = source_map.shape[-2:]
        feats = model.model.enc_output(source_map.flatten(2).transpose(1, 2))  # [1, h*w, d]
        sim = _cosine(map_head, feats.float())[0].t().reshape(-1, h, w)  # [C, h, w]
        level_maps.append(sim.cpu())
        upsampled.append(F.interpolate(sim[None], size=(H, W), mode="bilinear", align_corners=False)[0])
    maps = torch.stack(upsampled).mean(0).cpu()

    # detections, with the query each came from (the post-processor's top-k over queries x classes)
    logits, boxes = outputs.logits[0].float(), outputs.pred_boxes[0].float()
    num_classes = logits.shape[-1]
    scores = logits.sigmoid().flatten()
    top, index = torch.topk(scores, min(top_k, scores.numel()))
    keep = top >= threshold
    top, index = top[keep][:max_detections], index[keep][:max_detections]
    queries, labels = index // num_classes, index % num_classes
    xyxy = box_convert(boxes[queries], "cxcywh", "xyxy") * torch.tensor([W, H, W, H], device=boxes.device)
    similarity = _cosine(query_head, query_features[queries].float())  # [n, C]
    names = model.class_names
    detections = [
        DetectionMatch([float(v) for v in xyxy[i].tolist()], int(labels[i]), names[int(labels[i])], float(top[i]),
                       int(queries[i]), [float(v) for v in similarity[i].tolist()])
        for i in range(len(top))
    ]
    fusion = model.meta.fusion
    text = {"descriptions": fusion.descriptions, "encoder": fusion.encoder, "kind": fusion.text}
    return Explanation(pixels_u8.permute(1, 2, 0).cpu().numpy(), list(names), maps, level_maps,
                       map_path, map_note, query_path, detections, float(threshold), source, text)


# ---------------------------------------------------------------------------------- figures


def _gray(image: np.ndarray) -> np.ndarray:
    return (image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)) / 255.0


def plot_similarity_maps(expl: Explanation, path: str | os.PathLike, cols: int = 4, alpha: float = 0.55) -> Path:
    """The image with its detections, one panel per class (its similarity map over the image), and the
    best-matching class per pixel.

    All class panels share one colour scale, so a class whose text matches the image less is
    darker everywhere; the brightest class at a place is the text that matches it best.
    """
    from matplotlib.colors import Normalize

    names = expl.class_names
    n_panels = len(names) + 2  # detections, one per class, the best-matching class per pixel
    cols = max(1, min(cols, n_panels))
    rows = math.ceil(n_panels / cols)
    H, W = expl.size
    cell_w = 3.2  # inches per panel
    img_h = cell_w * H / W
    title_h, head_h, bar_w = 0.55, 0.75, 0.9
    fig_w = cols * cell_w + (cols - 1) * 0.12 + bar_w
    fig_h = rows * img_h + (rows - 1) * title_h + title_h + head_h
    maps = expl.maps.numpy()
    norm = Normalize(float(maps.min()), float(maps.max()) if maps.max() > maps.min() else float(maps.min()) + 1e-6)
    gray = _gray(expl.image)
    shares = _argmax_share(expl.maps)
    det_labels = {d.label for d in expl.detections}
    with plots._figure(fig_w, fig_h) as fig:
        grid = fig.add_gridspec(
            rows, cols + 1, width_ratios=[cell_w] * cols + [0.18], wspace=0.12 / cell_w, hspace=title_h / img_h,
            left=0.0, right=1.0 - (bar_w - 0.18 - 0.12) / fig_w, bottom=0.0, top=1.0 - (title_h + head_h) / fig_h)
        ax0 = fig.add_subplot(grid[0, 0])
        drawn = plots.draw_detections(
            expl.image, {"boxes": [d.box for d in expl.detections], "labels": [d.label for d in expl.detections],
                         "scores": [d.score for d in expl.detections]},
            names, resize_to=max(480, max(H, W)))
        ax0.imshow(np.asarray(drawn), interpolation="lanczos")
        ax0.set_title(f"detections (score ≥ {expl.threshold:g})", fontsize=9.5)
        ax0.set_axis_off()
        image_artist = None
        for c, name in enumerate(names):
            k = c + 1
            ax = fig.add_subplot(grid[k // cols, k % cols])
            ax.imshow(gray, cmap="gray", vmin=0, vmax=1, interpolation="bilinear")
            image_artist = ax.imshow(maps[c], cmap="turbo", norm=norm, alpha=alpha, interpolation="bilinear")
            mark = " ◆" if c in det_labels else ""
            ax.set_title(f"{name}{mark}\nmax {maps[c].max():.2f} · best match on {100 * shares[c]:.0f}% of the image",
                         fontsize=9, color=plots._hex(c), fontweight="bold")
            ax.set_axis_off()
        k = len(names) + 1
        ax = fig.add_subplot(grid[k // cols, k % cols])
        palette = np.array([plots.class_color(c) for c in range(len(names))], dtype=np.float32) / 255.0
        best = palette[maps.argmax(0)]
        ax.imshow(gray, cmap="gray", vmin=0, vmax=1, interpolation="bilinear")
        ax.imshow(best, alpha=alpha, interpolation="nearest")
        ax.set_title("best-matching class text per pixel\n(colours of the panel titles)", fontsize=9)
        ax.set_axis_off()
        cax = fig.add_subplot(grid[:, cols])
        bar = fig.colorbar(image_artist, cax=cax)
        bar.set_label("cosine similarity: image feature vs class text")
        fig.suptitle(
            f"Text-visual similarity per class{' · ' + Path(expl.source).name if expl.source else ''}\n"
            f"features projected by {expl.map_head} (one colour scale for all classes; ◆ = class detected)",
            fontsize=10.5)
        return plots._save(fig, path)


def plot_detection_matches(expl: Explanation, path: str | os.PathLike, top: int = 6) -> Path:
    """For each detection: its crop and the similarity of its query feature to each class text (bars)."""
    names = expl.class_names
    dets = expl.detections
    k = min(top, len(names))
    rows = max(1, len(dets))
    with plots._figure(8.4, 0.7 + rows * max(1.25, 0.28 * k + 0.45)) as fig:
        if not dets:
            ax = fig.add_subplot(1, 1, 1)
            ax.set_axis_off()
            ax.text(0.5, 0.5, f"no detections with score ≥ {expl.threshold:g}", ha="center", va="center",
                    fontsize=11, color=plots.NEUTRAL)
            fig.suptitle("What each detection matched in text", fontsize=11)
            return plots._save(fig, path)
        # the middle column is room for the class names of the bars' y axis
        grid = fig.add_gridspec(rows, 3, width_ratios=[1, 1.35, 3.4], wspace=0.04, hspace=0.55)
        values = np.array([d.similarity for d in dets])
        lo, hi = min(0.0, float(values.min())), max(0.0, float(values.max()))
        pad = 0.08 * (hi - lo or 1.0)
        for r, d in enumerate(dets):
            crop_ax = fig.add_subplot(grid[r, 0])
            x1, y1, x2, y2 = d.box
            H, W = expl.size
            m = 0.15 * max(x2 - x1, y2 - y1, 4)
            ix1, iy1 = max(0, int(x1 - m)), max(0, int(y1 - m))
            ix2, iy2 = min(W, int(math.ceil(x2 + m))), min(H, int(math.ceil(y2 + m)))
            crop = expl.image[iy1:max(iy2, iy1 + 1), ix1:max(ix2, ix1 + 1)]
            crop_ax.imshow(crop, interpolation="lanczos" if crop.shape[0] > 24 else "nearest")
            crop_ax.add_patch(Rectangle((x1 - ix1 - 0.5, y1 - iy1 - 0.5), x2 - x1, y2 - y1, fill=False,
                                              lw=2, edgecolor=plots._hex(d.label)))
            crop_ax.set_axis_off()
            crop_ax.set_title(f"#{r + 1}", fontsize=9)
            ax = fig.add_subplot(grid[r, 2])
            matches = d.top_matches(names, k)
            ys = np.arange(len(matches))[::-1]
            colors = [plots._hex(names.index(n)) for n, _ in matches]
            bars = ax.barh(ys, [v for _, v in matches], color=colors, height=0.7)
            for (n, v), y, b in zip(matches, ys, bars, strict=True):
                chosen = n == d.class_name
                if chosen:
                    b.set_edgecolor("black")
                    b.set_linewidth(1.4)
                ax.text(v + (pad * 0.15 if v >= 0 else -pad * 0.15), y, f"{v:.2f}", va="center",
                        ha="left" if v >= 0 else "right", fontsize=8, fontweight="bold" if chosen else "normal")
            ax.set_yticks(ys, [n for n, _ in matches], fontsize=8.5)
            for lab, (n, _) in zip(ax.get_yticklabels(), matches, strict=True):
                if n == d.class_name:
                    lab.set_fontweight("bold")
            ax.set_xlim(lo - (2.5 * pad if lo < 0 else pad), hi + 2.5 * pad)
            ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
            if r < rows - 1:
                ax.tick_params(labelbottom=False)
            ax.axvline(0, color="#999999", lw=0.8)
            ax.grid(True, axis="x", color="#EEEEEE")
            ax.set_axisbelow(True)
            ax.set_title(f"#{r + 1} detected {d.class_name} ({d.score:.2f}) · query {d.query}", fontsize=9.5,
                         loc="left", color=plots._hex(d.label), fontweight="bold")
            if r == rows - 1:
                ax.set_xlabel("cosine similarity of the query feature to each class text")
        fig.suptitle(f"What each detection matched in text (bold: the class detected)\n"
                     f"query features projected by {expl.query_head}", fontsize=10.5)
        return plots._save(fig, path)


# ---------------------------------------------------------------------------------- files


@dataclass
class ExplainFiles:
    maps_png: Path
    matches_png: Path
    json: Path
    npz: Path

    def all(self) -> list[Path]:
        return [self.maps_png, self.matches_png, self.json, self.npz]


def write_explanation(expl: Explanation, out_dir: str | os.PathLike) -> ExplainFiles:
    """Write the two figures, the JSON of the numbers and the full-resolution maps (``.npz``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = ExplainFiles(out / "similarity_maps.png", out / "detection_matches.png", out / "explanation.json",
                         out / "similarity_maps.npz")
    plot_similarity_maps(expl, files.maps_png)
    plot_detection_matches(expl, files.matches_png)
    data = expl.to_json()
    data["maps"]["file"] = files.npz.name
    atomic_write_json(files.json, data)
    with atomic_path(files.npz, suffix=".npz") as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, maps=expl.maps.numpy().astype(np.float32), classes=np.array(expl.class_names))
    return files


def explain(checkpoint: str | os.PathLike, images: str | os.PathLike | Sequence[str | os.PathLike],
            out: str | os.PathLike, *, threshold: float = 0.3, max_detections: int = 8,
            device: str = "cpu") -> list[tuple[Explanation, ExplainFiles]]:
    """``defectfusion explain``: explanations of one or more images; several go to ``out/<image stem>/``."""
    from ..engine.predictor import _looks_onnx
    from ..models.checkpoint import load_detector

    path = Path(checkpoint).expanduser()
    if path.is_file() and _looks_onnx(path):
        raise CheckpointError(f"{path} is an exported ONNX model; explain needs the PyTorch detector folder it was "
                              f"exported from (the maps need the model's internal features)")
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"--threshold must be in [0, 1], got {threshold}")
    items = [images] if isinstance(images, (str, os.PathLike)) else list(images)
    model = load_detector(path, device=device)
    _require_fused(model)
    results = []
    used: set[str] = set()
    for item in items:
        expl = explain_image(model, item, threshold=threshold, max_detections=max_detections, device=device)
        folder = Path(out)
        if len(items) > 1:
            stem, n = Path(item).stem, 2
            name = stem
            while name in used:
                name, n = f"{stem}_{n}", n + 1
            used.add(name)
            folder = folder / name
        results.append((expl, write_explanation(expl, folder)))
    return results
