"""`defectfusion train` on malformed datasets: one readable line and exit 2, or one warning and training."""

import json
import shutil

import pytest

from defectfusion.cli import main
from tests.helpers import write_train_config


@pytest.fixture
def dataset(tmp_path, synth_data):
    """A writable copy of the synthetic dataset with 8 training images."""
    root = tmp_path / "data"
    shutil.copytree(synth_data, root)
    ann = json.loads((root / "train" / "annotations.json").read_text())
    keep = {img["id"] for img in ann["images"][:8]}
    ann["images"] = [img for img in ann["images"] if img["id"] in keep]
    ann["annotations"] = [a for a in ann["annotations"] if a["image_id"] in keep]
    (root / "train" / "annotations.json").write_text(json.dumps(ann))
    return root


def _train(tmp_path, dataset, capsys):
    cfg = write_train_config(tmp_path / "cfg.yml", dataset, order=["baseline"])
    code = main(["train", str(cfg), "--out", str(tmp_path / "run"), "--quiet"])
    captured = capsys.readouterr()
    return code, captured.err


def _edit(dataset, edit):
    path = dataset / "train" / "annotations.json"
    ann = json.loads(path.read_text())
    edit(ann)
    path.write_text(json.dumps(ann))
    return path


def _one_error_line(err):
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_truncated_json(tmp_path, dataset, capsys):
    path = dataset / "train" / "annotations.json"
    path.write_text(path.read_text()[:200])
    code, err = _train(tmp_path, dataset, capsys)
    line = _one_error_line(err)
    assert code == 2 and str(path) in line


def test_missing_images_are_all_listed(tmp_path, dataset, capsys):
    images = sorted((dataset / "train" / "images").iterdir())
    for image in images[:3]:
        image.unlink()
    code, err = _train(tmp_path, dataset, capsys)
    line = _one_error_line(err)
    assert code == 2 and all(image.name in line for image in images[:3])


def test_unknown_category_id(tmp_path, dataset, capsys):
    def edit(ann):
        ann["annotations"][0]["category_id"] = 42

    _edit(dataset, edit)
    code, err = _train(tmp_path, dataset, capsys)
    line = _one_error_line(err)
    assert code == 2 and "42" in line and "annotations.json" in line


def test_corrupt_image_is_named(tmp_path, dataset, capsys):
    image = sorted((dataset / "train" / "images").iterdir())[2]
    image.write_bytes(image.read_bytes()[:100])
    code, err = _train(tmp_path, dataset, capsys)
    line = _one_error_line(err)
    assert code == 2 and image.name in line


def test_degenerate_and_outside_boxes_warn_once_and_train(tmp_path, dataset, capsys):
    def edit(ann):
        ann["annotations"][0]["bbox"] = [10, 10, 0, 5]  # zero width: dropped
        ann["annotations"][1]["bbox"] = [-20, 30, 50, 20]  # starts left of the image: clipped
        ann["annotations"][2]["bbox"] = [80, 80, 40, 40]  # runs past the corner: clipped

    _edit(dataset, edit)
    code, err = _train(tmp_path, dataset, capsys)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    box_warnings = [w for w in warnings if "box" in w]
    assert len(box_warnings) == 1, warnings
    assert "1" in box_warnings[0] and "2" in box_warnings[0]
    assert (tmp_path / "run" / "summary.json").is_file()


def test_missing_data_section_says_how_to_fix(tmp_path, capsys):
    code = main(["train", "baseline", "--out", str(tmp_path / "run"), "--quiet"])
    line = _one_error_line(capsys.readouterr().err)
    assert code == 2 and "data.train" in line and "-o data.train.annotations=" in line


