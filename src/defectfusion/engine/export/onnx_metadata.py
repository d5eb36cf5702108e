"""What an exported ONNX file says about itself: classes, ids, input size and resize, normalisation, and docs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from ...version import __version__
from ..prediction.onnx_backend import FORMAT_KEY, ONNX_FORMAT


def onnx_metadata(
    model: torch.nn.Module, image_size: Sequence[int], batch: int | str, opset: int, top_k: int
) -> dict[str, str]:
    """The ``metadata_props`` of an exported file: everything needed to feed it and read its outputs."""
    meta = model.meta
    fusion = meta.fusion
    return {
        FORMAT_KEY: ONNX_FORMAT,
        "class_names": json.dumps(list(model.class_names), ensure_ascii=False),
        "category_ids": json.dumps(meta.category_ids),
        "image_size": json.dumps([int(image_size[0]), int(image_size[1])]),
        "image_mean": json.dumps([float(v) for v in meta.image_mean]),
        "image_std": json.dumps([float(v) for v in meta.image_std]),
        "resize": meta.resize,
        "preprocessing": (
            "RGB, resize to image_size (H, W) without keeping the aspect ratio, /255, "
            "(x - image_mean) / image_std, NCHW float32"
            if meta.resize == "plain"
            else "RGB, resize to fit image_size (H, W) keeping the aspect ratio, pad bottom/right with 0, /255, "
            "(x - image_mean) / image_std, NCHW float32; feed orig_target_sizes = image_size and scale the boxes "
            "by original / fitted size per axis"
        ),
        "orig_target_sizes": "H,W",
        "outputs": "labels int64 [B, K]; boxes float32 [B, K, 4] x1,y1,x2,y2 in original-image pixels; "
        "scores float32 [B, K] sigmoid, sorted descending",
        "top_k": str(int(top_k)),
        "batch": str(batch),
        "opset": str(opset),
        "fused": json.dumps(fusion is not None),
        "fusion": json.dumps(
            None
            if fusion is None
            else {
                "text": fusion.text,
                "encoder": fusion.encoder,
                "descriptions": fusion.descriptions,
                "text_dim": fusion.text_dim,
                "query_selection": fusion.query_selection,
            },
            ensure_ascii=False,
        ),
        "preset": str(meta.preset),
        "semantics": meta.semantics,
        "defectfusion_version": __version__,
    }


def write_metadata(path: Path, metadata: dict[str, str]) -> None:
    """Store ``metadata`` in the file's metadata_props, document its inputs and outputs, check and save it."""
    import onnx

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    docs = {
        "images": "float32 [B, 3, H, W]: RGB resized to image_size, /255, then (x - image_mean) / image_std",
        "orig_target_sizes": "int64 [B, 2]: original image size as (H, W) -- height first, unlike the original "
        "DEIMv2 deploy graph",
        "labels": "int64 [B, K]: class index into class_names",
        "boxes": "float32 [B, K, 4]: x1, y1, x2, y2 in original-image pixels",
        "scores": "float32 [B, K]: confidence, sorted descending",
    }
    for value in list(proto.graph.input) + list(proto.graph.output):
        value.doc_string = docs.get(value.name, "")
    proto.doc_string = "defectfusion DEIMv2 detector with text-fusion heads (text embeddings baked in)"
    proto.producer_name = "defectfusion"
    proto.producer_version = __version__
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
