"""Session fixtures: tiny random models, offline text encoders and synthetic data built once in temp folders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import SIX_CLASSES, Kit, build_clip_tokenizer, build_kit


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


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """A folder holding a real CLIP tokenizer and a tiny random CLIP text tower with projection."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    folder = tmp_path_factory.mktemp("tiny-clip")
    tokenizer = build_clip_tokenizer()
    torch.manual_seed(0)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=24,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
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


@pytest.fixture(scope="session")
def kit(tmp_path_factory, synth_data, tiny_clip_dir) -> Kit:
    """The tiny detectors of the evaluation, prediction, explanation and report tests (built once)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return build_kit(tmp_path_factory.mktemp("kit"), synth_data, tiny_clip_dir)
    finally:
        torch.set_num_threads(threads)