def test_the_end_of_train_prints_the_final_model_per_class(tmp_path, dataset, capsys):
    cfg = write_train_config(tmp_path / "cfg.yml", dataset, order=["baseline"])
    assert main(["train", str(cfg), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "the final model per class" in out
    names = [c["name"] for c in json.loads((dataset / "val" / "annotations.json").read_text())["categories"]]
    assert all(name in out for name in names) and "val AP@0.5" in out


def test_the_packaged_from_scratch_recipe_with_shorthand_flags(tmp_path, dataset, capsys):
    import yaml

    argv = [
        "train", "scratch_cpu", "--out", str(tmp_path / "run"), "--quiet",
        "-o", f"data.train.annotations={dataset / 'train' / 'annotations.json'}",
        "-o", f"data.val.annotations={dataset / 'val' / 'annotations.json'}",
        "--epochs", "1", "--image-size", "96", "--batch-size", "4", "--threads", "1", "--workers", "0",
        "--device", "cpu",
    ]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    resolved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert resolved["name"] == "scratch_cpu" and resolved["model"]["preset"] == "dinov3_demo"
    assert resolved["phases"]["baseline"]["epochs"] == 1 and resolved["model"]["image_size"] == [96, 96]
    assert resolved["data"]["batch_size"] == 4 and resolved["data"]["num_workers"] == 0
    assert resolved["train"]["threads"] == 1 and resolved["train"]["device"] == "cpu"
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
    assert "the final model per class" in capsys.readouterr().out


def test_shorthand_flags_are_checked(tmp_path, dataset, capsys):
    cfg = write_train_config(tmp_path / "cfg.yml", dataset, order=["baseline"])
    assert main(["train", str(cfg), "--out", str(tmp_path / "r"), "--epochs", "0"]) == 2
    assert "--epochs must be at least 1" in capsys.readouterr().err


def test_phase_n_on_a_run_folder_needs_the_previous_phase_finished(tmp_path, dataset, capsys):
    cfg = write_train_config(tmp_path / "cfg.yml", dataset, order=["baseline"])
    run = tmp_path / "run"
    (run / "start").mkdir(parents=True)
    (run / "config.yaml").write_text((tmp_path / "cfg.yml").read_text())
    (run / "start" / "metrics.json").write_text("{}")  # the run evaluated its start: it started
    assert main(["train", "--out", str(run), "--phase", "phase2", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "'phase2' continues from 'phase1', which has not finished" in err and "--phase phase1" in err
    assert main(["train", str(cfg), "--out", str(run), "--quiet"]) == 2
    assert "--phase N" in capsys.readouterr().err


def test_a_run_stopped_by_a_gate_goes_on_with_the_printed_command(tmp_path, synth_data, capsys):
    import shlex

    from safetensors.torch import load_file

    from defectfusion.io import read_jsonl

    gate = {"metric": "map50", "value": "best", "min": 0.99}  # unreachable: the run stops after phase 1
    cfg = write_train_config(tmp_path / "cfg.yml", synth_data, order=["baseline", "phase1", "phase2"],
                             gates={"phase1": gate, "phase2": None})  # fmt: skip
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(run), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "stopped at the gate after phase1" in printed and not (run / "phase2").exists()
    command = next(line for line in printed.splitlines() if "to go on anyway" in line).split(": ", 1)[1]
    argv = shlex.split(command)
    assert argv == ["defectfusion", "train", "--out", str(run), "--phase", "phase2"]
    assert main([*argv[1:], "--quiet"]) == 0  # the printed command, as a user would paste it

    summary = json.loads((run / "summary.json").read_text())
    [decision] = [g for g in summary["gates"] if g["after"] == "phase1"]
    assert decision["proceed"] and decision["overridden"]["gate_said"].startswith("map50")
    assert "phase2" in summary["phases"] and (run / "phase2" / "best" / "model.safetensors").is_file()
    # phase 2 started from phase 1's best: its gate-free start evaluation scores what phase 1's best scored
    first = read_jsonl(run / "phase2" / "metrics.jsonl")[0]
    assert first["epoch"] == 0 and first["map50"] == summary["phases"]["phase1"]["best_map50"]
    phase1_best = load_file(str(run / "phase1" / "best" / "model.safetensors"))
    assert phase1_best  # the checkpoint phase 2 started from is still there
    assert summary["start_model"] == "random initialisation" and summary["final"] is not None
