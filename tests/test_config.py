import pytest

from defectfusion.config import apply_overrides, dump_config, load_config, load_raw, parse_override
from defectfusion.errors import ConfigError


def test_defaults_are_the_seed_choices():
    cfg = load_config()
    assert cfg.fusion.encoder == "clip:openai/clip-vit-base-patch32"
    assert cfg.fusion.gate_init == 0.0 and cfg.model.semantics == "original"


def test_include_chain_merges_in_order_with_paths_relative_to_each_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "base.yml").write_text(
        "model: {preset: dinov3_s, checkpoint: ckpt}\nfusion: {temperature: 0.1}\n"
    )
    (tmp_path / "sub" / "ckpt").mkdir()
    (tmp_path / "mid.yml").write_text("include: [sub/base.yml]\nfusion: {temperature: 0.2, descriptions: d.yml}\n")
    (tmp_path / "top.yml").write_text("include: [mid.yml]\nmodel: {preset: dinov3_m}\n")
    cfg = load_config(tmp_path / "top.yml")
    assert cfg.model.preset == "dinov3_m"  # the including file wins
    assert cfg.fusion.temperature == 0.2  # later include wins over earlier
    assert cfg.model.checkpoint == str((tmp_path / "sub" / "ckpt").resolve())  # relative to base.yml
    assert cfg.fusion.descriptions == str((tmp_path / "d.yml").resolve())


def test_overrides_are_typed_yaml():
    assert parse_override("fusion.temperature=0.05") == (["fusion", "temperature"], 0.05)
    assert parse_override("model.image_size=[320, 320]") == (["model", "image_size"], [320, 320])
    data = apply_overrides({}, ["model.preset=dinov3_s", "fusion.enabled=false"])
    assert data == {"model": {"preset": "dinov3_s"}, "fusion": {"enabled": False}}
    cfg = load_config(None, ["model.image_size=[320, 320]"])
    assert cfg.model.image_size == (320, 320)


def test_unknown_keys_get_a_did_you_mean(tmp_path):
    path = tmp_path / "c.yml"
    path.write_text("fusion: {temprature: 0.1}\n")
    with pytest.raises(ConfigError, match=r"unknown key 'fusion.temprature'.*Similar keys: temperature"):
        load_config(path)
    with pytest.raises(ConfigError, match="unknown key 'modle'"):
        load_config(None, ["modle.preset=x"])


def test_bad_values_and_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="'fusion.text'"):
        load_config(None, ["fusion.text=words"])
    bad = tmp_path / "bad.yml"
    bad.write_text("model: {preset: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML at line"):
        load_config(bad)
    cyc = tmp_path / "a.yml"
    cyc.write_text("include: [a.yml]\n")
    with pytest.raises(ConfigError, match="include cycle"):
        load_raw(cyc)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yml")
    with pytest.raises(ConfigError, match="key.subkey=value"):
        parse_override("novalue")


def test_dump_round_trips(tmp_path):
    cfg = load_config(None, ["fusion.temperature=0.05", "name=x"])
    path = tmp_path / "resolved.yml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


def test_null_removes_an_included_mapping(tmp_path):
    (tmp_path / "top.yml").write_text(
        "include: [progressive.yml]\ngates: {phase1: null}\n".replace(
            "progressive.yml",
            str(__import__("defectfusion.config", fromlist=["x"]).packaged_config_path("progressive")),
        )
    )
    cfg = load_config(tmp_path / "top.yml")
    assert "phase1" not in cfg.gates and "phase2" in cfg.gates


def test_relative_paths_in_overrides_mean_the_working_directory(tmp_path, monkeypatch):
    from defectfusion.config import dump_config, load_config

    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["data.train.annotations=data/train/annotations.json", "fusion.descriptions=defects6"])
    assert cfg.data.train.annotations == str(tmp_path / "data" / "train" / "annotations.json")
    assert cfg.fusion.descriptions == "defects6"  # a packaged name stays a name
    # so a config dumped elsewhere and read back names the same files
    (tmp_path / "deep" / "er").mkdir(parents=True)
    (tmp_path / "deep" / "er" / "c.yaml").write_text(dump_config(cfg))
    assert load_config(tmp_path / "deep" / "er" / "c.yaml").data.train.annotations == cfg.data.train.annotations


def test_the_packaged_progressive_configs_offer_absolute_and_relative_gates():
    absolute, relative = load_config("progressive"), load_config("progressive_relative")
    assert absolute.phases == relative.phases and absolute.order == relative.order
    assert absolute.gates["phase1"].min == 0.80 and not absolute.gates["phase1"].relative_to_baseline
    for name in ("phase1", "phase2"):
        gate = relative.gates[name]
        assert gate.relative_to_baseline and gate.value == "last" and gate.min == -0.02
    # the plan's "stop at 0.82" for a 0.785 baseline, as a gain
    assert relative.gates["phase2"].max == 0.035


def test_a_packaged_config_can_be_included_by_name_and_a_file_beside_wins(tmp_path):
    (tmp_path / "mine.yml").write_text("include: [progressive_relative]\nname: mine\n")
    cfg = load_config(tmp_path / "mine.yml")
    assert cfg.name == "mine" and cfg.gates["phase1"].relative_to_baseline
    (tmp_path / "also.yml").write_text("include: [progressive_relative.yml]\n")
    assert load_config(tmp_path / "also.yml").gates["phase1"].relative_to_baseline
    # a file of that very name beside the config is what it means
    (tmp_path / "progressive_relative.yml").write_text("name: local\n")
    assert load_config(tmp_path / "also.yml").gates == {}
    (tmp_path / "typo.yml").write_text("include: [progresive_relative]\n")
    with pytest.raises(ConfigError, match="not found .*did you mean the packaged progressive_relative"):
        load_config(tmp_path / "typo.yml")
