"""The Python API, used as a script would: load, write, save, open, ask (streamed and not), rebuild, evaluate."""

import json

import pytest

import gradmem_cli as gm
from conftest import FAST

TEXT = "Mira Okafor keeps the old lighthouse on Gull Point."
OPTIONS = {"space": FAST[1], "lr": float(FAST[3]), "steps": int(FAST[5])}


@pytest.fixture(scope="module")
def model(tiny_model):
    return gm.load(tiny_model, device="cpu")


@pytest.fixture(scope="module")
def memory(model):
    return model.write(TEXT, **OPTIONS)


def test_write_save_open_and_rebuild(model, memory, tmp_path):
    assert memory.header.source["tokens"] == len(model.lm.tokenize(TEXT)) and memory.header.accuracy == [1.0]
    assert model.reconstruct(memory) == TEXT
    path = memory.save(tmp_path / "note.gmem")
    again = gm.load_memory(path)
    assert model.reconstruct(again) == TEXT and again.header.write["lr"] == OPTIONS["lr"]
    with pytest.raises(gm.GradmemError, match="--force"):
        memory.save(path)
    assert memory.save(path, force=True) == path


def test_ask_and_stream_agree_with_the_cli(model, memory, run, tmp_path, tiny_model):
    answer = model.ask(memory, "Who keeps the lighthouse?", max_new_tokens=8)
    assert "".join(model.stream(memory, "Who keeps the lighthouse?", max_new_tokens=8)).strip() == answer
    path = memory.save(tmp_path / "n.gmem")
    cli = run("ask", path, "Who keeps the lighthouse?", "--max-new-tokens", "8", "--json", "-m", tiny_model)
    assert json.loads(cli.out)["answer"] == answer
    via_text = run("ask", path, "Who keeps it?", "--via", "text", "--max-new-tokens", "4", "--json", "-m", tiny_model)
    assert model.ask(memory, "Who keeps it?", via="text", max_new_tokens=4) == json.loads(via_text.out)["answer"]


def test_the_text_is_rebuilt_once_per_memory(model, memory, monkeypatch, tmp_path):
    """Asking via text again reuses the rebuilt text (one rebuild, one model check per memory and path)."""
    from gradmem_cli import engine

    calls = []
    real = engine.rebuild_text
    monkeypatch.setattr(engine, "rebuild_text", lambda *a: calls.append(1) or real(*a))
    fresh = gm.load_memory(memory.save(tmp_path / "fresh.gmem"))
    for question in ("Who keeps it?", "Where is it?", "Who?"):
        model.ask(fresh, question, via="text", max_new_tokens=2)
    assert len(calls) == 1


def test_write_files_is_the_clis_folder_write(model, run, tiny_model, tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    for name, text in (("a", "First small note."), ("b", "A second, longer small note here.")):
        (folder / f"{name}.txt").write_text(text)
    written = model.write_files([folder], tmp_path / "api", **OPTIONS)
    assert sorted(r["output"] for r in written.files) == [str(tmp_path / "api" / f"{n}.gmem") for n in "ab"]
    cli = run("write", folder, "-o", tmp_path / "cli", "-m", tiny_model, *FAST, "--workers", "1", "-q")
    assert cli.code == 0, cli.err
    for name in "ab":
        api_mem, cli_mem = (gm.load_memory(tmp_path / side / f"{name}.gmem") for side in ("api", "cli"))
        assert model.reconstruct(api_mem) == (folder / f"{name}.txt").read_text()
        assert api_mem.file.memory.equal(cli_mem.file.memory)  # same settings, same seed: the same memory
    with pytest.raises(gm.GradmemError, match="--force"):
        model.write_files([folder], tmp_path / "api", **OPTIONS)


def test_write_many_batches_and_keeps_order(model):
    texts = ["First small note.", "A second, longer small note here.", "Third."]
    memories = model.write_many(texts, **OPTIONS)
    assert [model.reconstruct(m) for m in memories] == texts


def test_evaluate_matches_the_cli(model, run, tiny_model):
    result = model.evaluate("kv", limit=1, pairs=2, max_new_tokens=3, **OPTIONS)
    cli = json.loads(run("eval", "kv", "-m", tiny_model, "--limit", "1", "--pairs", "2", "--max-new-tokens", "3",
                         *FAST, "--json").out)
    for condition, metrics in result["metrics"].items():
        for name, value in metrics.items():
            if "seconds" not in name:
                assert cli["metrics"][condition][name] == value


def test_errors_are_the_cli_exceptions(model, memory, other_tiny_model):
    with pytest.raises(gm.UsageError, match="unknown write option"):
        model.write(TEXT, stepz=3)
    with pytest.raises(gm.UsageError, match="--lr"):
        model.write(TEXT, lr=-1.0)
    with pytest.raises(gm.GradmemError, match="no question"):
        model.ask(memory, "  ")
    with pytest.raises(gm.GradmemError, match="model mismatch"):
        gm.load(other_tiny_model, device="cpu").ask(memory, "Who?")
    with pytest.raises(gm.GradmemError, match="no such file"):
        gm.load_memory("/nonexistent/x.gmem")
