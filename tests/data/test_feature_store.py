"""The frozen-trunk store: each file's tensors carry their digest; a damaged file is named, never read as good."""

from __future__ import annotations

import json
import multiprocessing
import pickle

import pytest
import torch
from safetensors.torch import load_file

from defectfusion.data.coco import load_coco
from defectfusion.data.feature_store import (
    DamagedEntry,
    FeatureDataset,
    FeatureStore,
    MendingLoader,
    tensors_digest,
)
from defectfusion.data.transforms import FeatureCollator
from defectfusion.errors import DataError


def _maps(seed: int, channels: int = 8) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randn(channels, 12, 12, generator=generator),
        torch.randn(channels, 6, 6, generator=generator).bfloat16(),
    ]


def _header(path) -> tuple[int, dict]:
    """Where a safetensors file's data starts and its header, read here from the format's definition."""
    raw = path.read_bytes()
    length = int.from_bytes(raw[:8], "little")
    return 8 + length, json.loads(raw[8 : 8 + length])


def test_a_file_reads_back_its_tensors_and_carries_their_digest(tmp_path):
    store = FeatureStore(tmp_path, "key", {"what": "test"})
    maps = _maps(0)
    store.write("abc", maps)
    read = store.read("abc")
    assert [t.dtype for t in read] == [torch.float32, torch.bfloat16]
    assert all(torch.equal(a, b) for a, b in zip(read, maps, strict=True))
    _, header = _header(store.path("abc"))
    assert header["__metadata__"] == {"sha256": tensors_digest(maps), "levels": "2"}
    assert store.check("abc") is None
    assert sorted(p.name for p in store.folder.iterdir()) == ["abc.safetensors", "key.json"]  # no temporary left
    # the digest covers dtype and shape, not only the bytes
    assert tensors_digest([maps[0].reshape(12, 8, 12), maps[1]]) != tensors_digest(maps)


@pytest.mark.parametrize("keep", [5, 20, "header", -1])
def test_a_truncated_file_is_named_by_the_header_check_and_by_the_read(tmp_path, keep):
    store = FeatureStore(tmp_path, "key")
    store.write("abc", _maps(0))
    path = store.path("abc")
    raw = path.read_bytes()
    start, _ = _header(path)
    cut = {"header": start, -1: len(raw) - 1}.get(keep, keep)
    path.write_bytes(raw[:cut])
    damage = store.check("abc")
    assert damage is not None and damage.kind == "truncated" and "truncated" in damage.detail
    with pytest.raises(DamagedEntry, match=r"abc.safetensors is truncated") as error:
        store.read("abc")
    assert error.value.damage == damage


def test_eight_zeroed_bytes_inside_a_tensor_fail_its_digest(tmp_path):
    store = FeatureStore(tmp_path, "key")
    maps = _maps(0)
    store.write("abc", maps)
    path = store.path("abc")
    start, header = _header(path)
    begin, end = header["level1"]["data_offsets"]
    raw = bytearray(path.read_bytes())
    at = start + (begin + end) // 2
    assert any(raw[at : at + 8])  # the bytes were not zero already
    raw[at : at + 8] = bytes(8)
    path.write_bytes(bytes(raw))
    # what the store did before digests: the changed file loads without a word
    assert not torch.equal(load_file(str(path))["level1"], maps[1])
    assert store.check("abc") is None  # size and header are sound: only the digest can tell
    with pytest.raises(DamagedEntry, match="fail their SHA-256") as error:
        store.read("abc")
    assert error.value.damage.kind == "corrupt"


