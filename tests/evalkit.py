"""Tiny detectors and datasets for the evaluation / prediction / explain / report tests.

Models are built at random (no training) and their batch-norm statistics calibrated on random
inputs, so features have a sane scale (a fresh HGNetV2 in eval mode shrinks them to ~1e-19).
The fused model has a query-selection fusion head and an open gate, so its predictions depend on
the class texts (what-if descriptions change them).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from defectfusion.config import FusionConfig, ModelConfig
from defectfusion.data.descriptions import load_descriptions
from defectfusion.models.detector import DefectDetector, build_detector
from defectfusion.models.text import encode_descriptions

SIZE = 96


@dataclass
class Kit:
    root: Path
    data: Path  # synthetic dataset root (train/, val/)
    val_ann: Path
    val_images: Path
    baseline: Path  # plain detector folder
    fused: Path  # fused detector folder (query-selection fusion, gate open), clip:tiny text
    fused_decoder_only: Path  # fused without query-selection fusion
    silent: Path  # plain detector whose scores are all ~0: predicts nothing above any threshold
    encoder: str  # text encoder spec of the fused models
    cache_dir: Path
    other_descriptions: Path  # a reworded descriptions file (same classes)


def calibrate(model: DefectDetector, seed: int = 0, steps: int = 3) -> DefectDetector:
    """Set batch-norm running statistics from random inputs (cumulative average), then eval mode."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(pixel_values=torch.rand(4, 3, SIZE, SIZE, generator=generator))
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = 0.1
    return model.eval()


def reworded(path: Path) -> Path:
    """The packaged six-class descriptions with other wording (what-if input)."""
    data = yaml.safe_load(load_descriptions("defects6").model_dump_json())
    for item in data["classes"]:
        item["description"] = f"an image region that looks like {item['name'].lower().replace('_', ' ')}"
        item["keywords"] = [item["name"].lower()]
        item["contrast"] = None
        item["prompts"] = []
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def build_kit(root: Path, synth_data: Path, tiny_clip_dir: Path) -> Kit:
    torch.manual_seed(0)
    names = [c["name"] for c in json.loads((synth_data / "val" / "annotations.json").read_text())["categories"]]
    model_cfg = ModelConfig(preset="hgnetv2_micro", image_size=[SIZE, SIZE])
    encoder = f"clip:{tiny_clip_dir}"
    cache_dir = root / "text-cache"
    text = encode_descriptions(load_descriptions("defects6").ordered_like(names), encoder, cache_dir)

    baseline = calibrate(build_detector(model_cfg, names))
    baseline.save(root / "baseline")

    def fused_model(query_selection: bool, seed: int) -> DefectDetector:
        torch.manual_seed(seed)
        fusion = FusionConfig(encoder=encoder, query_selection=query_selection, gate_init=1.0)
        model = build_detector(model_cfg, names, fusion, text.class_embeddings, encoder=text.encoder,
                               descriptions="defects6")
        return calibrate(model)

    fused_model(True, 1).save(root / "fused")
    fused_model(False, 2).save(root / "fused_dec")

    silent = copy.deepcopy(baseline)
    with torch.no_grad():
        for name, param in silent.named_parameters():
            if "class_embed" in name and name.endswith("bias") or "enc_score_head.bias" in name:
                param.fill_(-1e4)
    silent.save(root / "silent")
    return Kit(root, synth_data, synth_data / "val" / "annotations.json", synth_data / "val" / "images",
               root / "baseline", root / "fused", root / "fused_dec", root / "silent", encoder, cache_dir,
               reworded(root / "reworded.yml"))


def without_class(annotations: Path, name: str, out: Path) -> Path:
    """A copy of a COCO file with every annotation of one class removed (the class stays listed)."""
    data = json.loads(annotations.read_text())
    cid = next(c["id"] for c in data["categories"] if c["name"] == name)
    data["annotations"] = [a for a in data["annotations"] if a["category_id"] != cid]
    out.write_text(json.dumps(data))
    return out
