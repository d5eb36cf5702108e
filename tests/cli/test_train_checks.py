"""`defectfusion train` checks every input before training, and a resume may change speed settings only."""

from __future__ import annotations

import time

from defectfusion.cli import main
from defectfusion.config import dump_config, load_config
from defectfusion.engine.training.progressive import TrainingRun
from tests.helpers import write_train_config


def _typo(tmp_path, synth_data):
    text = (synth_data / "descriptions.yml").read_text().replace("name: PERFORACIONES", "name: PERFORACIONESS")
    (tmp_path / "typo.yml").write_text(text)
    return tmp_path / "typo.yml"


def test_train_names_a_misspelt_class_in_one_line_before_training(tmp_path, synth_data, capsys):
    cfg = write_train_config(
        tmp_path / "cfg.yml",
        synth_data,
        order=["baseline", "phase1"],
        fusion={"descriptions": str(_typo(tmp_path, synth_data))},
    )
    started = time.monotonic()
    code = main(["train", str(cfg), "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert time.monotonic() - started < 15 and code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {cfg}: fusion.descriptions: {tmp_path / 'typo.yml'}")
    assert "described classes not in the dataset: PERFORACIONESS" in lines[0]
    assert not (tmp_path / "run").exists()  # the baseline phase, which needs no text, did not train either


def test_train_lists_every_problem_at_once(tmp_path, synth_data, capsys):
    cfg = write_train_config(
        tmp_path / "cfg.yml",
        synth_data,
        order=["baseline", "phase1"],
        fusion={"descriptions": str(_typo(tmp_path, synth_data))},
        data={"val": {"annotations": str(tmp_path / "val.json")}},
    )
    code = main(["train", str(cfg), "--out", str(tmp_path / "run"), "--quiet", "-o", "data.confusable_pair=[NORMAL,X]"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and lines[0] == f"error: {cfg}: 3 problems, nothing was trained; fix them all:"
    assert lines[1].startswith(f"  - data.val: annotations file {tmp_path / 'val.json'} does not exist")
    assert lines[2].startswith("  - fusion.descriptions: ") and "PERFORACIONESS" in lines[2]
    assert lines[3].startswith("  - data.confusable_pair of the run's config: unknown class 'X'")


def test_a_resume_refuses_another_setting_naming_it_and_the_command_that_resumes(tmp_path, synth_data, capsys):
    cfg = write_train_config(tmp_path / "cfg.yml", synth_data, order=["baseline"])
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(dump_config(load_config(cfg)))
    code = main(["train", str(cfg), "--out", str(run), "--resume", "--quiet", "-o", "train.warmup_steps=9"])
    err = capsys.readouterr().err
    assert code == 2 and "train.warmup_steps (saved 2, given 9)" in err
    assert f"`defectfusion train --resume --out {run}`" in err and "train.threads, data.num_workers" in err
    assert not (run / "summary.json").exists()


def test_a_resume_may_change_threads_and_workers_and_keeps_them(tmp_path, synth_data):
    cfg = write_train_config(tmp_path / "cfg.yml", synth_data, order=["baseline"])
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(dump_config(load_config(cfg)))
    faster = load_config(cfg, ["train.threads=2", "data.num_workers=1"])
    TrainingRun(faster, run, resume=True, progress=False)._prepare_folder()
    saved = load_config(run / "config.yaml")
    assert saved.train.threads == 2 and saved.data.num_workers == 1


def test_a_wrong_annotations_path_then_the_corrected_command_into_the_same_out_runs(tmp_path, synth_data, capsys):
    out = str(tmp_path / "run")
    wrong = write_train_config(
        tmp_path / "wrong.yml", synth_data, order=["baseline"], data={"val": {"annotations": str(tmp_path / "no.json")}}
    )
    assert main(["train", str(wrong), "--out", out, "--quiet"]) == 2
    assert "no.json" in capsys.readouterr().err
    right = write_train_config(tmp_path / "right.yml", synth_data, order=["baseline"])
    assert main(["train", str(right), "--out", out, "--quiet"]) == 0
    assert (tmp_path / "run" / "final" / "config.json").is_file()
