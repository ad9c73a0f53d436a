"""Memory spaces: a kv memory (keys and values for every layer, put straight into the cache) is written,
stored, rebuilt exactly and read through every path an embedding memory takes; models that cannot
hold one are refused in one line."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import FAST
from gradmem_cli.lm.generate import Reader, reconstruct
from gradmem_cli.lm.loading import load_model
from gradmem_cli.lm.spaces import SPACES
from gradmem_cli.memory import memfile

TEXT = "Mary went to the kitchen. John picked up the apple."
KV = ["--space", "kv", *FAST[2:]]  # FAST without its --space embed


@pytest.fixture(params=["tiny_model", "tiny_chat_model"])
def any_tiny(request) -> str:
    """Both tiny models: without and with a BOS prefix."""
    return request.getfixturevalue(request.param)


def test_kv_slots_of_own_tokens_are_the_models_own_cache(any_tiny):
    """The token start (each token's keys, unrotated, and values) put back into the cache at its positions
    reads exactly like the model reading those tokens: placement and rotation are the model's own."""
    lm = load_model(any_tiny, device="cpu")
    kv = SPACES["kv"]
    assert kv.refusal(lm) is None
    ids = lm.tokenize(TEXT)[:5]
    slots = kv.tokens_start(lm, ids, len(ids))
    with torch.no_grad():
        via_slots = kv.context(lm, slots[None]).logits
        direct = lm.model(input_ids=torch.tensor([lm.prefix_ids + ids + kv.lead_ids(lm)])).logits[:, -1]
    torch.testing.assert_close(via_slots, direct, atol=1e-4, rtol=1e-4)


def test_forward_aligns_each_position_with_its_token_in_kv_space(tiny_chat_model):
    """Position j of the one memory-LM step predicts token j from [prefix; slots; separator; tokens before j],
    padded rows included."""
    lm = load_model(tiny_chat_model, device="cpu")
    kv = SPACES["kv"]
    ids = lm.tokenize(TEXT)[:6]
    slots = kv.tokens_start(lm, ids[:2], 2)
    from gradmem_cli.lm.memlm import pad

    batch, mask = pad([ids, ids[:3]])
    with torch.no_grad():
        logits = lm.forward(torch.stack([slots, slots]), batch, mask, space="kv")
        full = lm.model(input_ids=torch.tensor([lm.prefix_ids + ids[:2] + kv.lead_ids(lm) + ids])).logits[0]
    start = len(lm.prefix_ids) + 2  # the separator's position predicts ids[0]
    torch.testing.assert_close(logits[0], full[start:start + 6], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits[1, :3], full[start:start + 3], atol=1e-4, rtol=1e-4)


def test_kv_write_is_exact_from_the_stored_file(run, any_tiny, tmp_path):
    """Every token, the first included, is rebuilt free-running from the bf16 file; the file holds the
    slots only (one tensor, no token ids), of the model's KV shape."""
    doc = tmp_path / "d.txt"
    doc.write_text(TEXT)
    out = tmp_path / "d.gmem"
    result = run("write", doc, "-o", out, "-m", any_tiny, *KV, "--json")
    assert result.code == 0, result.err
    mem = memfile.load(out)
    shape = mem.header.model_shape
    width = shape["layers"] * 2 * shape["kv_heads"] * shape["head_dim"]
    assert mem.header.space == "kv" and mem.header.format_version == "2.0"
    assert mem.memory.dtype == torch.bfloat16 and tuple(mem.memory.shape) == (1, 2, width)
    info = json.loads(run("inspect", out, "--against", doc, "-m", any_tiny, "--json").out)
    assert info["reconstruction"]["exact_match"] is True
    assert info["sizes"]["space"] == "kv" and info["sizes"]["shape"] == [1, 2, width]
    from safetensors import safe_open

    import dataclasses

    with safe_open(str(out), framework="pt") as fh:
        assert list(fh.keys()) == ["memory"]
        meta = fh.metadata()
    assert set(meta) == {f.name for f in dataclasses.fields(memfile.MemoryHeader)}
    ids = load_model(any_tiny, device="cpu").tokenize(TEXT)
    assert not any(", ".join(map(str, ids[:3])) in value or "kitchen" in value for value in meta.values())


def test_kv_memory_of_several_segments_reads_in_text_order(run, tiny_model, tmp_path):
    """Segments are written apart and rebuilt apart; read together their slots take consecutive positions."""
    doc = tmp_path / "d.txt"
    doc.write_text(TEXT + " The apple is in the garden. Where is the apple?")
    out = tmp_path / "d.gmem"
    assert run("write", doc, "-o", out, "-m", tiny_model, *KV, "--segment-tokens", "8", "-q").code == 0
    mem = memfile.load(out)
    assert mem.header.segments >= 3
    lm = load_model(tiny_model, device="cpu")
    rebuilt = reconstruct(lm, mem.memory, mem.header.tokens_per_segment, "kv")
    assert [t for seg in rebuilt for t in seg] == lm.tokenize(doc.read_text())
    ctx = SPACES["kv"].context(lm, mem.memory.reshape(1, -1, mem.header.width))
    assert ctx.position == len(lm.prefix_ids) + mem.header.segments * 2 + 1  # all slots, then the separator
    answer = run("ask", out, "Where is the apple?", "-m", tiny_model, "--max-new-tokens", "4", "--json")
    assert answer.code == 0, answer.err
    assert json.loads(answer.out)["tokens"] >= 1


def test_a_cached_reader_answers_as_one_that_rereads_the_memory(tiny_chat_model, tmp_path, run):
    """The cache is cut back to the memory after each question, so the second question is answered as
    if it were the first (and as a reader that reads the memory again for every question)."""
    doc = tmp_path / "d.txt"
    doc.write_text(TEXT)
    out = tmp_path / "d.gmem"
    assert run("write", doc, "-o", out, "-m", tiny_chat_model, *KV, "-q").code == 0
    mem = memfile.load(out)
    lm = load_model(tiny_chat_model, device="cpu")
    cached, fresh = Reader(lm, mem.memory, "kv"), Reader(lm, mem.memory, "kv", use_cache=False)
    first = cached.answer("Who went to the kitchen?", max_new_tokens=5).ids
    cached.answer("Where is the apple?", max_new_tokens=5)
    assert cached.answer("Who went to the kitchen?", max_new_tokens=5).ids == first
    assert fresh.answer("Who went to the kitchen?", max_new_tokens=5).ids == first


def test_kv_space_through_eval_and_the_memory_store(run, tiny_model, tmp_path):
    data = tmp_path / "texts"
    data.mkdir()
    (data / "a.txt").write_text(TEXT)
    store = tmp_path / "store"
    args = ("eval", "recon", "--data", data, "-m", tiny_model, *KV, "--memories", store, "--json")
    first = run(*args)
    assert first.code == 0, first.err
    assert json.loads(first.out)["metrics"]["memory"]["exact"] == 1.0
    (stored,) = store.glob("*.gmem")
    assert memfile.load(stored).header.space == "kv"
    assert json.loads(run(*args).out)["metrics"]["memory"]["exact"] == 1.0  # read back from the store
    refused = run("eval", "recon", "--data", data, "-m", tiny_model, *KV, "--memory-at", "context")
    assert refused.code == 2 and "read before the prompt" in refused.err


@pytest.mark.parametrize("change, reason", [
    ({"sliding_window": 4, "model_type": "mistral"}, "sliding"),
    ({"model_type": "gpt2"}, "rotary"),
])
def test_models_that_cannot_hold_kv_slots_are_refused(run, tmp_path, change, reason):
    from transformers import AutoConfig, AutoModelForCausalLM

    from conftest import build_tiny_model

    folder = build_tiny_model(tmp_path / "base", bos=False, chat=False)
    if change["model_type"] == "mistral":
        config = AutoConfig.for_model("mistral", vocab_size=400, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      sliding_window=change["sliding_window"], max_position_embeddings=128)
    else:
        config = AutoConfig.for_model("gpt2", vocab_size=400, n_embd=32, n_layer=2, n_head=4, n_positions=128)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    doc = tmp_path / "d.txt"
    doc.write_text(TEXT)
    result = run("write", doc, "-o", tmp_path / "d.gmem", "-m", folder, *KV)
    assert result.code == 2 and reason in result.err and len(result.err.strip().splitlines()) == 1
    assert not (tmp_path / "d.gmem").exists()


@pytest.mark.parametrize("reads", ["memory", "context"])
def test_a_reader_of_memories_refuses_another_space_and_a_reader_of_text_does_not(tiny_model, tmp_path, run, reads):
    """A reader trained on embedding memories refuses a kv memory; one trained on text in the prompt
    (input: context) reads any memory's rebuilt text."""
    from gradmem_cli import engine
    from gradmem_cli.errors import GradmemError
    from gradmem_cli.lm import adapter
    import dataclasses

    doc = tmp_path / "d.txt"
    doc.write_text(TEXT)
    out = tmp_path / "d.gmem"
    assert run("write", doc, "-o", out, "-m", tiny_model, *KV, "-q").code == 0
    lm = load_model(tiny_model, device="cpu")
    adapter.attach(lm, adapter.ReaderConfig(base_model=lm.spec, base_fingerprint=dataclasses.asdict(lm.fingerprint),
                                            training={"space": "embed", "input": reads}))
    if reads == "memory":
        with pytest.raises(GradmemError, match="trained on embed memories"):
            engine.open_reader(lm, memfile.load(out))
    else:
        engine.check_model(lm, memfile.load(out))  # no refusal


def test_the_default_space_is_kv_where_the_model_can_hold_it(run, tiny_model, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    from conftest import build_tiny_model
    from gradmem_cli.writers.config import WriteConfig

    doc = tmp_path / "d.txt"
    doc.write_text(TEXT)
    out = tmp_path / "d.gmem"
    assert run("write", doc, "-o", out, "-m", tiny_model, "--lr", "0.3", "-q").code == 0
    assert memfile.load(out).header.space == "kv"
    lm = load_model(tiny_model, device="cpu")
    assert WriteConfig().default_space(lm) == "kv"
    # What only the embedding space has chooses it: a fitted start, the distill objective.
    assert WriteConfig(init="fitted").default_space(lm) == "embed"
    assert WriteConfig(objective="distill").default_space(lm) == "embed"
    folder = build_tiny_model(tmp_path / "gpt2", bos=False, chat=False)
    config = AutoConfig.for_model("gpt2", vocab_size=400, n_embd=32, n_layer=2, n_head=4, n_positions=128)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    assert WriteConfig().default_space(load_model(str(folder), device="cpu")) == "embed"  # no rotary: no kv


@pytest.mark.parametrize("method", ["kv-last", "kv-snap"])
def test_forward_only_baselines_keep_the_texts_own_cache(tiny_chat_model, method):
    """Keeping every position is reading the whole text (then the separator); keeping fewer keeps exactly
    those keys and values, at their own positions, and what follows sits after the whole text."""
    from gradmem_cli.evaluation.baselines import KEEPERS, kept_context

    lm = load_model(tiny_chat_model, device="cpu")
    ids = lm.tokenize(TEXT)
    lead = SPACES["kv"].lead_ids(lm)
    with torch.no_grad():
        whole = lm.model(input_ids=torch.tensor([lm.prefix_ids + ids + lead])).logits[:, -1]
    torch.testing.assert_close(kept_context(lm, ids, len(ids), method).logits, whole, atol=1e-4, rtol=1e-4)
    full, chosen = KEEPERS[method](lm, ids, 3)
    ctx = kept_context(lm, ids, 3, method)
    prefix = len(lm.prefix_ids)
    assert ctx.length == prefix + 3 + len(lead) and ctx.position == prefix + len(ids) + len(lead)
    for layer, (entry, kept) in enumerate(zip(full.cache.layers, ctx.cache.layers)):
        for head in range(entry.keys.shape[1]):
            rows = prefix + chosen[layer, head]
            torch.testing.assert_close(kept.keys[0, head, prefix:prefix + 3], entry.keys[0, head, rows])
    if method == "kv-last":
        assert chosen[0, 0].tolist() == [len(ids) - 3, len(ids) - 2, len(ids) - 1]


def test_eval_scores_the_baselines_at_the_memorys_size(run, tiny_model, tmp_path):
    data = tmp_path / "texts"
    data.mkdir()
    (data / "a.txt").write_text(TEXT)
    result = run("eval", "recon", "--data", data, "-m", tiny_model, *KV, "--json",
                 "--conditions", "memory,kv-last,kv-snap")
    assert result.code == 0, result.err
    metrics = json.loads(result.out)["metrics"]
    assert metrics["kv_last"]["kept_positions"] == metrics["kv_snap"]["kept_positions"] == 2  # one segment, m = 2
    assert metrics["memory"]["exact"] == 1.0
