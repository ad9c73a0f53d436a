"""The .gmem format: round trip, validation of damaged or foreign files, atomic writes."""

import json

import pytest
import torch
from safetensors.torch import save_file

from gradmem_cli.memory import memfile
from gradmem_cli.errors import GradmemError


def _header(segments=2, m=3, d=4, **over):
    fields = dict(
        gradmem_version="0.1.0", created_at="2026-01-01T00:00:00+00:00", model_id="tiny",
        model_fingerprint={"config": "c", "tokenizer": "t", "embedding": [0.0, 1.0, 2.0]},
        tokenizer_fingerprint="t", model_shape={"layers": 2, "kv_heads": 2, "head_dim": 16, "hidden": d},
        hidden_size=d, dtype="float32", mem_tokens=m, segment_tokens=64, tokens_per_segment=[10] * segments,
        prefix_ids=[], write={"lr": 0.1}, steps=[5] * segments, kept_step=[5] * segments,
        final_loss=[0.1] * segments, accuracy=[1.0] * segments,
        source={"name": "a.txt", "sha256": "0" * 64, "bytes": 40, "tokens": 10 * segments},
        torch_version="x", transformers_version="y",
    )
    fields.update(over)
    return memfile.MemoryHeader(**fields)


def test_round_trip(tmp_path):
    mem = torch.randn(2, 3, 4)
    path = tmp_path / "a.gmem"
    size = memfile.save(path, mem, _header())
    assert size == path.stat().st_size
    loaded = memfile.load(path)
    assert torch.equal(loaded.memory, mem)
    assert loaded.header == _header()
    assert [p.name for p in tmp_path.iterdir()] == ["a.gmem"]  # no temporary file left


def test_metadata_is_strings_with_json(tmp_path):
    from safetensors import safe_open

    path = tmp_path / "a.gmem"
    memfile.save(path, torch.zeros(2, 3, 4), _header())
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    assert meta["format"] == "gradmem.memory" and meta["format_version"] == "2.0"
    assert meta["model_id"] == "tiny"
    assert json.loads(meta["tokens_per_segment"]) == [10, 10]


def test_truncated_and_garbage(tmp_path):
    path = tmp_path / "a.gmem"
    memfile.save(path, torch.zeros(2, 3, 4), _header())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(GradmemError, match="corrupt or truncated"):
        memfile.load(path)
    path.write_bytes(b"this is not safetensors at all")
    with pytest.raises(GradmemError, match="not a valid .gmem"):
        memfile.load(path)


def test_foreign_safetensors(tmp_path):
    path = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(GradmemError, match="not a gradmem memory"):
        memfile.load(path)


def test_newer_major_version_refused(tmp_path):
    path = tmp_path / "a.gmem"
    memfile.save(path, torch.zeros(2, 3, 4), _header(format_version="3.0"))
    with pytest.raises(GradmemError, match="format 3.0.*reads 1.x and 2.x.*upgrade gradmem"):
        memfile.load(path)


def test_minor_version_and_unknown_fields_accepted(tmp_path):
    path = tmp_path / "a.gmem"
    memfile.save(path, torch.zeros(2, 3, 4), _header(format_version="2.7"))
    assert memfile.load(path).header.format_version == "2.7"


def test_format_1_files_read_as_embedding_memory(tmp_path):
    """A 1.0 file (no 'space' field) reads as an embedding memory; one claiming another space is corrupt."""
    path = tmp_path / "old.gmem"
    meta = {k: v for k, v in _header(format_version="1.0").to_metadata().items() if k != "space"}
    save_file({"memory": torch.zeros(2, 3, 4)}, str(path), metadata=meta)
    assert memfile.load(path).header.space == "embed"
    save_file({"memory": torch.zeros(2, 3, 4)}, str(path), metadata={**meta, "space": "kv"})
    with pytest.raises(GradmemError, match="1.x file holds embedding memory only"):
        memfile.load(path)


def test_kv_memory_shape_follows_the_model_shape(tmp_path):
    """A kv slot holds keys and values for every layer and KV head: layers x 2 x kv_heads x head_dim numbers."""
    path = tmp_path / "kv.gmem"
    header = _header(space="kv", model_shape={"layers": 2, "kv_heads": 2, "head_dim": 3, "hidden": 4})
    memfile.save(path, torch.zeros(2, 3, 24), header)
    assert memfile.load(path).header.width == 24
    save_file({"memory": torch.zeros(2, 3, 4)}, str(path), metadata=header.to_metadata())
    with pytest.raises(GradmemError, match=r"memory shape \(2, 3, 4\), header says \(2, 3, 24\)"):
        memfile.load(path)
    memfile.save(path, torch.zeros(2, 3, 4), _header(space="nowhere"))
    with pytest.raises(GradmemError, match="'space' must be one of embed, kv"):
        memfile.load(path)


def test_shape_mismatch_and_nan(tmp_path):
    path = tmp_path / "a.gmem"
    save_file({"memory": torch.zeros(1, 3, 4)}, str(path), metadata=_header().to_metadata())
    with pytest.raises(GradmemError, match="corrupt"):
        memfile.load(path)
    bad = torch.zeros(2, 3, 4)
    bad[0, 0, 0] = float("nan")
    save_file({"memory": bad}, str(path), metadata=_header().to_metadata())
    with pytest.raises(GradmemError, match="NaN"):
        memfile.load(path)


def test_missing_metadata_field(tmp_path):
    path = tmp_path / "a.gmem"
    meta = _header().to_metadata()
    del meta["mem_tokens"]
    save_file({"memory": torch.zeros(2, 3, 4)}, str(path), metadata=meta)
    with pytest.raises(GradmemError, match="missing 'mem_tokens'"):
        memfile.load(path)


def test_atomic_write_interrupted_leaves_nothing(tmp_path, monkeypatch):
    import os

    def boom(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", boom)  # the rename in fileio.atomic_write_bytes
    with pytest.raises(KeyboardInterrupt):
        memfile.save(tmp_path / "a.gmem", torch.zeros(2, 3, 4), _header())
    assert list(tmp_path.iterdir()) == []
