"""Shared test helpers: tiny detectors and datasets, the CLI runner, HTML checks, training configs.

Fixtures that build these once per session live in ``conftest.py``.
"""

from __future__ import annotations

import base64
import copy
import gzip
import io
import json
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from defectfusion.config import FusionConfig, ModelConfig
from defectfusion.data.descriptions import load_descriptions
from defectfusion.models.checkpoint import save_detector
from defectfusion.models.detector import DefectDetector, build_detector
from defectfusion.models.text import encode_descriptions
from defectfusion.structures import ClassMetrics, Detections, Metrics

SIX_CLASSES = ["NORMAL", "DEFORMACIONES", "ROTURA_FRACTURA", "RAYONES_ARANAZOS", "PERFORACIONES", "CONTAMINACION"]
# Checkpoints written by the original DEIMv2 code, beside the project (tests skip without them).
ORIGINAL_FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "deimv2_original"
SIZE = 96


# ---------------------------------------------------------------------------- tiny models (the kit)


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
        model = build_detector(
            model_cfg, names, fusion, text.class_embeddings, encoder=text.encoder, descriptions="defects6"
        )
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
    return Kit(
        root,
        synth_data,
        synth_data / "val" / "annotations.json",
        synth_data / "val" / "images",
        root / "baseline",
        root / "fused",
        root / "fused_dec",
        root / "silent",
        encoder,
        cache_dir,
        reworded(root / "reworded.yml"),
    )


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

    run = root / "run"
    run.mkdir(parents=True)
    write_train_config(run / "config.yaml", kit.data)
    shutil.copytree(kit.baseline, run / "baseline" / "best")
    shutil.copytree(kit.fused, run / "phase1" / "best")
    shutil.copytree(kit.fused, run / "final")
    for phase, values in (("baseline", [0.05, 0.12, 0.2]), ("phase1", [0.2, 0.24, 0.23])):
        lines = []
        for epoch, v in enumerate(values):
            lines.append(
                json.dumps(
                    {
                        "phase": phase,
                        "epoch": epoch,
                        "map50": v,
                        "map": v / 2,
                        "train_loss": None if epoch == 0 else 10.0 - epoch,
                        "lr": 1e-3,
                        "time": f"2026-01-0{1 if phase == 'baseline' else 2}T00:00:0{epoch}+00:00",
                    }
                )
            )
        (run / phase / "metrics.jsonl").write_text("\n".join(lines) + "\n")

    def outcome(name: str, best: float, epoch: int) -> dict:
        return {
            "name": name,
            "best_epoch": epoch,
            "best_map50": best,
            "best_map": best / 2,
            "initial_map50": 0.0,
            "initial_map": 0.0,
            "epochs_run": 2,
            "stop_reason": "completed 2 epochs",
            "best_dir": str(run / name / "best"),
            "seconds": 12.5,
        }

    summary = {
        "name": "fabricated",
        "phases_requested": ["baseline", "phase1", "phase2"],
        "start": None,
        "baseline": {
            "source": "phase baseline",
            "checkpoint": str(run / "baseline" / "best"),
            "map50": 0.2,
            "map": 0.1,
        },
        "phases": {"baseline": outcome("baseline", 0.2, 2), "phase1": outcome("phase1", 0.24, 1)},
        "gates": [
            {
                "after": "phase1",
                "metric": "map50",
                "value": 0.24,
                "min": 0.8,
                "max": None,
                "proceed": False,
                "reason": "map50 0.2400 < 0.8000: below the gate, the next phase does not run (review phase1 "
                "before going on)",
            }
        ],
        "final": {
            "phase": "phase1",
            "checkpoint": str(run / "final"),
            "source": str(run / "phase1" / "best"),
            "map50": 0.24,
            "map": 0.12,
            "reason": "phase1 has the best validation mAP@0.5",
        },
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


# ---------------------------------------------------------------------------- HTML reports


class Resources(HTMLParser):
    """Collects every src/href, and the tags seen."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.refs: list[tuple[str, str, str]] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href", "srcset", "poster", "data"):
                self.refs.append((tag, name, value or ""))
            if tag == "img" and name == "src":
                self.images.append(value or "")


def check_html(path: Path) -> Resources:
    parser = Resources()
    parser.feed(path.read_text(encoding="utf-8"))
    for tag, name, value in parser.refs:
        if tag == "img" and name == "src":
            continue
        assert value.startswith("#"), f"external reference in the HTML: <{tag} {name}={value[:60]!r}>"
    for src in parser.images:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix), src[:60]
        data = base64.b64decode(src[len(prefix) :], validate=True)
        with Image.open(io.BytesIO(data)) as im:
            assert im.format == "PNG"
            im.verify()
    assert "<script" not in path.read_text(encoding="utf-8").lower()
    assert "url(" not in path.read_text(encoding="utf-8")  # no stylesheet resources either
    return parser


# ---------------------------------------------------------------------------- text and training


def _bytes_to_unicode() -> list[str]:
    """CLIP's byte-level alphabet (printable bytes map to themselves, the rest above 255)."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def build_clip_tokenizer():
    """A real CLIP tokenizer from the BPE merges that open_clip ships (no download)."""
    import open_clip
    from transformers import CLIPTokenizer

    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(bpe).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    alphabet = _bytes_to_unicode()
    tokens = alphabet + [t + "</w>" for t in alphabet] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=merges)


