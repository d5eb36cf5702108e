"""Converting checkpoints of the original DEIMv2 code.

Ground truth: ``../shared/fixtures/deimv2_original/*``, checkpoints written by the original code
with its own outputs on a fixed input (see the README there). Each test using them is skipped,
with the reason, when the fixtures are absent.
"""

import copy
import functools
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from torchvision.ops import box_convert

from defectfusion import load_detector
from defectfusion.commands.convert import convert_original
from defectfusion.config import FusionConfig
from defectfusion.errors import CheckpointError, ConfigError, DataError
from defectfusion.models.detector import add_fusion
from defectfusion.models.fusion import random_text_embeddings
from defectfusion.models.original.config import OriginalConfig, load_original_yaml
from defectfusion.models.original.convert import (
    build_from_original,
    class_names_from_annotations,
    read_checkpoint,
)
from tests.helpers import ORIGINAL_FIXTURES

NAMES = ["mini_dinov3", "mini_hgnetv2"]
LOGIT_TOL, BOX_TOL, PIXEL_TOL, SCORE_TOL = 1e-4, 1e-5, 1e-2, 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")


def fixture_dir(name: str) -> Path:
    folder = ORIGINAL_FIXTURES / name
    if not (folder / "checkpoint.pth").is_file():
        pytest.skip(f"original DEIMv2 fixture {folder} is absent (it lives in ../shared beside the checkout)")
    return folder


@functools.cache
def expected(name: str) -> dict:
    return torch.load(ORIGINAL_FIXTURES / name / "expected.pt", map_location="cpu", weights_only=True)


@functools.cache
def pixels(name: str) -> torch.Tensor:
    return torch.load(ORIGINAL_FIXTURES / name / "input.pt", map_location="cpu", weights_only=True)


@functools.cache
def converted(name: str, weights: str):
    folder = ORIGINAL_FIXTURES / name
    return convert_original(folder / "checkpoint.pth", folder / "config.yml", weights=weights)


