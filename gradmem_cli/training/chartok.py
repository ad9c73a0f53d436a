"""A character-level tokenizer for models trained from scratch (the paper's key-value setup).

One id per character: the special tokens ``[PAD] [BOS] [EOS] [UNK]`` (ids 0-3), then the 62
letters and digits and the four symbols ``!?:|`` of the key-value format, 70 ids in all. It is a
``PreTrainedTokenizerFast`` (WordLevel over single characters), so it saves with a checkpoint and
``AutoTokenizer.from_pretrained(folder)`` loads it back.

Its chat template passes the user's text through verbatim: the model was trained on bare queries
such as ``?!ab:``, so ``gradmem ask`` must not wrap them in a conversation format.
"""

from __future__ import annotations

from gradmem_cli.tasks.kv import ALPHABET, SYMBOLS

SPECIAL_TOKENS = ("[PAD]", "[BOS]", "[EOS]", "[UNK]")
RAW_CHAT_TEMPLATE = "{% for message in messages %}{{ message['content'] }}{% endfor %}"


def build_char_tokenizer(chars: str = ALPHABET + SYMBOLS):
    """The tokenizer for ``chars`` (default: the key-value alphabet, 70 ids with the specials)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if len(set(chars)) != len(chars):
        raise ValueError("characters must be unique")
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *chars])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", bos_token="[BOS]", eos_token="[EOS]", unk_token="[UNK]"
    )
    fast.chat_template = RAW_CHAT_TEMPLATE
    return fast
