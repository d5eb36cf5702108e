"""defectfusion: text-visual fusion for DEIMv2 industrial defect detectors.

Public API::

    import defectfusion
    model = defectfusion.load_detector("runs/demo/phase2/best")   # a folder: config.json + model.safetensors
    out = model(pixel_values=x)        # out.logits [B, Q, C], out.pred_boxes [B, Q, 4] (cxcywh, 0..1)
    defectfusion.save_detector(model, "my_model")                # loads back exactly
    predictor = defectfusion.Predictor.from_checkpoint("runs/demo/final", threshold=0.3)
    detections = predictor([image])    # uint8 [3, H, W] tensors -> Detections in original pixels
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .version import __version__

# Imported on first use, so `defectfusion --help` does not pay for torch/transformers.
_LAZY = {
    "load_detector": "defectfusion.models.checkpoint",
    "save_detector": "defectfusion.models.checkpoint",
    "build_detector": "defectfusion.models.detector",
    "DefectDetector": "defectfusion.models.detector",
    "set_trainable": "defectfusion.models.detector",
    "Config": "defectfusion.config",
    "load_config": "defectfusion.config",
    "Detections": "defectfusion.structures",
    "Predictor": "defectfusion.engine.prediction.predictor",
}

__all__ = [
    "Config",
    "DefectDetector",
    "Detections",
    "Predictor",
    "__version__",
    "build_detector",
    "load_config",
    "load_detector",
    "save_detector",
    "set_trainable",
]

if TYPE_CHECKING:
    from .config import Config, load_config
    from .engine.prediction.predictor import Predictor
    from .models.checkpoint import load_detector, save_detector
    from .models.detector import DefectDetector, build_detector
    from .models.groups import set_trainable
    from .structures import Detections


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'defectfusion' has no attribute {name!r}")