def run(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    with torch.no_grad():
        out = model(pixel_values=x)
    return out.logits, out.pred_boxes


# ----------------------------------------------------------------------------- comparisons


def original_postprocess(logits, boxes, size_wh, top_k):
    """The original DEIMv2 PostProcessor (focal): top-k over (query, class); target size is (W, H)."""
    classes = logits.shape[-1]
    scores, index = logits.sigmoid().flatten(1).topk(top_k, dim=-1)
    labels, query = index % classes, index // classes
    xyxy = box_convert(boxes, "cxcywh", "xyxy") * torch.as_tensor(size_wh, dtype=boxes.dtype).repeat(1, 2).unsqueeze(1)
    return labels[0], xyxy[0][query[0]], scores[0]


def match_queries(logits, boxes, ref_logits, ref_boxes):
    """Pair queries in score order, tie-tolerantly; returns (max |d logits|, max |d boxes|) over the pairs."""
    logits, boxes, ref_logits, ref_boxes = logits[0], boxes[0], ref_logits[0], ref_boxes[0]
    d_logits = (ref_logits[:, None] - logits[None]).abs().amax(-1).tolist()  # [ref query, our query]
    d_boxes = (ref_boxes[:, None] - boxes[None]).abs().amax(-1).tolist()
    ours = logits.max(-1).values.argsort(descending=True).tolist()
    worst_logit = worst_box = 0.0
    for i in ref_logits.max(-1).values.argsort(descending=True).tolist():
        j = next((j for j in ours if d_logits[i][j] <= LOGIT_TOL and d_boxes[i][j] <= BOX_TOL), None)
        if j is None:
            raise AssertionError(
                f"query {i} of the original has no counterpart within logits {LOGIT_TOL}/boxes {BOX_TOL}"
            )
        ours.remove(j)
        worst_logit, worst_box = max(worst_logit, d_logits[i][j]), max(worst_box, d_boxes[i][j])
    return worst_logit, worst_box


def assert_same_detections(ours, ref):
    """Same labels, scores and pixel boxes up to the order of (near-)ties and the top-k cut-off."""
    labels, boxes, scores = ours
    close = (
        (ref["labels"][:, None] == labels[None])
        & ((ref["scores"][:, None] - scores[None]).abs() < SCORE_TOL)
        & ((ref["boxes"][:, None] - boxes[None]).abs().amax(-1) < PIXEL_TOL)
    ).tolist()
    free = list(range(len(scores)))
    unmatched = []
    for i, score in enumerate(ref["scores"].tolist()):
        hit = next((j for j in free if close[i][j]), None)
        if hit is None:
            unmatched.append(score)
        else:
            free.remove(hit)
    cutoff = ref["scores"].min().item()
    # Only detections tied at the top-k cut-off may differ (a near-tie can fall on either side).
    assert all(abs(s - cutoff) < SCORE_TOL for s in unmatched), f"unmatched detections with scores {unmatched}"
    assert all(abs(scores[j].item() - cutoff) < SCORE_TOL for j in free)
    assert len(labels) == len(ref["labels"])


def assert_reproduces(model, name: str, weights: str) -> tuple[float, float]:
    ref = expected(name)[weights]
    logits, boxes = run(model, pixels(name))
    assert logits.shape == ref["pred_logits"].shape and boxes.shape == ref["pred_boxes"].shape
    worst = match_queries(logits, boxes, ref["pred_logits"], ref["pred_boxes"])
    top_k = expected(name)["num_top_queries"]
    for sizes_key, ref_dets in (("orig_target_sizes", ref), ("orig_target_sizes_nonsquare", ref["nonsquare"])):
        size_wh = expected(name)[sizes_key]
        assert_same_detections(original_postprocess(logits, boxes, size_wh, top_k), ref_dets)
    return worst


# ----------------------------------------------------------------------------- parity


@pytest.mark.parametrize("weights", ["ema", "model"])
@pytest.mark.parametrize("name", NAMES)
def test_converted_model_reproduces_the_original_outputs(name, weights):
    fixture_dir(name)
    result = converted(name, weights)
    assert result.checkpoint.weights == weights
    worst_logit, worst_box = assert_reproduces(result.model, name, weights)
    print(f"{name}/{weights}: max |d logits| {worst_logit:.2e}, max |d boxes| {worst_box:.2e}")
    assert result.model.meta.extra["num_top_queries"] == expected(name)["num_top_queries"]


@pytest.mark.parametrize("name", NAMES)
def test_saved_conversion_loads_back_exactly_and_still_reproduces(tmp_path, name):
    folder = fixture_dir(name)
    result = convert_original(folder / "checkpoint.pth", folder / "config.yml", tmp_path / "out")
    assert result.out == tmp_path / "out" and result.checkpoint.weights == "ema"  # EMA by default
    loaded = load_detector(tmp_path / "out")
    assert loaded.meta.semantics == "original" and loaded.config.eval_size is None
    own = result.model.state_dict()
    assert own.keys() == loaded.state_dict().keys()
    for key, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, own[key]), key
    x = pixels(name)
    for a, b in zip(run(result.model, x), run(loaded, x), strict=True):
        assert torch.equal(a, b)
    assert_reproduces(loaded, name, "ema")


def test_ema_and_model_weights_differ_and_ema_is_the_default(tmp_path):
    folder = fixture_dir("mini_hgnetv2")
    default = read_checkpoint(folder / "checkpoint.pth")
    assert default.weights == "ema" and default.available == ("ema", "model")
    assert default.info == {"ema_updates": 4321, "last_epoch": 11, "date": default.info["date"]}
    model = read_checkpoint(folder / "checkpoint.pth", "model")
    key = "decoder.dec_score_head.2.weight"
    assert not torch.equal(default.state[key], model.state[key])


def test_converted_config_carries_the_original_semantics():
    fixture_dir("mini_dinov3")
    model = converted("mini_dinov3", "ema").model
    backbone = model.config.backbone_config
    assert backbone.key_bias is True and backbone.layer_norm_eps == 1e-6 and backbone.apply_layernorm is False
    assert backbone.num_attention_heads == 2 and backbone.out_indices == [3, 7, 12]
    assert isinstance(model.model.conv_encoder.backbone.norm, torch.nn.Identity)
    assert isinstance(model.model.enc_output, torch.nn.Identity)
    assert model.config.reg_scale == 4.0 and model.model.decoder.reg_scale.dtype == torch.float32
    assert model.meta.image_size == (256, 256)
    assert model.meta.image_mean == (0.485, 0.456, 0.406) and model.meta.image_std == (0.229, 0.224, 0.225)
    hgnet = converted("mini_hgnetv2", "ema").model
    assert hgnet.meta.image_mean == (0.0, 0.0, 0.0) and hgnet.meta.image_std == (1.0, 1.0, 1.0)
    assert hgnet.config.share_bbox_head and not hgnet.config.use_gateway and hgnet.config.decoder_n_points == [4, 2]