def test_a_missing_an_unparsable_and_a_digestless_file_are_named(tmp_path):
    store = FeatureStore(tmp_path, "key")
    assert store.check("gone").kind == "missing"
    with pytest.raises(DamagedEntry, match="gone.safetensors is missing"):
        store.read("gone")
    store.folder.mkdir(parents=True, exist_ok=True)
    store.path("junk").write_bytes(b"\x10" + bytes(7) + b"not json at all!" + bytes(64))
    assert store.check("junk").kind == "unreadable"
    with pytest.raises(DamagedEntry, match="header that is not safetensors JSON"):
        store.read("junk")
    from safetensors.torch import save_file

    save_file({"level0": torch.zeros(3)}, str(store.path("old")))  # a file of the store before digests
    assert store.check("old").kind == "unreadable" and "no digest" in store.check("old").detail


def test_a_dataset_without_a_mender_names_the_file_and_with_one_serves_a_hole_that_the_loader_fills(
    tmp_path, synth_data
):
    index = load_coco(synth_data / "val" / "annotations.json")
    store = FeatureStore(tmp_path, "key")
    digests = [f"d{i}" for i in range(len(index.images))]
    for i, digest in enumerate(digests):
        store.write(digest, _maps(i))
    store.path("d1").unlink()

    plain = FeatureDataset(index, store, digests, (96, 96))
    with pytest.raises(DataError, match="d1.safetensors is missing; delete the file"):
        plain[1]

    asked = []

    def mend(damage):
        asked.append(damage)
        return _maps(int(damage.digest[1:]))

    dataset = FeatureDataset(index, store, digests, (96, 96), mend=mend)
    maps, target = dataset[1]
    assert maps is None and target["damage"].kind == "missing"
    # a worker process gets the dataset without the mender (it holds the model) and still serves holes
    copy = pickle.loads(pickle.dumps(dataset))
    assert copy.mend is None and copy[1][0] is None and copy[0][0] is not None

    loader = dataset.loader(torch.utils.data.DataLoader(dataset, batch_size=4, collate_fn=FeatureCollator()))
    assert isinstance(loader, MendingLoader) and len(loader) == 2
    batches = list(loader)
    assert [d.digest for d in asked] == ["d1"]
    for b, batch in enumerate(batches):
        assert "trunk_maps" not in batch and "damaged" not in batch
        for level, stacked in enumerate(batch["trunk_features"]):
            expected = torch.stack([_maps(4 * b + row)[level] for row in range(4)])
            assert torch.equal(stacked, expected)


def _write_and_read(folder: str, rank: int, rounds: int, keys: int, start, errors) -> None:
    """One of two processes: write every key with this process's tensors, read every key back, repeat."""
    torch.set_num_threads(1)
    store = FeatureStore(folder, "key")
    bad = []
    start.wait()  # both begin together (importing takes seconds)
    for r in range(rounds):
        for k in range(keys):
            store.write(f"k{k}", _maps(1000 * rank + 100 * r + k, channels=64))  # 41 kB a file
        for k in range(keys):
            try:
                store.read(f"k{k}")
            except DamagedEntry as exc:
                bad.append(str(exc))
    errors.put(bad)


@pytest.mark.slow  # two fresh interpreters import torch
def test_two_processes_writing_the_same_files_at_once_leave_only_whole_ones(tmp_path):
    context = multiprocessing.get_context("spawn")
    errors, start = context.Queue(), context.Barrier(2)
    processes = [
        context.Process(target=_write_and_read, args=(str(tmp_path), rank, 15, 12, start, errors)) for rank in range(2)
    ]
    for process in processes:
        process.start()
    found = [errors.get(timeout=300) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    assert [p.exitcode for p in processes] == [0, 0]
    assert found == [[], []]  # no read of the other process's half-written file
    store = FeatureStore(tmp_path, "key")
    finals = [store.read(f"k{k}") for k in range(12)]  # every file whole, and one of the two writers'
    for k, maps in enumerate(finals):
        last = [_maps(1000 * rank + 100 * 14 + k, channels=64) for rank in range(2)]
        assert any(all(torch.equal(a, b) for a, b in zip(maps, other, strict=True)) for other in last)
    assert not [p.name for p in store.folder.iterdir() if p.name.startswith(".k")]  # no temporary left
