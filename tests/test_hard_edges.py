"""Hostile memory files and destructive invocations: each case fails with one line and loses nothing."""

import json
import os
import shutil
import stat

import pytest
import torch
from safetensors.torch import save_file

from conftest import FAST, TEXT, one_line_error as _one_line_error
from gradmem_cli.memory import memfile



# --- 1. a .gmem never makes gradmem run code or load a model the user did not choose -------------------


def _code_carrying_model(source: str, folder, known_type: bool):
    """A copy of a tiny model whose config maps to a Python file that, if ever run, leaves a marker."""
    shutil.copytree(source, folder)
    marker = folder / "RAN"
    (folder / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "class EvilConfig(LlamaConfig):\n    model_type = 'gradmem_evil'\n"
        "class EvilModel(LlamaForCausalLM):\n    config_class = EvilConfig\n"
    )
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    if not known_type:
        config["model_type"] = "gradmem_evil"
    (folder / "config.json").write_text(json.dumps(config))
    return marker


@pytest.mark.parametrize("known_type", [True, False])
def test_crafted_model_id_never_runs_code(run, written, tiny_model, tmp_path, known_type):
    evil = tmp_path / "evil-model"
    marker = _code_carrying_model(tiny_model, evil, known_type)
    mem = memfile.load(written)
    mem.header.model_id = str(evil)
    crafted = tmp_path / "crafted.gmem"
    memfile.save(crafted, mem.memory, mem.header)
    # On the file's word: refused before anything is loaded.
    result = run("ask", crafted, "-", stdin="yes\nQ\n")
    assert "does not load on a file's word" in _one_line_error(result) and result.out == ""
    # Chosen by the user: loaded without its code (built-in class) or refused, never prompted for.
    result = run("ask", crafted, "-", "-m", evil, "--max-new-tokens", "2", stdin="yes\nQ\n")
    assert "custom code" not in result.out and "[y/N]" not in result.out + result.err
    if not known_type:
        _one_line_error(result)
    assert not marker.exists()


def test_architecture_mismatch_is_found_before_weights_load(run, written, tmp_path, tiny_model):
    other = tmp_path / "wider"
    shutil.copytree(tiny_model, other)
    config = json.loads((other / "config.json").read_text())
    config["num_hidden_layers"] = 3
    (other / "config.json").write_text(json.dumps(config))
    (other / "model.safetensors").write_bytes(b"not weights")  # would fail to load if it were read
    line = _one_line_error(run("ask", written, "Who?", "-m", other))
    assert "model mismatch" in line and "architecture" in line


def test_empty_question_refused_before_the_model_loads(run, written, tmp_path):
    line = _one_line_error(run("ask", written, "  ", "-m", tmp_path / "no-such-model"))
    assert "no question given" in line


# --- 2./3. write never destroys its input or another file ------------------------------------------------


def test_output_that_is_the_input_is_refused(run, doc, tiny_model, tmp_path):
    assert "is an input" in _one_line_error(run("write", doc, "-o", doc, "-m", tiny_model, "--force"))
    link = tmp_path / "link.gmem"
    link.symlink_to(doc)
    assert "is an input" in _one_line_error(run("write", doc, "-o", link, "-m", tiny_model, "--force"))
    hard = tmp_path / "hard.gmem"
    os.link(doc, hard)
    assert "is an input" in _one_line_error(run("write", doc, "-o", hard, "-m", tiny_model, "--force"))
    assert doc.read_text() == TEXT


def test_default_output_of_a_gmem_input_is_refused(run, written, tiny_model):
    before = written.read_bytes()
    _one_line_error(run("write", written, "-m", tiny_model, "--force"))
    assert written.read_bytes() == before


def test_other_files_are_never_overwritten(run, doc, tiny_model, tmp_path):
    notes = tmp_path / "notes.md"
    notes.write_text("my notes")
    line = _one_line_error(run("write", doc, "-o", notes, "-m", tiny_model, "--force"))
    assert "not a .gmem" in line and notes.read_text() == "my notes"


def test_existing_gmem_needs_force(run, doc, written, tiny_model):
    before = written.read_bytes()
    line = _one_line_error(run("write", doc, "-o", written, "-m", tiny_model, *FAST))
    assert "--force" in line and written.read_bytes() == before
    assert run("write", doc, "-o", written, "-m", tiny_model, *FAST, "--seed", "3", "-q", "--force").code == 0
    assert memfile.load(written).header.write["seed"] == 3


def test_a_file_that_appears_during_the_write_is_kept(run, doc, tiny_model, tmp_path, monkeypatch):
    """Two writes to one -o: the one that finishes second fails instead of silently replacing."""
    from gradmem_cli.engine import folders

    out = tmp_path / "race.gmem"
    real = folders.memorize

    def other_process_finishes_first(*args, **kwargs):
        for item in real(*args, **kwargs):
            out.write_bytes(b"the other write's file")
            yield item

    monkeypatch.setattr(folders, "memorize", other_process_finishes_first)
    line = _one_line_error(run("write", doc, "-o", out, "-m", tiny_model, *FAST, "-q"))
    assert "appeared while this write ran" in line and out.read_bytes() == b"the other write's file"