def write_train_config(path: Path, dataset: Path, **sections) -> Path:
    """A fast training config on ``data`` (tiny model, 96 px, no heavy augmentation), as YAML.

    ``sections`` are merged over the defaults (e.g. ``phases=..., order=[...]``).
    """
    import yaml

    from defectfusion.config import deep_merge

    base = {
        "include": ["progressive.yml"],
        "name": "test",
        "seed": 0,
        "model": {"preset": "hgnetv2_micro", "image_size": [96, 96]},
        "fusion": {"encoder": "sentence:minilm", "cache_dir": str(path.parent / "text-cache")},
        "data": {
            "train": {"annotations": str(dataset / "train" / "annotations.json")},
            "val": {"annotations": str(dataset / "val" / "annotations.json")},
            "batch_size": 4,
            "num_workers": 0,
            "verify_images": True,
            "augment": {"mosaic_prob": 0.0, "photometric_prob": 0.0, "zoom_out_prob": 0.0, "iou_crop_prob": 0.0},
        },
        "train": {"warmup_steps": 2, "threads": 1, "tensorboard": False, "early_stop": {"drop": None}},
        "phases": {
            "baseline": {"epochs": 1, "lr": {"backbone": 2e-3, "encoder": 2e-3, "decoder": 2e-3, "class_head": 2e-3}},
            "phase1": {"epochs": 1, "lr": 1e-2},
            "phase2": {"epochs": 1, "lr": 1e-3},
            "phase3": {"epochs": 1, "lr": 1e-3},
        },
        "order": ["baseline", "phase1", "phase2", "phase3"],
        "gates": {"phase1": None, "phase2": None},  # drop the packaged absolute gates
    }
    config = deep_merge(base, sections)
    # the packaged progressive config, by absolute path, so the file can live anywhere
    from defectfusion.config import packaged_config_path

    config["include"] = [str(packaged_config_path("progressive"))]
    path.write_text(yaml.safe_dump(config))
    return path


# ---------------------------------------------------------------------------- COCO cases


# Category ids deliberately not 0..C-1 and not sorted: label i is the i-th entry of the list.
CATS = [{"id": 7, "name": "NORMAL"}, {"id": 2, "name": "ROTURA"}, {"id": 5, "name": "RAYONES"},
        {"id": 9, "name": "ABSENT"}]  # fmt: skip