@pytest.mark.parametrize("name", NAMES)
def test_fusion_wrapped_conversion_equals_it_exactly_at_init(name):
    fixture_dir(name)
    base = converted(name, "ema").model
    fused = add_fusion(base, FusionConfig(query_selection=True), random_text_embeddings(6, 16, seed=3))
    x = pixels(name)
    for a, b in zip(run(base, x), run(fused, x), strict=True):
        assert (a - b).abs().max().item() == 0.0


# ----------------------------------------------------------------------------- bad files write nothing


def _bad_files(tmp_path: Path, folder: Path) -> dict[str, Path]:
    data = (folder / "checkpoint.pth").read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    text = tmp_path / "notes.pth"
    text.write_text("this is not a checkpoint\n")
    foreign = tmp_path / "foreign.pth"
    torch.save({"weight": torch.randn(3, 3), "bias": torch.randn(3)}, foreign)
    solver_like = tmp_path / "solver_like.pth"
    torch.save({"model": {"fc.weight": torch.randn(2, 2)}, "last_epoch": 3}, solver_like)
    code = tmp_path / "pickled_object.pth"
    torch.save({"model": {"x": torch.zeros(1)}, "obj": torch.nn.Identity()}, code)
    return {"truncated": truncated, "text": text, "foreign": foreign, "solver_like": solver_like, "code": code}


@pytest.mark.parametrize("kind", ["truncated", "text", "foreign", "solver_like", "code"])
def test_damaged_or_foreign_checkpoints_fail_clearly_and_write_nothing(tmp_path, kind):
    folder = fixture_dir("mini_hgnetv2")
    bad = _bad_files(tmp_path, folder)[kind]
    with pytest.raises(CheckpointError) as info:
        convert_original(bad, folder / "config.yml", tmp_path / "out")
    message = str(info.value)
    assert str(bad) in message and "\n" not in message and "weights_only=False" not in message
    assert not (tmp_path / "out").exists()
    if kind == "code":
        assert "never runs code" in message


def test_missing_weights_entry_and_missing_file_are_clear(tmp_path):
    folder = fixture_dir("mini_hgnetv2")
    state = read_checkpoint(folder / "checkpoint.pth", "model").state
    torch.save(state, tmp_path / "bare.pth")
    with pytest.raises(CheckpointError, match="has no 'ema' weights; it holds: state_dict"):
        read_checkpoint(tmp_path / "bare.pth", "ema")
    assert read_checkpoint(tmp_path / "bare.pth").weights == "state_dict"
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.pth")


def test_a_bare_state_dict_with_a_ddp_prefix_converts(tmp_path):
    folder = fixture_dir("mini_hgnetv2")
    state = read_checkpoint(folder / "checkpoint.pth", "model").state
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "ddp.pth")
    result = convert_original(tmp_path / "ddp.pth", folder / "config.yml")
    assert result.checkpoint.weights == "state_dict"
    assert_reproduces(result.model, "mini_hgnetv2", "model")


def test_frozen_batch_norms_without_batch_counters_convert():
    # The original HGNetv2 with freeze_norm: True stores FrozenBatchNorm2d buffers: no num_batches_tracked.
    folder = fixture_dir("mini_hgnetv2")
    ckpt = read_checkpoint(folder / "checkpoint.pth")
    for key in [k for k in ckpt.state if k.startswith("backbone.") and k.endswith("num_batches_tracked")]:
        del ckpt.state[key]
    result = build_from_original(ckpt, OriginalConfig.load(folder / "config.yml"))
    assert any("batch counters" in line for line in result.filled)
    assert_reproduces(result.model, "mini_hgnetv2", "ema")


