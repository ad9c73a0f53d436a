"""Shared fixtures: tiny randomly initialised Llama models built here (no download), and a CLI runner."""

from __future__ import annotations

import io
import os
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CORPUS = (
    "The quick brown fox jumps over the lazy dog. A lighthouse keeper writes the weather in a notebook. "
    "Mary went to the kitchen. John picked up the apple. Where is the apple? The apple is in the garden. "
    "Numbers like 12, 345 and 6789 appear in text, as do names such as Okafor, Pepper and Gull Point. "
)

CHAT_TEMPLATE = (
    "{% for m in messages %}<|user|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_tiny_model(folder: Path, bos: bool, chat: bool, seed: int = 0, hidden: int = 64) -> Path:
    """A 2-layer Llama with a byte-level BPE tokenizer trained on CORPUS, saved as a model folder."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|end|>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([CORPUS] * 4, trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="</s>")
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        initializer_range=0.3,  # large enough that the memory can steer a random model
        bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


# Write settings that solve short texts on the tiny models in well under a second.
FAST = ["--space", "embed", "--lr", "0.3", "--steps", "300"]  # most tests pin the embedding space; test_spaces covers kv
TEXT = "Mira Okafor keeps the old lighthouse on Gull Point."


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """Plain tiny model: no BOS, no chat template."""
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny") / "plain", bos=False, chat=False))


@pytest.fixture(scope="session")
def tiny_chat_model(tmp_path_factory) -> str:
    """Tiny model whose tokenizer adds a BOS and which has a chat template."""
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny") / "chat", bos=True, chat=True, seed=1))


@pytest.fixture(scope="session")
def other_tiny_model(tmp_path_factory) -> str:
    """Same architecture and tokenizer as tiny_model, different weights."""
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny") / "other", bos=False, chat=False, seed=7))


@pytest.fixture(autouse=True, scope="session")
def _gradmem_home(tmp_path_factory):
    os.environ["GRADMEM_HOME"] = str(tmp_path_factory.mktemp("gradmem-home"))


@dataclass
class Result:
    code: int
    out: str
    err: str


def invoke(*args: str, stdin: str | bytes | None = None) -> Result:
    """Run ``gradmem ARGS`` in this process; returns exit code, stdout and stderr."""
    from gradmem_cli.cli import main

    saved = sys.argv, sys.stdin
    sys.argv = ["gradmem", *map(str, args)]
    if stdin is not None:
        data = stdin.encode() if isinstance(stdin, str) else stdin
        sys.stdin = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8")
    out, err = io.StringIO(), io.StringIO()
    code = 0
    try:
        with redirect_stdout(out), redirect_stderr(err):
            main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv, sys.stdin = saved
    return Result(code, out.getvalue(), err.getvalue())


@pytest.fixture
def run():
    """The CLI runner (a fixture so tests ask for it like the other fixtures)."""
    return invoke


@pytest.fixture
def doc(tmp_path):
    """A short text file."""
    path = tmp_path / "doc.txt"
    path.write_text(TEXT)
    return path


@pytest.fixture
def written(run, doc, tiny_model, tmp_path):
    """The .gmem of ``doc`` on the tiny model."""
    out = tmp_path / "doc.gmem"
    result = run("write", doc, "-o", out, "-m", tiny_model, *FAST, "--quiet")
    assert result.code == 0, result.err
    return out


def one_line_error(result: Result, code: int = 1) -> str:
    """The one ``error:`` line a bad input gets (exit ``code``, no traceback)."""
    assert result.code == code, (result.code, result.out, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err
    assert "Traceback" not in result.err
    return lines[0]