def coco_case(images: int, anns: list[dict]) -> dict:
    for i, a in enumerate(anns):
        a.setdefault("id", i + 1)
        a.setdefault("iscrowd", 0)
        a.setdefault("area", a["bbox"][2] * a["bbox"][3])
    imgs = [{"id": i + 1, "width": 400, "height": 300, "file_name": f"{i + 1}.png"} for i in range(images)]
    return {"images": imgs, "categories": copy.deepcopy(CATS), "annotations": anns}


def random_coco_case(seed: int = 0) -> tuple[dict, list[dict]]:
    """GT over 10 images (image 9 without GT, image 10 without GT or predictions, a crowd box,
    class ABSENT never in GT) and COCO results with jittered boxes, swapped classes, misses and
    false positives, so that the PR curves are non-trivial at every IoU threshold."""
    rng = np.random.default_rng(seed)
    anns, results = [], []
    for img in range(1, 9):
        for _ in range(rng.integers(1, 6)):
            w, h = rng.uniform(15, 90, 2)
            x, y = rng.uniform(0, 400 - w), rng.uniform(0, 300 - h)
            cid = int(rng.choice([7, 2, 5]))
            anns.append({"image_id": img, "category_id": cid, "bbox": [x, y, w, h]})
            if rng.random() < 0.15:
                continue  # missed
            for _ in range(1 + int(rng.random() < 0.3)):  # sometimes a duplicate
                j = rng.normal(0, 0.06, 4) * [w, h, w, h]
                pc = cid if rng.random() < 0.8 else int(rng.choice([7, 2, 5, 9]))
                box = [x + j[0], y + j[1], max(w + j[2], 2.0), max(h + j[3], 2.0)]
                results.append({"image_id": img, "category_id": pc, "bbox": box, "score": float(rng.uniform(0.05, 1))})
        for _ in range(rng.integers(0, 3)):  # false positives
            box = [*rng.uniform(0, 300, 2), *rng.uniform(10, 60, 2)]
            results.append({"image_id": img, "category_id": int(rng.choice([7, 2, 5, 9])), "bbox": box,
                            "score": float(rng.uniform(0.05, 1))})  # fmt: skip
    anns.append({"image_id": 3, "category_id": 2, "bbox": [300, 200, 90, 90], "iscrowd": 1})
    results.append({"image_id": 3, "category_id": 2, "bbox": [310, 210, 30, 30], "score": 0.95})  # on the crowd
    results.append({"image_id": 9, "category_id": 5, "bbox": [10, 10, 40, 40], "score": 0.6})
    return coco_case(10, anns), results


def results_as_detections(results: list[dict], image_id: int) -> Detections:
    label = {c["id"]: i for i, c in enumerate(CATS)}
    recs = [r for r in results if r["image_id"] == image_id]
    if not recs:
        return Detections.empty()
    b = torch.tensor([r["bbox"] for r in recs], dtype=torch.float64)
    scores = torch.tensor([r["score"] for r in recs], dtype=torch.float64)  # as in the results file
    return Detections(torch.cat([b[:, :2], b[:, :2] + b[:, 2:]], 1), scores,
                      torch.tensor([label[r["category_id"]] for r in recs]))  # fmt: skip


def coco_from_boxes(sizes, boxes, names, prefix: str = "img") -> dict:
    """A COCO dict: images ``{prefix}{i}.png`` of ``sizes`` (w, h), ``boxes`` as
    ``(annotation id, image id, category id, x, y, w, h)``, categories 1..N named ``names``."""
    images = [{"id": i + 1, "file_name": f"{prefix}{i}.png", "width": w, "height": h} for i, (w, h) in enumerate(sizes)]
    anns = [
        {"id": aid, "image_id": iid, "category_id": cid, "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0}
        for aid, iid, cid, x, y, w, h in boxes
    ]
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(names)]
    return {"images": images, "annotations": anns, "categories": categories}


