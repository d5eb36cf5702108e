from defectfusion.cli import main
from defectfusion.models.text import read_embeddings_file


def test_encode_text_writes_embeddings_and_prints_the_similarity_table(tmp_path, capsys):
    out = tmp_path / "emb.safetensors"
    code = main(
        [
            "encode-text",
            "--descriptions",
            "defects6",
            "--encoder",
            "sentence:minilm",
            "--out",
            str(out),
            "--cache-dir",
            str(tmp_path / "cache"),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "ROTURA_FRACTURA" in printed and "RAYONES_ARANAZOS" in printed and "1.000" in printed
    emb = read_embeddings_file(out)
    assert emb.class_embeddings.shape == (6, 384)


def test_user_errors_are_one_line_without_traceback(tmp_path, capsys):
    code = main(
        [
            "encode-text",
            "--descriptions",
            str(tmp_path / "missing.yml"),
            "--encoder",
            "sentence:minilm",
            "--out",
            str(tmp_path / "e.safetensors"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and "missing.yml" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "e.safetensors").exists()


def test_threads_hold_a_computing_command_to_n_cores(tmp_path, monkeypatch, capsys):
    import torch

    from defectfusion.cli import main

    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    none, image = str(tmp_path / "none"), str(tmp_path / "a.png")
    commands = (
        ["predict", "--checkpoint", none, image],
        ["data", "check", none + ".json"],
        ["explain", "--checkpoint", none, image],
        ["evaluate", "--checkpoint", none, "--data", none + ".json"],
    )
    for command in commands:
        main([*command, "--threads", "1"])  # the inputs are bad: the command stops, its threads were set
    assert calls == [1, 1, 1, 1]
    assert main(["predict", "--checkpoint", str(tmp_path / "none"), str(tmp_path / "a.png"), "--threads", "0"]) == 2
    assert "--threads must be at least 1, got 0" in capsys.readouterr().err