def test_a_gmem_changed_during_a_forced_write_is_kept(run, doc, written, tiny_model, monkeypatch):
    from gradmem_cli.engine import folders

    real = folders.memorize

    def other_process_replaces_it(*args, **kwargs):
        for item in real(*args, **kwargs):
            written.write_bytes(b"replaced by someone else")
            yield item

    monkeypatch.setattr(folders, "memorize", other_process_replaces_it)
    line = _one_line_error(run("write", doc, "-o", written, "-m", tiny_model, *FAST, "-q", "--force"))
    assert "changed while this write ran" in line and written.read_bytes() == b"replaced by someone else"


# --- 4. every header field is validated at load, with one "corrupt .gmem" message ------------------------


def _tamper(written, tmp_path, name, **fields):
    mem = memfile.load(written)
    meta = mem.header.to_metadata()
    for key, value in fields.items():
        if value is None:
            del meta[key]
        else:
            meta[key] = value if isinstance(value, str) else json.dumps(value)
    path = tmp_path / f"{name}.gmem"
    save_file({"memory": mem.memory}, str(path), metadata=meta)
    return path


JUNK = {
    "huge_segment": {"tokens_per_segment": [100000000]},
    "negative_segment": {"tokens_per_segment": [-5]},
    "string_segment": {"tokens_per_segment": "many"},
    "negative_shape": {"model_shape": {"layers": -2, "kv_heads": 2, "head_dim": 16, "hidden": 64}},
    "float_mem_tokens": {"mem_tokens": 8.5},
    "bool_hidden": {"hidden_size": True},
    "bad_dtype_name": {"dtype": "int8"},
    "loss_not_numbers": {"final_loss": ["x"]},
    "accuracy_above_one": {"accuracy": [3.0]},
    "steps_wrong_length": {"steps": [1, 2, 3]},
    "source_not_object": {"source": [1]},
    "fingerprint_junk": {"model_fingerprint": {"config": 5}},
    "prefix_junk": {"prefix_ids": ["<s>"]},
    "write_not_object": {"write": [1]},
    "no_format_version": {"format_version": None},
    "format_version_junk": {"format_version": "one"},
    "missing_field": {"hidden_size": None},
    "not_json": {"steps": "[1,"},
}


@pytest.mark.parametrize("name", sorted(JUNK))
def test_junk_headers_are_corrupt(run, written, tmp_path, name):
    path = _tamper(written, tmp_path, name, **JUNK[name])
    for args in ([], ["--json"]):
        line = _one_line_error(run("inspect", path, *args))
        assert "corrupt .gmem" in line, line


def test_empty_and_mistyped_tensors(written, tmp_path):
    mem = memfile.load(written)
    meta = mem.header.to_metadata()
    empty = tmp_path / "empty.gmem"
    save_file({"memory": torch.zeros(0, 8, 64)}, str(empty), metadata={**meta, "tokens_per_segment": "[]"})
    with pytest.raises(Exception, match="corrupt .gmem.*non-empty list"):
        memfile.load(empty)
    ints = tmp_path / "ints.gmem"
    save_file({"memory": torch.zeros(mem.memory.shape, dtype=torch.int32)}, str(ints), metadata=meta)
    with pytest.raises(Exception, match="corrupt .gmem.*dtype I32"):
        memfile.load(ints)


def test_segment_longer_than_the_window_is_refused_quickly(run, written, tmp_path, tiny_model):
    tokens = 5000  # within the format's bounds, beyond the tiny model's window of 512
    path = _tamper(written, tmp_path, "long", segment_tokens=tokens, tokens_per_segment=[tokens],
                   source={**memfile.load(written).header.source, "tokens": tokens})
    line = _one_line_error(run("inspect", path, "--reconstruct", "-m", tiny_model))
    assert "window of 512" in line


# --- 5./6. sizes bounded before work; folders, file names, modes, odd paths -------------------------------


def test_sizes_beyond_the_window_are_refused(run, doc, tiny_model, tmp_path):
    out = tmp_path / "x.gmem"
    line = _one_line_error(run("write", doc, "-o", out, "-m", tiny_model, "--mem-tokens", "100000"), code=2)
    assert "window of 512" in line and not out.exists()


def test_a_folder_with_one_text_still_writes_into_a_folder(run, tiny_model, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "E.TXT").write_text("Upper case name.")
    out = tmp_path / "mems"
    assert run("write", src, "-o", out, "-m", tiny_model, *FAST, "-q").code == 0
    assert out.is_dir() and (out / "E.gmem").is_file()


def test_output_mode_follows_umask_and_existing_mode(run, doc, tiny_model, tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "m.gmem"
        assert run("write", doc, "-o", out, "-m", tiny_model, *FAST, "-q").code == 0
        assert stat.S_IMODE(out.stat().st_mode) == 0o644
        out.chmod(0o640)
        assert run("write", doc, "-o", out, "-m", tiny_model, *FAST, "-q", "--force").code == 0
        assert stat.S_IMODE(out.stat().st_mode) == 0o640
    finally:
        os.umask(old)


def test_binary_train_config_and_symlink_loop(run, tmp_path):
    binary = tmp_path / "cfg.yaml"
    binary.write_bytes(b"\x00\x01binary")
    assert "binary" in _one_line_error(run("train", binary))
    loop = tmp_path / "loop.gmem"
    loop.symlink_to(loop)
    assert "link loop" in _one_line_error(run("inspect", loop))
    assert "link loop" in _one_line_error(run("write", loop))