def busy_coco_case(seed: int = 0, ties: bool = False) -> tuple[dict, list[dict]]:
    """:func:`random_coco_case` with more of what COCO treats specially: image 2 holds 150 detections
    of RAYONES around two objects of it (the cap of 100 per image and class cuts some hits), image 4
    an object whose ``area`` lies outside COCO's range "all" (ignored, like a crowd box, but matched
    once) with two detections on it, image 5 a detection larger than that range, image 3 four on its
    crowd region, image 6 a detection with equal IoU to two objects. ``ties``: scores
    rounded to 0.05, so that many tie within and across images."""
    rng = np.random.default_rng(1000 + seed)
    gt, results = random_coco_case(seed)
    anns = gt["annotations"]
    for box in ([40.0, 40.0, 60.0, 50.0], [200.0, 120.0, 50.0, 70.0]):
        anns.append({"id": len(anns) + 1, "image_id": 2, "category_id": 5, "bbox": box, "area": box[2] * box[3],
                     "iscrowd": 0})  # fmt: skip
    for _ in range(150):
        x, y, w, h = [40.0, 40.0, 60.0, 50.0] if rng.random() < 0.5 else [200.0, 120.0, 50.0, 70.0]
        if rng.random() < 0.3:  # a hit, more or less tight
            j = rng.normal(0, 0.15, 4) * [w, h, w, h]
            box = [x + j[0], y + j[1], max(w + j[2], 2.0), max(h + j[3], 2.0)]
        else:  # a miss somewhere in the image
            box = [*rng.uniform(0, 300, 2), *rng.uniform(10, 80, 2)]
        results.append({"image_id": 2, "category_id": 5, "bbox": box, "score": float(rng.uniform(0.05, 1))})
    anns.append({"id": len(anns) + 1, "image_id": 4, "category_id": 7, "bbox": [20.0, 200.0, 50.0, 40.0],
                 "area": 2e10, "iscrowd": 0})  # fmt: skip
    results.append({"image_id": 4, "category_id": 7, "bbox": [22.0, 201.0, 50.0, 40.0], "score": 0.7})
    results.append({"image_id": 4, "category_id": 7, "bbox": [21.0, 199.0, 49.0, 41.0], "score": 0.65})
    results.append({"image_id": 5, "category_id": 2, "bbox": [0.0, 0.0, 2e5, 2e5], "score": 0.8})
    for score in (0.55, 0.5, 0.45):  # more detections on image 3's crowd region, which absorbs them all
        results.append({"image_id": 3, "category_id": 2, "bbox": [320, 220, 30, 30], "score": score})
    # image 6: a detection exactly as close to two objects (COCO takes the later one), then one that
    # only the earlier object can take
    for box in ([100.0, 100.0, 40.0, 40.0], [110.0, 100.0, 40.0, 40.0]):
        anns.append({"id": len(anns) + 1, "image_id": 6, "category_id": 7, "bbox": box, "area": 1600.0,
                     "iscrowd": 0})  # fmt: skip
    results.append({"image_id": 6, "category_id": 7, "bbox": [105.0, 100.0, 40.0, 40.0], "score": 0.99})
    results.append({"image_id": 6, "category_id": 7, "bbox": [95.0, 100.0, 40.0, 40.0], "score": 0.98})
    if ties:
        for r in results:
            r["score"] = max(0.05, round(r["score"] * 20) / 20)
    return gt, results


