"""Trained readers and memory stores on a tiny chat model: train, resume, read, refuse what does not fit."""

import json
import shutil

import pytest
import torch

from conftest import FAST
from gradmem_cli.errors import GradmemError
from gradmem_cli.lm import adapter
from gradmem_cli.lm.generate import reconstruct
from gradmem_cli.lm.loading import load_model
from gradmem_cli.memory import memfile
from gradmem_cli.engine.store import MemoryStore, text_key
from gradmem_cli.writers.config import WriteConfig

SMALL = ["--set", "train_stories=4", "--set", "eval_stories=2", "--set", "batch_size=4", "--set", "rank=4",
         "--set", "eval_every=3", "--set", "log_every=1", "--set", "lr=0.01", "--set", "threads=1"]


def _one_line_error(result, code=1):
    assert result.code == code, (result.code, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_chat_model):
    """A reader trained for 6 steps, and its run folder (memories written on the way)."""
    from conftest import invoke

    root = tmp_path_factory.mktemp("reader")
    args = ["train-reader", "--set", f"model={tiny_chat_model}", "--set", f"out={root / 'run'}", *SMALL]
    result = invoke(*args, "--set", "max_steps=6", "--json")
    assert result.code == 0, result.err
    return root / "run", json.loads(result.out), args


def test_training_writes_memories_then_learns(trained):
    run, result, _ = trained
    assert result["step"] == 6 and (run / "best" / adapter.READER_JSON).is_file()
    losses = [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert len(losses) == 6 and losses[-1] < losses[0]  # lr 0.01 on 4 stories: it fits them
    cfg = adapter.read_config(run / "best")
    assert cfg.training["train_stories"] == 4 and "qa1_em" in cfg.training["held_out"]
    assert len(list((run / "memories").glob("*.gmem"))) >= 5  # 4 training + 2 held-out stories (may overlap)


def test_resume_continues_exactly(trained, tmp_path, run):
    source, _, args = trained
    resumed = tmp_path / "resumed"
    shutil.copytree(source, resumed)
    shutil.rmtree(resumed / "checkpoints" / sorted(p.name for p in (resumed / "checkpoints").iterdir())[-1])
    (resumed / "latest").write_text("step-00000003\n")
    out_args = [a if not a.startswith("out=") else f"out={resumed}" for a in args]
    assert run(*out_args, "--set", "max_steps=6", "--resume").code == 0
    from safetensors.torch import load_file

    a = load_file(str(source / "checkpoints" / "step-00000006" / "model" / adapter.READER_WEIGHTS))
    b = load_file(str(resumed / "checkpoints" / "step-00000006" / "model" / adapter.READER_WEIGHTS))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ask_with_a_reader_and_its_switch(trained, run, tiny_chat_model, tmp_path):
    run_dir, _, _ = trained
    doc = tmp_path / "s.txt"
    doc.write_text("Mary went to the kitchen. John moved to the garden.")
    out = tmp_path / "s.gmem"
    assert run("write", doc, "-o", out, "-m", tiny_chat_model, *FAST, "-q").code == 0
    plain = json.loads(run("ask", out, "Where is Mary?", "-m", tiny_chat_model, "--json", "--max-new-tokens", "4").out)
    read = run("ask", out, "Where is Mary?", "-m", tiny_chat_model, "--reader", run_dir / "best", "--json",
               "--max-new-tokens", "4")
    assert read.code == 0, read.err
    assert json.loads(read.out)["reader"] == str(run_dir / "best")
    # The adapter changes what the model reads, and is off again for rebuilding: the text comes back exactly.
    lm = load_model(tiny_chat_model, device="cpu")
    mem = memfile.load(out)
    before = reconstruct(lm, mem.memory, mem.header.tokens_per_segment)
    adapter.load(lm, run_dir / "best")
    assert reconstruct(lm, mem.memory, mem.header.tokens_per_segment) == before
    ids = torch.tensor([[5, 6, 7]])
    off = lm.forward(mem.memory.reshape(1, -1, lm.hidden_size), ids)
    with adapter.reading(lm):
        on = lm.forward(mem.memory.reshape(1, -1, lm.hidden_size), ids)
    assert not torch.allclose(on, off)
    assert plain["answer"] is not None


def test_api_reads_with_a_reader(trained, tiny_chat_model, run, tmp_path):
    import gradmem_cli as gm

    run_dir, _, _ = trained
    model = gm.load(tiny_chat_model, device="cpu", reader=run_dir / "best")
    memory = model.write("Mary went to the kitchen.", lr=0.3, steps=300)
    path = memory.save(tmp_path / "m.gmem")
    cli = run("ask", path, "Where is Mary?", "-m", tiny_chat_model, "--reader", run_dir / "best", "--json",
              "--max-new-tokens", "4")
    assert json.loads(cli.out)["answer"] == model.ask(memory, "Where is Mary?", max_new_tokens=4)
    assert model.reconstruct(memory) == "Mary went to the kitchen."  # rebuilt by the frozen model


def test_bad_readers_are_refused(trained, run, tiny_chat_model, other_tiny_model, tmp_path):
    run_dir, _, _ = trained
    doc = tmp_path / "s.txt"
    doc.write_text("Mary went to the kitchen.")
    out = tmp_path / "s.gmem"
    assert run("write", doc, "-o", out, "-m", other_tiny_model, *FAST, "-q").code == 0
    line = _one_line_error(run("ask", out, "Where?", "-m", other_tiny_model, "--reader", run_dir / "best"))
    assert "reader mismatch" in line
    broken = tmp_path / "broken"
    shutil.copytree(run_dir / "best", broken)
    (broken / adapter.READER_WEIGHTS).write_bytes(b"not safetensors")
    assert "cannot load the reader weights" in _one_line_error(
        run("eval", "kv", "-m", tiny_chat_model, "--reader", broken, "--limit", "1"))
    (broken / adapter.READER_JSON).write_text('{"format": "gradmem.reader", "format_version": "1.0", '
                                              '"base_model": "x", "base_fingerprint": {}, "targets": ["../evil"]}')
    assert "corrupt reader config" in _one_line_error(
        run("eval", "kv", "-m", tiny_chat_model, "--reader", broken, "--limit", "1"))
    assert "not a reader folder" in _one_line_error(
        run("eval", "kv", "-m", tiny_chat_model, "--reader", tmp_path, "--limit", "1"))


def test_fine_tuned_baselines_train_on_the_same_stories(trained, run):
    """input: context (full context, fine-tuned) and none (no context, fine-tuned) train the same way
    on the stories the reader had memories for, with no memories of their own."""
    run_dir, _, args = trained
    for kind in ("context", "none"):
        out = run_dir.parent / kind
        changed = [a if not a.startswith("out=") else f"out={out}" for a in args]
        result = run(*changed, "--set", f"input={kind}", "--set", f"memories={run_dir / 'memories'}",
                     "--set", "cached_only=true", "--set", "max_steps=2", "--set", "eval_every=2", "--json")
        assert result.code == 0, result.err
        cfg = adapter.read_config(out / "best")
        assert cfg.training["input"] == kind and cfg.training["train_stories"] == 4
        assert not (out / "memories").exists()


def test_memory_store_reuses_and_rewrites(tiny_model, tmp_path):
    lm = load_model(tiny_model, device="cpu")
    cfg = WriteConfig(space="embed", lr=0.3, steps=300).resolve(lm)
    store = MemoryStore(tmp_path / "store", lm, cfg)
    texts = ["Mira keeps the lighthouse.", "Pepper is a grey cat."]
    assert store.fill(texts) == 2 and store.fill(texts) == 0
    assert store.path(texts[0]).is_file() and store.path(texts[0]).name.startswith(text_key(texts[0]))
    other = MemoryStore(tmp_path / "store", lm, WriteConfig(space="embed", lr=0.3, steps=300, seed=1).resolve(lm))
    assert other.missing(texts) == texts  # written with other settings: not reused
    assert other.fill(texts[:1]) == 1 and store.missing(texts) == []  # ... and not replaced either
    assert len(list((tmp_path / "store").glob("*.gmem"))) == 3
    store.path(texts[1]).write_bytes(b"damaged")
    assert store.missing(texts) == [texts[1]] and store.fill(texts) == 1


def test_eval_reads_memories_from_a_store(run, tiny_model, tmp_path):
    data = tmp_path / "qa.jsonl"
    data.write_text(json.dumps({"context": "Mira keeps the lighthouse.", "question": "Who?", "answers": ["Mira"]}) + "\n")
    args = ["eval", "qa", "--data", data, "-m", tiny_model, *FAST, "--conditions", "memory", "--json",
            "--memories", tmp_path / "store", "--max-new-tokens", "3"]
    first = json.loads(run(*args).out)
    assert len(list((tmp_path / "store").glob("*.gmem"))) == 1
    second = json.loads(run(*args).out)
    assert second["metrics"]["memory"]["f1"] == first["metrics"]["memory"]["f1"]
    assert first["metrics"]["memory"]["memories_reused"] == 0 and first["metrics"]["memory"]["write_wall_seconds_per_example"] > 0
    # the second run wrote nothing: it reports what it reused, not a write time that is not its own
    assert second["metrics"]["memory"]["memories_reused"] == 1
    assert "write_wall_seconds_per_example" not in second["metrics"]["memory"]


def test_reader_config_rejects_junk():
    with pytest.raises(GradmemError):
        adapter.ReaderConfig(base_model="m", base_fingerprint={}, targets=["x.y"]).validate()
