"""Shared fixtures: tiny random models and offline text encoders built in temp folders."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch

SIX_CLASSES = ["NORMAL", "DEFORMACIONES", "ROTURA_FRACTURA", "RAYONES_ARANAZOS", "PERFORACIONES", "CONTAMINACION"]
# Checkpoints written by the original DEIMv2 code, beside the project (tests skip without them).
ORIGINAL_FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "deimv2_original"


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a shared CPU: one thread avoids thread hand-off stalls."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _no_hub(monkeypatch):
    # Tests never reach the Hugging Face hub; a test that would is a bug.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def six_classes() -> list[str]:
    return list(SIX_CLASSES)


def _bytes_to_unicode() -> list[str]:
    """CLIP's byte-level alphabet (printable bytes map to themselves, the rest above 255)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
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


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """A folder holding a real CLIP tokenizer and a tiny random CLIP text tower with projection."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    folder = tmp_path_factory.mktemp("tiny-clip")
    tokenizer = build_clip_tokenizer()
    torch.manual_seed(0)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=77, projection_dim=24,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    CLIPTextModelWithProjection(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    """A small synthetic six-class COCO dataset (train 24 / val 8 images, 96 px)."""
    from defectfusion.data.synthetic import generate_synthetic_dataset

    root = tmp_path_factory.mktemp("synth")
    generate_synthetic_dataset(root, train=24, val=8, size=96, seed=3)
    return root


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