def coco_on_resample(gt: dict, detections: dict[int, Detections], ids) -> tuple[list, list]:
    """Per-class AP@0.5 and AP@0.5:0.95 (``None``: undefined) of COCOeval on an explicitly resampled
    dataset, as the bootstrap used to score a draw: draw position ``n`` becomes image id ``n + 1``,
    its ground truth and detections copied."""
    from faster_coco_eval import COCO

    from defectfusion.engine.evaluation.evaluator import DetectionEvaluator, coco_class_ap

    base = DetectionEvaluator(gt).dataset
    images = {img["id"]: img for img in base["images"]}
    new_images, new_anns, results = [], [], []
    for new_id, image_id in enumerate(ids, start=1):
        new_images.append({**images[int(image_id)], "id": new_id})
        for ann in base["annotations"]:
            if ann["image_id"] == int(image_id):
                new_anns.append({**ann, "id": len(new_anns) + 1, "image_id": new_id})
        det = detections.get(int(image_id))
        if det is None:
            continue
        for b, s, lab in zip(det.boxes.double().tolist(), det.scores.double().tolist(), det.labels.tolist(),
                             strict=True):  # fmt: skip
            results.append({"image_id": new_id, "category_id": base["categories"][int(lab)]["id"],
                            "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": float(s)})  # fmt: skip
    dataset = {"images": new_images, "annotations": new_anns, "categories": base["categories"]}
    coco_gt = COCO(dataset, print_function=lambda *a, **k: None)
    cat_ids = [c["id"] for c in base["categories"]]
    ap50, ap, _ = coco_class_ap(coco_gt, results, list(range(1, len(ids) + 1)), cat_ids)
    return ap50, ap


# ---------------------------------------------------------------------------- evaluator-shaped metrics

REPORT_CLASSES = ["NORMAL", "ROTURA_FRACTURA", "RAYONES_ARANAZOS", "PERFORACIONES"]


def fake_metrics(
    ap50s, counts, absent=(), *, names=REPORT_CLASSES, map_ratio: float | None = 0.6, silent=()
) -> Metrics:
    """What the evaluator returns, made up: AP@0.5 per class of ``names``, confusion ``counts``
    ``[(C+1) x (C+1)]`` (rows ground truth, last row and column background).

    Classes in ``absent`` have no ground truth (their AP undefined); classes in ``silent`` were never
    predicted; mAP@0.5:0.95 is ``map_ratio`` x mAP@0.5 (``None``: undefined). ``.to_dict()`` where a
    test needs the ``metrics.json`` dict.
    """
    counts = np.asarray(counts)
    totals = counts.sum(1)
    recall = np.linspace(0, 1, 101)
    per_class, curves = {}, {}
    for i, name in enumerate(names):
        ap = None if name in absent else ap50s[i]
        per_class[name] = ClassMetrics(
            ap50=ap,
            ap=None if ap is None else ap * 0.6,
            precision=ap,
            recall=ap,
            f1=ap,
            conf=None if ap is None else 0.4,
            num_gt=int(totals[i]),
            num_pred=0 if name in silent else int(counts[:, i].sum()),
        )
        precision = [None] * 101 if ap is None else [max(0.0, 1 - (1 - ap) * 2 * r**3) for r in recall]
        curves[name] = {"recall": recall.tolist(), "precision": precision}
    defined = [a for a, n in zip(ap50s, names, strict=True) if n not in absent]
    map50 = float(np.mean(defined))
    return Metrics(
        map50=map50,
        map=None if map_ratio is None else map50 * map_ratio,
        num_images=20,
        num_ground_truth=int(counts[:-1].sum()),
        num_detections=int(counts[:, :-1].sum()),
        per_class=per_class,
        confusion_matrix={
            "labels": [*names, "background"],
            "counts": counts.tolist(),
            "normalized": [[None if t == 0 else float(c / t) for c in r] for r, t in zip(counts, totals, strict=True)],
            "rows": "ground truth",
            "columns": "prediction",
            "iou_threshold": 0.5,
            "conf_threshold": 0.25,
        },
        pr_curves=curves,
    )


def outcome_entry(name: str, map50: float | None, best_dir, **fields) -> dict:
    """A phase's entry in summary.json (its PhaseOutcome as a dict) that reached ``map50`` at its best."""
    from dataclasses import asdict

    from defectfusion.engine.training.phase_records import PhaseOutcome

    values = {"best_epoch": 1, "best_map50": map50, "best_map": map50, "initial_map50": None, "initial_map": None}
    values.update({"epochs_run": 1, "stop_reason": "completed 1 epochs", "best_dir": str(best_dir), "seconds": 1.0})
    return asdict(PhaseOutcome(name=name, **{**values, **fields}))