def test_config_that_does_not_describe_the_weights_is_an_error_and_writes_nothing(tmp_path):
    folder = fixture_dir("mini_dinov3")
    cfg = load_original_yaml(folder / "config.yml")
    cfg["DEIMTransformer"]["num_layers"] = 4
    (tmp_path / "wrong.yml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(CheckpointError, match=r"disagree: DEIMTransformer.num_layers is 4 in the config but 3"):
        convert_original(folder / "checkpoint.pth", tmp_path / "wrong.yml", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(CheckpointError, match="selects backbone 'HGNetv2'"):
        convert_original(folder / "checkpoint.pth", ORIGINAL_FIXTURES / "mini_hgnetv2" / "config.yml", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unmapped_tensors_are_listed_never_dropped(tmp_path):
    folder = fixture_dir("mini_hgnetv2")
    ckpt = read_checkpoint(folder / "checkpoint.pth")
    ckpt.state["decoder.mystery_head.weight"] = torch.zeros(2)
    with pytest.raises(CheckpointError, match=r"1 tensor\(s\) of the checkpoint have no place.*decoder.mystery_head"):
        build_from_original(ckpt, OriginalConfig.load(folder / "config.yml"))


def test_refuses_to_replace_a_folder_that_is_not_a_detector(tmp_path):
    folder = fixture_dir("mini_hgnetv2")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "thesis.tex").write_text("keep me")
    with pytest.raises(ConfigError, match="not a detector folder"):
        convert_original(folder / "checkpoint.pth", folder / "config.yml", tmp_path / "out")
    assert (tmp_path / "out" / "thesis.tex").read_text() == "keep me"


# ----------------------------------------------------------------------------- reading the YAML


def test_includes_merge_in_order_relative_to_each_file(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "nested").mkdir()
    (tmp_path / "base" / "nested" / "deep.yml").write_text("a: deep\nsection: {x: 0, keep: deep}\n")
    (tmp_path / "base" / "first.yml").write_text(
        "__include__: ['nested/deep.yml']\na: first\nb: first\nsection: {x: 1, y: 1}\nlist: [1, 2, 3]\n"
    )
    (tmp_path / "base" / "second.yml").write_text("b: second\nsection: {y: 2}\nlist: [9]\n")
    (tmp_path / "main.yml").write_text("__include__: ['base/first.yml', 'base/second.yml']\nsection: {z: 3}\n")
    merged = load_original_yaml(tmp_path / "main.yml")
    assert merged == {"a": "first", "b": "second", "list": [9], "section": {"x": 1, "keep": "deep", "y": 2, "z": 3}}


def test_include_errors_name_the_file(tmp_path):
    (tmp_path / "a.yml").write_text("__include__: ['b.yml']\n")
    (tmp_path / "b.yml").write_text("__include__: ['a.yml']\n")
    with pytest.raises(ConfigError, match="includes itself"):
        load_original_yaml(tmp_path / "a.yml")
    (tmp_path / "c.yml").write_text("__include__: ['missing.yml']\n")
    with pytest.raises(ConfigError, match=r"missing.yml.*does not exist \(included from"):
        load_original_yaml(tmp_path / "c.yml")


def _yaml_without(tmp_path: Path, name: str, removals: dict[str | None, list[str]]) -> Path:
    cfg = copy.deepcopy(load_original_yaml(ORIGINAL_FIXTURES / name / "config.yml"))
    for section, keys in removals.items():
        target = cfg if section is None else cfg[section]
        for key in keys:
            target.pop(key, None)
    path = tmp_path / f"{name}_reduced.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize(
    "name, section, key",
    [
        ("mini_dinov3", "DINOv3STAs", "interaction_indexes"),
        ("mini_hgnetv2", "HGNetv2", "name"),
    ],
)
def test_a_missing_key_the_weights_cannot_tell_is_an_error_naming_it(tmp_path, name, section, key):
    folder = fixture_dir(name)
    reduced = _yaml_without(tmp_path, name, {section: [key]})
    with pytest.raises(ConfigError, match=rf"{section}\.{key} is missing and the weights cannot tell it"):
        convert_original(folder / "checkpoint.pth", reduced, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_widths_and_depths_missing_from_the_yaml_are_inferred_from_the_weights(tmp_path):
    folder = fixture_dir("mini_dinov3")
    reduced = _yaml_without(
        tmp_path,
        "mini_dinov3",
        {
            None: ["num_classes", "eval_spatial_size"],
            "DINOv3STAs": ["embed_dim", "num_heads", "conv_inplane", "hidden_dim", "patch_size"],
            "HybridEncoder": [
                "hidden_dim",
                "in_channels",
                "dim_feedforward",
                "expansion",
                "depth_mult",
                "num_encoder_layers",
            ],
            "DEIMTransformer": [
                "hidden_dim",
                "num_layers",
                "num_points",
                "num_levels",
                "nhead",
                "dim_feedforward",
                "feat_channels",
                "reg_max",
                "reg_scale",
                "use_gateway",
                "share_bbox_head",
            ],
        },
    )
    result = convert_original(folder / "checkpoint.pth", reduced, weights="model")
    inferred = {s.key: s.value for s in result.settings.by_source("weights")}
    assert inferred["DINOv3STAs.embed_dim"] == 48 and inferred["DINOv3STAs.num_heads"] == 2
    assert inferred["HybridEncoder.hidden_dim"] == 64 and inferred["DEIMTransformer.num_points"] == [3, 6, 3]
    assert inferred["DEIMTransformer.nhead"] == 8 and inferred["num_classes"] == 6
    assert inferred["eval_spatial_size"] == [256, 256]
    assert_reproduces(result.model, "mini_dinov3", "model")


def test_values_the_original_code_defaults_are_reported_as_defaults(tmp_path):
    folder = fixture_dir("mini_hgnetv2")
    reduced = _yaml_without(tmp_path, "mini_hgnetv2", {"DEIMTransformer": ["num_queries", "eval_idx"]})
    result = convert_original(folder / "checkpoint.pth", reduced)
    defaults = {s.key: s.value for s in result.settings.by_source("default")}
    assert defaults["DEIMTransformer.num_queries"] == 300 and defaults["DEIMTransformer.eval_idx"] == -1
    assert result.model.config.num_queries == 300


# ----------------------------------------------------------------------------- class names


def _coco(path: Path, categories: list[dict]) -> Path:
    path.write_text(json.dumps({"images": [], "annotations": [], "categories": categories}))
    return path


def test_class_names_come_from_annotation_category_ids(tmp_path, six_classes):
    folder = fixture_dir("mini_hgnetv2")
    ann = _coco(tmp_path / "ok.json", [{"id": i, "name": n} for i, n in enumerate(six_classes)])
    result = convert_original(folder / "checkpoint.pth", folder / "config.yml", annotations=ann)
    assert result.model.class_names == six_classes
    shuffled = _coco(tmp_path / "order.json", [{"id": i, "name": six_classes[i]} for i in [1, 0, 2, 3, 4, 5]])
    with pytest.raises(DataError, match="Reorder the categories by id"):
        class_names_from_annotations(shuffled)
    one_based = _coco(tmp_path / "one.json", [{"id": i + 1, "name": n} for i, n in enumerate(six_classes)])
    with pytest.raises(DataError, match=r"must be 0..5"):
        class_names_from_annotations(one_based)
    with pytest.raises(DataError, match="but the checkpoint predicts 6 classes"):
        class_names_from_annotations(_coco(tmp_path / "three.json", [{"id": i, "name": str(i)} for i in range(3)]), 6)


def test_class_names_list_must_fit_the_checkpoint(tmp_path):
    folder = fixture_dir("mini_hgnetv2")
    with pytest.raises(ConfigError, match="3 class names given, but the checkpoint predicts 6"):
        convert_original(folder / "checkpoint.pth", folder / "config.yml", class_names=["a", "b", "c"])
    result = convert_original(folder / "checkpoint.pth", folder / "config.yml")
    assert result.model.class_names == [f"class_{i}" for i in range(6)]


def test_fixture_yaml_copied_elsewhere_still_finds_its_include(tmp_path):
    folder = fixture_dir("mini_hgnetv2")
    shutil.copytree(folder, tmp_path / "copy", ignore=shutil.ignore_patterns("*.pth", "*.pt", "*.png"))
    merged = load_original_yaml(tmp_path / "copy" / "config.yml")
    assert merged["HGNetv2"]["name"] == "Atto" and merged["HGNetv2"]["freeze_at"] == -1  # base.yml + override
