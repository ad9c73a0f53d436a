"""Checkpoints from ``gradmem train`` are models for the rest of the tool: write, ask, inspect, train-eval."""

from __future__ import annotations

import json
import random

import pytest
import torch
from conftest import invoke

from gradmem_cli.memory import memfile
from gradmem_cli.training.chartok import build_char_tokenizer
from gradmem_cli.lm.loading import load_model
from gradmem_cli.tasks import kv
from gradmem_cli.tasks.base import Options
from gradmem_cli.engine import write_segments
from gradmem_cli.writers.config import WriteConfig
from gradmem_cli.lm.learned import write_memory

TINY = ["--set", "layers=1", "--set", "hidden=16", "--set", "heads=2", "--set", "ffn=32", "--set", "pairs=2",
        "--set", "batch_size=4", "--set", "eval_samples=8", "--set", "max_steps=4", "--set", "eval_every=2",
        "--set", "warmup_steps=0", "--set", "threads=1", "--set", "log_every=2"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Tiny trained checkpoints of each writer kind (one gradmem with a memory projection)."""
    root = tmp_path_factory.mktemp("trained")
    out = {}
    for name, extra in {"gradmem": ["--set", "mem_proj=true"], "rmt": ["--set", "writer=rmt", "--set", "inner_steps=1"],
                        "full": ["--set", "writer=full"]}.items():
        result = invoke("train", *TINY, "--set", f"out={root / name}", *extra, "--json")
        assert result.code == 0, result.err
        assert json.loads(result.out)["step"] == 4
        out[name] = root / name / "best"
    return out


def test_checkpoint_layout(checkpoints):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = checkpoints["gradmem"]
    assert AutoTokenizer.from_pretrained(folder).get_vocab() == build_char_tokenizer().get_vocab()
    assert AutoModelForCausalLM.from_pretrained(folder).config.num_hidden_layers == 1
    info = json.loads((folder / "gradmem_writer.json").read_text())
    assert (info["kind"], info["mem_tokens"], info["steps"], info["grad_mode"], info["mem_proj"]) == (
        "gradmem", 8, 2, "second", True)
    assert info["training"]["steps_trained"] == 4 and "train_config.yaml" in {p.name for p in folder.iterdir()}
    assert json.loads((checkpoints["rmt"] / "gradmem_writer.json").read_text())["kind"] == "rmt"
    assert not (checkpoints["full"] / "gradmem_writer.json").exists()
    assert not list(folder.rglob("*.pt")) and not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pkl"))


def test_write_uses_the_learned_writer(checkpoints, run, tmp_path):
    sample = kv.generate(2, random.Random(3))
    src = tmp_path / "ctx.txt"
    src.write_text(sample.context)
    out = tmp_path / "ctx.gmem"
    result = run("write", src, "-m", checkpoints["gradmem"], "-o", out, "--json")
    assert result.code == 0, result.err
    header = memfile.load(out).header
    w = header.write
    assert (w["init"], w["optimizer"], w["steps"], w["lr"], w["schedule"]) == ("learned", "sgd", 2, 0.04, "constant")
    assert w["writer"]["kind"] == "gradmem" and header.steps == [2] and header.tokens_per_segment == [15]
    # --steps overrides K (test-time scaling), and the file records it.
    result = run("write", src, "-m", checkpoints["gradmem"], "-o", out, "--force", "--steps", "5", "--lr", "0.1")
    assert result.code == 0, result.err
    assert (memfile.load(out).header.write["steps"], memfile.load(out).header.write["lr"]) == (5, 0.1)
    # ask feeds the query verbatim (the checkpoint's chat template) and stops at "|".
    result = run("ask", out, sample.query, "--json", "--max-new-tokens", "8", "-m", checkpoints["gradmem"])
    assert result.code == 0, result.err
    assert json.loads(result.out)["tokens"] <= 8
    result = run("inspect", out, "--json")
    assert result.code == 0 and json.loads(result.out)["header"]["write"]["writer"]["mem_proj"] is True


def test_learned_write_matches_training(checkpoints):
    """The engine's write gives the memory the training harness reads (same M0, K, alpha, head)."""
    from gradmem_cli.tasks import get_task
    from gradmem_cli.training import model as metamodel

    lm = load_model(str(checkpoints["gradmem"]), device="cpu")
    samples = kv.dataset(2, 3, seed=5)
    examples = get_task("kv").load(None, 3, 5, Options(pairs=2)).examples
    batch = metamodel.encode(lm.tokenizer, get_task("kv"), examples)
    trained = write_memory(lm, lm.writer, batch.ctx, batch.ctx_mask).memory
    results = sorted(write_segments(lm, [lm.tokenize(s.context) for s in samples], WriteConfig()),
                     key=lambda r: r.index)
    assert torch.allclose(torch.stack([r.memory for r in results]), trained, atol=1e-5)
    assert all(r.steps == lm.writer.cfg.steps for r in results)


def test_rmt_checkpoint_writes_forward_only(checkpoints, run, tmp_path):
    src = tmp_path / "ctx.txt"
    src.write_text(kv.generate(2, random.Random(4)).context)
    out = tmp_path / "rmt.gmem"
    result = run("write", src, "-m", checkpoints["rmt"], "-o", out)
    assert result.code == 0, result.err
    w = memfile.load(out).header.write
    assert (w["init"], w["optimizer"], w["steps"]) == ("learned", "forward", 1)
    result = run("write", src, "-m", checkpoints["rmt"], "-o", out, "--force", "--optimizer", "adam")
    assert result.code == 2 and "forward" in result.err


def test_plain_init_still_available_and_learned_refused_without_writer(checkpoints, run, tmp_path, tiny_model):
    src = tmp_path / "ctx.txt"
    src.write_text(kv.generate(2, random.Random(4)).context)
    result = run("write", src, "-m", checkpoints["gradmem"], "-o", tmp_path / "a.gmem", "--init", "tokens",
                 "--steps", "3")
    assert result.code == 0, result.err
    w = memfile.load(tmp_path / "a.gmem").header.write
    assert (w["init"], w["optimizer"], w["mem_tokens"]) == ("tokens", "adam", 8)
    result = run("write", src, "-m", tiny_model, "-o", tmp_path / "b.gmem", "--init", "learned")
    assert result.code == 2 and "gradmem train" in result.err
    result = run("write", src, "-m", checkpoints["gradmem"], "-o", tmp_path / "c.gmem", "--mem-tokens", "4")
    assert result.code == 2 and "8 memory vectors" in result.err


def test_train_eval_table(checkpoints, run, tmp_path):
    result = run("train-eval", checkpoints["gradmem"], "--pairs", "2", "--samples", "6", "--steps", "1-3", "--json")
    assert result.code == 0, result.err
    rows = json.loads(result.out)["rows"]
    assert [r["steps"] for r in rows] == [1, 2, 3] and all(r["samples"] == 6 for r in rows)
    # Each row is the EM of writing with that many steps: the same as evaluating with --steps K alone.
    alone = json.loads(run("train-eval", checkpoints["gradmem"], "--pairs", "2", "--samples", "6", "--steps", "2",
                           "--json").out)["rows"]
    assert alone == [rows[1]]
    data = tmp_path / "kv.jsonl"
    data.write_text("".join(json.dumps(s.to_dict()) + "\n" for s in kv.dataset(3, 4, seed=1)))
    for name, steps in (("rmt", [1]), ("full", [None])):
        result = run("train-eval", checkpoints[name], "--data", data, "--json")
        assert result.code == 0, result.err
        assert [r["steps"] for r in json.loads(result.out)["rows"]] == steps
    data.write_text('{"context": "x"}\n')
    result = run("train-eval", checkpoints["gradmem"], "--data", data)
    assert result.code == 1 and "kv record" in result.err


def test_train_cli_errors(run, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("pairs: [1, 2\n")
    result = run("train", bad)
    assert result.code == 1 and result.err.startswith("error:") and len(result.err.strip().splitlines()) == 1
    result = run("train", "--set", "nonsense=1")
    assert result.code == 2 and "KEY=VALUE" in result.err
    result = run("train", "--set", "writer=lstm")
    assert result.code == 2 and "writer must be one of" in result.err
