import pytest
import torch

from defectfusion.data.descriptions import load_descriptions
from defectfusion.errors import DataError, TextEncoderUnavailable
from defectfusion.models import text as text_mod
from defectfusion.models.text import (
    EmbeddingCache,
    build_text_encoder,
    encode_descriptions,
    encode_texts,
    read_embeddings_file,
    write_embeddings_file,
)


def test_clip_path_with_a_real_tokenizer_and_a_tiny_model(tiny_clip_dir, tmp_path):
    from transformers import AutoTokenizer, CLIPTextModelWithProjection

    texts = ["A defect showing a deep crack", "a surface with scratch, fine line"]
    out = encode_texts(f"clip:{tiny_clip_dir}", texts, cache_dir=tmp_path)
    assert out.shape == (2, 24)
    assert torch.allclose(out.norm(dim=-1), torch.ones(2), atol=1e-6)
    # the same numbers as running the tower by hand
    tokenizer = AutoTokenizer.from_pretrained(tiny_clip_dir)
    model = CLIPTextModelWithProjection.from_pretrained(tiny_clip_dir).eval()
    with torch.no_grad():
        ref = model(**tokenizer(texts, padding=True, return_tensors="pt")).text_embeds
    assert torch.allclose(out, torch.nn.functional.normalize(ref, dim=-1), atol=1e-6)
    # the tokenizer is CLIP's: the same ids as open_clip's reference tokenizer
    import open_clip

    reference = open_clip.get_tokenizer("ViT-B-32")(texts)
    for text, ref_ids in zip(texts, reference, strict=True):
        assert tokenizer(text)["input_ids"] == ref_ids[ref_ids != 0].tolist()


def test_sentence_minilm_is_real_and_offline(tmp_path):
    out = encode_texts(
        "sentence:minilm",
        ["a deep crack through the metal", "a deep fracture in the metal", "a clean painted surface"],
        cache_dir=tmp_path,
    )
    assert out.shape == (3, 384)
    sim = out @ out.t()
    # a real sentence model: the two crack sentences are closer than crack vs clean surface
    assert sim[0, 1] > sim[0, 2] + 0.2


def test_second_call_hits_the_cache_without_loading_the_encoder(tiny_clip_dir, tmp_path, monkeypatch):
    descriptions = load_descriptions("defects6")
    first = encode_descriptions(descriptions, f"clip:{tiny_clip_dir}", tmp_path)
    assert len(list(tmp_path.glob("*.safetensors"))) == 1

    def refuse(self):
        raise AssertionError("the encoder was loaded despite a cache hit")

    monkeypatch.setattr(text_mod._HubTextEncoder, "_load", refuse)
    second = encode_descriptions(descriptions, f"clip:{tiny_clip_dir}", tmp_path)
    assert torch.equal(first.class_embeddings, second.class_embeddings)
    # a moved cache folder still hits: keys do not depend on where the cache lives
    moved = tmp_path.parent / "moved-cache"
    tmp_path.rename(moved)
    third = encode_descriptions(descriptions, f"clip:{tiny_clip_dir}", moved)
    assert torch.equal(first.class_embeddings, third.class_embeddings)


def test_cache_key_depends_on_encoder_and_texts():
    assert EmbeddingCache.key("clip:a", ["x"]) != EmbeddingCache.key("clip:b", ["x"])
    assert EmbeddingCache.key("clip:a", ["x"]) != EmbeddingCache.key("clip:a", ["y"])


def test_embeddings_file_round_trip_and_file_encoder(tiny_clip_dir, tmp_path):
    descriptions = load_descriptions("defects6")
    emb = encode_descriptions(descriptions, f"clip:{tiny_clip_dir}", tmp_path / "cache")
    path = write_embeddings_file(emb, tmp_path / "emb.safetensors")
    back = read_embeddings_file(path)
    assert back.class_names == emb.class_names and back.prompts == emb.prompts
    assert torch.equal(back.class_embeddings, emb.class_embeddings)
    via_file = encode_descriptions(descriptions, f"file:{path}")
    assert torch.allclose(via_file.class_embeddings, emb.class_embeddings)
    assert via_file.encoder == emb.encoder
    other = descriptions.model_copy(update={"description_template": "Something else: {description}"})
    with pytest.raises(DataError, match="made from other descriptions"):
        encode_descriptions(other, f"file:{path}")


def test_offline_hub_model_gives_one_error_with_both_ways_out(tmp_path):
    with pytest.raises(TextEncoderUnavailable) as info:
        encode_texts("clip:openai/clip-vit-base-patch32", ["a crack"], cache_dir=tmp_path)
    message = str(info.value)
    assert "openai/clip-vit-base-patch32" in message
    assert "local copy" in message and "encode-text" in message and "file:" in message


def test_bad_specs_are_named():
    with pytest.raises(DataError, match="must look like"):
        build_text_encoder("minilm")
    with pytest.raises(DataError, match="unknown text encoder kind 'bert'"):
        build_text_encoder("bert:foo")
    with pytest.raises(DataError, match="does not exist"):
        encode_texts("file:/nonexistent/emb.safetensors", ["x"])


def test_a_retrained_encoder_in_the_same_folder_gets_fresh_embeddings(tiny_clip_dir, tmp_path, monkeypatch):
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "my-clip"
    shutil.copytree(tiny_clip_dir, folder)
    cache = tmp_path / "cache"
    texts = ["a deep crack", "a superficial scratch"]
    before = encode_texts(f"clip:{folder}", texts, cache_dir=cache)
    # "Retrain": same tensors, same shapes, same file size, other values.
    weights = folder / "model.safetensors"
    state = load_file(str(weights))
    size = weights.stat().st_size
    save_file(
        {k: v + 0.05 if v.is_floating_point() else v for k, v in state.items()}, str(weights), metadata={"format": "pt"}
    )
    assert weights.stat().st_size == size
    after = encode_texts(f"clip:{folder}", texts, cache_dir=cache)
    assert not torch.allclose(before, after)
    assert len(list(cache.glob("*.safetensors"))) == 2

    # The content hash is computed once per file version, not at every lookup.
    reads = []
    monkeypatch.setattr(text_mod, "_hash_file", lambda path: reads.append(path) or "x")
    identity = build_text_encoder(f"clip:{folder}").identity
    assert build_text_encoder(f"clip:{folder}").identity == identity and not reads
