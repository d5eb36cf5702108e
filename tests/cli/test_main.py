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
