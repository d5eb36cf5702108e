"""evaluate_checkpoint / evaluate_predictions: the same numbers as training-time validation,
baseline comparison, what-if descriptions, undefined metrics as null, clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import DataLoader

from defectfusion.commands.evaluate import evaluate_checkpoint, evaluate_predictions
from defectfusion.commands.what_if import text_encoder_spec
from defectfusion.config import FusionConfig, ModelConfig
from defectfusion.data.coco import CocoDetection, load_coco
from defectfusion.data.descriptions import load_descriptions, resolve_pair
from defectfusion.data.transforms import DetectionCollator, build_eval_transform
from defectfusion.engine.evaluation.evaluator import DetectionEvaluator
from defectfusion.engine.evaluation.validation import run_validation
from defectfusion.errors import CheckpointError, ConfigError
from defectfusion.models.checkpoint import load_detector, save_detector
from defectfusion.models.detector import build_detector
from defectfusion.models.text import TextEmbeddings, write_embeddings_file
from tests.helpers import check_html, without_class


def test_evaluate_gives_the_numbers_of_training_time_validation(kit):
    model = load_detector(kit.fused)
    index = load_coco(kit.val_ann)
    loader = DataLoader(
        CocoDetection(index, build_eval_transform(model.meta.image_size)),
        batch_size=4,
        collate_fn=DetectionCollator(model.meta.image_mean, model.meta.image_std),
    )
    expected = run_validation(model, loader, DetectionEvaluator(index.to_coco_dict()), torch.device("cpu"))
    result = evaluate_checkpoint(kit.fused, kit.val_ann, progress=False)
    got = result.metrics
    assert got.num_images == 8 and got.num_detections == expected.num_detections == 8 * 30 * 6  # Q x C
    assert got.confusion_matrix["counts"] == expected.confusion_matrix["counts"]
    for name, entry in expected.per_class.items():
        for key in ("ap50", "ap", "precision", "recall", "f1", "conf"):
            assert getattr(got.per_class[name], key) == pytest.approx(getattr(entry, key), abs=1e-6)
    assert result.out is None and result.files == []


def test_baseline_comparison_pair_and_report(kit, tmp_path):
    result = evaluate_checkpoint(
        kit.fused, kit.val_ann, baseline=kit.baseline, out=tmp_path / "ev", grid=3, progress=False
    )
    out = tmp_path / "ev"
    metrics = json.loads((out / "metrics.json").read_text())
    baseline = json.loads((out / "baseline_metrics.json").read_text())
    assert metrics == json.loads(json.dumps(result.metrics.to_dict())) and baseline["num_images"] == 8
    comparison = json.loads((out / "comparison.json").read_text())
    assert comparison["labels"] == ["baseline", "fused"]
    rows = {r["class"]: r for r in comparison["rows"]}
    assert set(rows) == {*result.class_names, "all classes (mAP)"}
    for name in result.class_names:
        r = rows[name]
        assert r["ap50_baseline"] == baseline["per_class"][name]["ap50"]
        assert r["ap50_fused"] == metrics["per_class"][name]["ap50"]
        assert r["ap50_delta_fused"] == pytest.approx(r["ap50_fused"] - r["ap50_baseline"])
    a, b = "ROTURA_FRACTURA", "RAYONES_ARANAZOS"
    labels = metrics["confusion_matrix"]["labels"]
    pair = comparison["pair"]
    assert (pair["a"], pair["b"]) == (a, b)
    assert pair["a_as_b"]["after"] == metrics["confusion_matrix"]["counts"][labels.index(a)][labels.index(b)]
    assert pair["a_as_b"]["before"] == baseline["confusion_matrix"]["counts"][labels.index(a)][labels.index(b)]
    # the report: every figure inside the HTML, the md links real files
    parsed = check_html(result.report_html)
    plots = {p.name for p in (out / "plots").glob("*.png")}
    assert {
        "ap_bars.png",
        "confusion_matrix.png",
        "confusion_matrix_normalized.png",
        "pr_curves.png",
        "predictions.png",
        "confusion_matrix_normalized_baseline.png",
    } <= plots
    assert len(parsed.images) == len(plots)
    md = result.report_md.read_text()
    assert "Comparison with the baseline" in md and f"{a} called {b}" in md
    assert "Training curves" not in md  # the checkpoint is not inside a run folder


def test_any_pair_can_be_named_and_is_checked(kit):
    names = load_detector(kit.baseline).class_names
    assert resolve_pair(None, names, ["defects6"]) == ("ROTURA_FRACTURA", "RAYONES_ARANAZOS")
    assert resolve_pair(None, names) is None  # no descriptions: no pair
    assert resolve_pair(None, ["a", "b"], ["defects6"]) is None  # the described pair is not among the classes
    assert resolve_pair(["NORMAL", "CONTAMINACION"], names) == ("NORMAL", "CONTAMINACION")
    with pytest.raises(ConfigError, match="unknown class 'ROTURA'.*Did you mean 'ROTURA_FRACTURA'"):
        resolve_pair(["ROTURA", "NORMAL"], names)
    with pytest.raises(ConfigError, match="two different class names"):
        resolve_pair(["NORMAL", "NORMAL"], names)


def test_what_if_descriptions_swap_the_text_without_retraining(kit, tmp_path):
    files = ["defects6", str(kit.other_descriptions)]
    result = evaluate_checkpoint(
        kit.fused, kit.val_ann, descriptions=files, cache_dir=kit.cache_dir, out=tmp_path / "wi", grid=0, progress=False
    )
    rows = result.what_if_rows()
    assert [r["descriptions"] for r in rows] == ["defects6", "reworded"]
    # the file the model was trained with reproduces the model exactly ...
    assert result.what_if[0].metrics == result.metrics and rows[0]["map50_delta"] == 0
    # ... other wording changes what the fused head predicts
    assert result.what_if[1].metrics.confusion_matrix != result.metrics.confusion_matrix
    saved = json.loads((tmp_path / "wi" / "what_if.json").read_text())
    assert len(saved["rows"]) == 2 and saved["pair"] == ["ROTURA_FRACTURA", "RAYONES_ARANAZOS"]
    assert {"ap50_ROTURA_FRACTURA", "ROTURA_FRACTURA_as_RAYONES_ARANAZOS"} <= set(saved["rows"][1])
    assert (tmp_path / "wi" / "what_if" / "reworded.json").is_file()
    md = result.report_md.read_text()
    assert "What-if descriptions" in md and "as trained" in md and "reworded" in md
    check_html(result.report_html)


def test_the_encoder_the_model_was_trained_with_is_remembered(kit):
    model = load_detector(kit.fused)
    assert model.meta.fusion.encoder_spec == kit.encoder  # saved in the checkpoint at build time
    assert text_encoder_spec(model) == kit.encoder
    assert text_encoder_spec(model, "sentence:minilm") == "sentence:minilm"
    model.meta.fusion.encoder_spec = None
    model.meta.fusion.encoder = "clip:hub:openai/clip-vit-base-patch32"
    assert text_encoder_spec(model) == "clip:openai/clip-vit-base-patch32"
    model.meta.fusion.encoder = "clip:local:tiny:0123456789abcdef"
    with pytest.raises(ConfigError, match="give the encoder spec"):
        text_encoder_spec(model)


def test_what_if_errors(kit, tmp_path):
    with pytest.raises(ConfigError, match="has no text-fusion head.*to evaluate other descriptions"):
        evaluate_checkpoint(kit.baseline, kit.val_ann, descriptions=["defects6"], progress=False)
    # an encoder of another width
    names = load_detector(kit.fused).class_names
    desc = load_descriptions("defects6").ordered_like(names)
    prompts = desc.prompts()
    flat = sum(prompts, [])
    emb = TextEmbeddings(
        names,
        prompts,
        torch.nn.functional.normalize(torch.randn(len(flat), 8), dim=-1),
        torch.nn.functional.normalize(torch.randn(len(names), 8), dim=-1),
        "file:other",
    )
    other = write_embeddings_file(emb, tmp_path / "other.safetensors")
    with pytest.raises(ConfigError, match="gives 8-dimensional embeddings.*trained on 24-dimensional"):
        evaluate_checkpoint(kit.fused, kit.val_ann, descriptions=["defects6"], encoder=f"file:{other}", progress=False)
    # descriptions of other classes
    bad = tmp_path / "bad.yml"
    bad.write_text("classes:\n  - name: CRACK\n    description: a crack\n")
    with pytest.raises(ConfigError, match="does not match the dataset's categories"):
        evaluate_checkpoint(kit.fused, kit.val_ann, descriptions=[str(bad)], progress=False)
    # the random-text control
    control = build_detector(
        ModelConfig(preset="hgnetv2_micro", image_size=[96, 96]),
        names,
        FusionConfig(text="random", encoder=kit.encoder),
        torch.zeros(6, 24),
    )
    save_detector(control, tmp_path / "control")
    with pytest.raises(ConfigError, match="random-text control"):
        evaluate_checkpoint(tmp_path / "control", kit.val_ann, descriptions=["defects6"], progress=False)


def test_a_checkpoint_of_other_classes_is_refused(kit, tmp_path):
    other = build_detector(ModelConfig(preset="hgnetv2_micro", image_size=[96, 96]), ["a", "b"])
    save_detector(other, tmp_path / "other")
    with pytest.raises(CheckpointError, match=r"predicts the classes \['a', 'b'\].*same names, same order"):
        evaluate_checkpoint(tmp_path / "other", kit.val_ann, progress=False)
    with pytest.raises(CheckpointError, match="baseline"):
        evaluate_checkpoint(kit.fused, kit.val_ann, baseline=tmp_path / "other", progress=False)


def test_absent_classes_empty_images_and_a_silent_model_give_nulls_not_crashes(kit, tmp_path):
    ann = without_class(kit.val_ann, "PERFORACIONES", tmp_path / "ann.json")
    result = evaluate_checkpoint(
        kit.silent, ann, kit.val_images, baseline=kit.fused, out=tmp_path / "ev", grid=2, progress=False
    )
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    perf = saved["per_class"]["PERFORACIONES"]
    assert perf["ap50"] is None and perf["ap"] is None and perf["num_gt"] == 0
    assert saved["per_class"]["NORMAL"]["ap50"] == 0.0  # GT present, nothing found: 0, not null
    row = saved["confusion_matrix"]["normalized"][saved["confusion_matrix"]["labels"].index("PERFORACIONES")]
    assert row == [None] * 7
    comparison = json.loads((tmp_path / "ev" / "comparison.json").read_text())
    perf_row = next(r for r in comparison["rows"] if r["class"] == "PERFORACIONES")
    assert perf_row["ap50_delta_model"] is None
    assert "PERFORACIONES" in result.report_md.read_text().split("undefined")[1].splitlines()[0]
    check_html(result.report_html)

    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    nothing = evaluate_predictions(empty, ann, out=tmp_path / "none", grid=2)
    m = nothing.metrics
    assert m.num_detections == 0 and m.map50 == 0.0
    assert m.per_class["NORMAL"].precision is None  # no predictions: precision undefined
    assert m.ap50_of("PERFORACIONES") is None
    check_html(nothing.report_html)


def test_what_if_warns_when_the_stored_text_embeddings_drifted(kit, tmp_path):
    model = load_detector(kit.fused)
    with torch.no_grad():
        list(model.fusion_heads())[1].text_embeddings.mul_(3.0)  # what a faulty average of buffers leaves
    save_detector(model, tmp_path / "drifted")
    with pytest.warns(UserWarning, match=r"not the unit vectors they were built with \(norms 1.000..3.000"):
        result = evaluate_checkpoint(
            tmp_path / "drifted", kit.val_ann, descriptions=["defects6"], out=tmp_path / "ev", grid=0, progress=False
        )
    assert len(result.notes) == 1 and "## Notes" in result.report_md.read_text()


def test_scores_on_the_images_that_selected_the_model_say_so(kit, tmp_path):
    from tests.helpers import make_run_folder

    run = make_run_folder(tmp_path, kit)
    own = evaluate_checkpoint(run / "final", kit.val_ann, progress=False)
    assert all(label.endswith("[selected on these images: optimistic]") for label in own.labels)
    other = evaluate_checkpoint(kit.fused, kit.val_ann, progress=False)  # not in a run folder
    assert other.labels == ("baseline", "fused")
