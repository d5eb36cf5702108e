import json
import os
import sys

import pytest

from defectfusion.errors import DataError
from defectfusion.io import atomic_path, atomic_write_bytes, atomic_write_json, read_json


def test_atomic_write_json_round_trip_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "a.json"
    atomic_write_json(path, {"x": [1, 2.5, "é"]})
    assert read_json(path) == {"x": [1, 2.5, "é"]}
    assert os.listdir(path.parent) == ["a.json"]


def test_read_json_says_what_is_wrong_and_where(tmp_path):
    path = tmp_path / "res.json"
    with pytest.raises(DataError, match=r"results file .*res.json does not exist"):
        read_json(path, "results file")

    path.write_text(json.dumps([{"a": 1}, {"b": 2}])[:-5])
    with pytest.raises(DataError, match="res.json is not valid JSON.*truncated"):
        read_json(path, "results file")

    path.write_text('{"a": 1,\n "b": }')
    with pytest.raises(DataError, match=r"line 2, column 7.*fix the syntax"):
        read_json(path)

    path.write_bytes(b"\xff\xfe{}")
    with pytest.raises(DataError, match="not UTF-8 text"):
        read_json(path)

    path.write_bytes(b"\xef\xbb\xbf[1]")  # a byte-order mark written by some editors is fine
    assert read_json(path) == [1]

    with pytest.raises(DataError, match="cannot read"):
        read_json(tmp_path, "annotations file")  # a folder


def test_read_jsonl_skips_a_torn_last_line_and_names_a_corrupt_one(tmp_path):
    from defectfusion.io import append_line, read_jsonl

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 0}\n{"epoch": 1}\n{"epo')
    assert read_jsonl(path) == [{"epoch": 0}, {"epoch": 1}]
    append_line(path, '{"epoch": 2}')  # the torn fragment gets its own line; the new record stays whole
    with pytest.raises(DataError, match=r"metrics.jsonl, line 3: not valid JSON"):
        read_jsonl(path)
    path.write_text('{"epoch": 0}\nnot json\n{"epoch": 2}\n')
    with pytest.raises(DataError, match=r"metrics.jsonl, line 2: not valid JSON.*fix or delete that line"):
        read_jsonl(path)
    path.write_text('{"epoch": 0}\n[1, 2]\n')
    with pytest.raises(DataError, match="line 2: expected a JSON object, got list"):
        read_jsonl(path)
    path.write_text('{"epoch": 0}\n{"epoch": 1}')  # complete, only the newline missing
    assert read_jsonl(path) == [{"epoch": 0}, {"epoch": 1}]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="names an open file through /proc")
def test_an_atomic_write_reaches_the_disk_before_its_rename_and_the_folder_after(tmp_path, monkeypatch):
    events = []
    fsync, replace = os.fsync, os.replace

    def recording_fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def recording_replace(src, dst):
        events.append(("replace", str(dst)))
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    target = tmp_path / "sub" / "a.bin"
    atomic_write_bytes(target, b"data")
    assert [kind for kind, _ in events] == ["fsync", "replace", "fsync"]
    assert os.path.dirname(events[0][1]) == str(target.parent) and events[0][1] != str(target)  # the temporary
    assert events[1:] == [("replace", str(target)), ("fsync", str(target.parent))]

    events.clear()  # a writer that only gets the path (safetensors, torch.save) is flushed all the same
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"other")
    assert [kind for kind, _ in events] == ["fsync", "replace", "fsync"] and target.read_bytes() == b"other"
