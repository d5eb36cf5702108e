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
from defectfusion.models.checkpoint import save_detector
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
    save_detector(baseline, root / "baseline")

    def fused_model(query_selection: bool, seed: int) -> DefectDetector:
        torch.manual_seed(seed)
        fusion = FusionConfig(encoder=encoder, query_selection=query_selection, gate_init=1.0)
        model = build_detector(model_cfg, names, fusion, text.class_embeddings, encoder=text.encoder,
                               descriptions="defects6")
        return calibrate(model)

    save_detector(fused_model(True, 1), root / "fused")
    save_detector(fused_model(False, 2), root / "fused_dec")

    silent = copy.deepcopy(baseline)
    with torch.no_grad():
        for name, param in silent.named_parameters():
            if "class_embed" in name and name.endswith("bias") or "enc_score_head.bias" in name:
                param.fill_(-1e4)
        # ... and whose boxes are points: score-0 detections are still ranked, and a real box
        # could match an object by chance
        for head in (silent.model.enc_bbox_head, silent.model.decoder.pre_bbox_head):
            head.layers[-1].weight.zero_()
            head.layers[-1].bias.copy_(torch.tensor([0.0, 0.0, -30.0, -30.0]))
    save_detector(silent, root / "silent")
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


def make_run_folder(root: Path, kit: Kit) -> Path:
    """A run folder as `defectfusion train` leaves it, without any metrics.json next to the checkpoints.

    baseline phase -> phase1 (fused) -> gate stops phase2; final = phase1's best.
    """
    import shutil

    from tests.conftest import write_train_config

    run = root / "run"
    run.mkdir(parents=True)
    write_train_config(run / "config.yaml", kit.data)
    shutil.copytree(kit.baseline, run / "baseline" / "best")
    shutil.copytree(kit.fused, run / "phase1" / "best")
    shutil.copytree(kit.fused, run / "final")
    for phase, values in (("baseline", [0.05, 0.12, 0.2]), ("phase1", [0.2, 0.24, 0.23])):
        lines = []
        for epoch, v in enumerate(values):
            lines.append(json.dumps({"phase": phase, "epoch": epoch, "map50": v, "map": v / 2,
                                     "train_loss": None if epoch == 0 else 10.0 - epoch, "lr": 1e-3,
                                     "time": f"2026-01-0{1 if phase == 'baseline' else 2}T00:00:0{epoch}+00:00"}))
        (run / phase / "metrics.jsonl").write_text("\n".join(lines) + "\n")

    def outcome(name: str, best: float, epoch: int) -> dict:
        return {"name": name, "best_epoch": epoch, "best_map50": best, "best_map": best / 2, "initial_map50": 0.0,
                "initial_map": 0.0, "epochs_run": 2, "stop_reason": "completed 2 epochs",
                "best_dir": str(run / name / "best"), "seconds": 12.5}

    summary = {
        "name": "fabricated", "phases_requested": ["baseline", "phase1", "phase2"], "start": None,
        "baseline": {"source": "phase baseline", "checkpoint": str(run / "baseline" / "best"), "map50": 0.2,
                     "map": 0.1},
        "phases": {"baseline": outcome("baseline", 0.2, 2), "phase1": outcome("phase1", 0.24, 1)},
        "gates": [{"after": "phase1", "metric": "map50", "value": 0.24, "min": 0.8, "max": None, "proceed": False,
                   "reason": "map50 0.2400 < 0.8000: below the gate, the next phase does not run (review phase1 "
                             "before going on)"}],
        "final": {"phase": "phase1", "checkpoint": str(run / "final"), "source": str(run / "phase1" / "best"),
                  "map50": 0.24, "map": 0.12, "reason": "phase1 has the best validation mAP@0.5"},
    }
    (run / "summary.json").write_text(json.dumps(summary, indent=2))
    return run


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    from defectfusion.cli import main

    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(argv: list[str], capsys) -> str:
    """Run the CLI expecting a user error: exit 2, one `error: ...` line, no traceback. Returns the line."""
    code, _, err = run_cli(argv, capsys)
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if not line.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]
