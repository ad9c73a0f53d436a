"""READ: answer from ``[prefix; memory; prompt]``, rebuild a text from memory alone, and check a
gold continuation teacher-forced.

The framed memory (the tokenizer's BOS if any, then every segment's vectors in order) goes through
the model once; its KV cache is copied for each question, so asking many questions pays for the
memory once. A trained reader (:mod:`~gradmem_cli.lm.adapter`), if attached, is on while answering. Generation is Hugging Face ``generate`` with ``inputs_embeds``; without memory the
same prefix starts the prompt, so every condition shares one framing.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from gradmem_cli.lm.adapter import reading

if TYPE_CHECKING:
    from gradmem_cli.lm.loading import LoadedModel


def with_context(context: str, question: str) -> str:
    """The user turn that puts a text in the prompt before a question (full-context reading)."""
    return f"{context}\n\n{question}"


def prompt_ids(lm: LoadedModel, user_text: str, template: bool = True) -> list[int]:
    """The prompt after the prefix: one user turn of the model's chat template (``Q\nAnswer:``
    for a model without one), or with ``template=False`` the raw tokens of the text.

    Special tokens the prefix already holds (a BOS the template repeats) are dropped, because the
    memory sits between them and the prompt.
    """
    tok = lm.tokenizer
    if not template:
        return lm.tokenize(user_text)
    if getattr(tok, "chat_template", None):
        ids = tok.apply_chat_template(
            [{"role": "user", "content": user_text}], add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
        ids = list(ids)
    else:
        ids = lm.tokenize(f"{user_text}\nAnswer:")
    if lm.prefix_ids and ids[: len(lm.prefix_ids)] == lm.prefix_ids:
        ids = ids[len(lm.prefix_ids):]
    return ids


MEMORY_SLOT = "\ue000"  # marks where in a prompt the memory goes (a private-use character texts do not hold)


def framed_prompt(lm: LoadedModel, user_text: str, template: bool = True) -> tuple[list[int], int]:
    """The prompt's ids and how many of them come before the memory: none, unless the text holds
    :data:`MEMORY_SLOT` (the memory then sits inside the prompt where the slot is, e.g. where the
    full-context prompt has the text)."""
    if MEMORY_SLOT not in user_text:
        return prompt_ids(lm, user_text, template), 0
    tok = lm.tokenizer
    if template and getattr(tok, "chat_template", None):
        text = tok.apply_chat_template([{"role": "user", "content": user_text}], add_generation_prompt=True,
                                       tokenize=False)
    else:
        text = f"{user_text}\nAnswer:" if template else user_text
    head, tail = text.split(MEMORY_SLOT, 1)
    before = lm.tokenize(head)
    if lm.prefix_ids and before[: len(lm.prefix_ids)] == lm.prefix_ids:
        before = before[len(lm.prefix_ids):]
    return before + lm.tokenize(tail), len(before)


def target_hits(lm: LoadedModel, memory: torch.Tensor | None, prompt: list[int], target: list[int],
                at: int = 0) -> list[bool]:
    """Teacher-forced check of a gold continuation: is each target token the argmax given
    ``[prefix; prompt[:at]; memory; prompt[at:]; target before it]``? (The paper's exact-match metric.)"""
    ids = torch.tensor([prompt + target], dtype=torch.long, device=lm.device)
    if memory is None and not lm.prefix_ids and not prompt:
        raise ValueError("the first target token needs something before it to be predicted from")
    embeds = lm.frame(None if memory is None else memory.reshape(1, -1, memory.shape[-1]), ids, at=at)
    with torch.no_grad(), reading(lm):
        logits = lm.model(inputs_embeds=embeds, logits_to_keep=len(target) + 1, use_cache=False).logits
    predicted = logits[0, :-1].argmax(-1).tolist()
    return [p == t for p, t in zip(predicted, target)]


@dataclass
class Answer:
    text: str
    ids: list[int]  # the generated tokens, with the end-of-turn token if generation stopped on it
    tokens: int
    seconds: float
    first_token_seconds: float | None


class _Streamer:
    """Collects generated ids, calls back with decoded text increments, and times the first token."""

    def __init__(self, lm: LoadedModel, callback: Callable[[str], None] | None, start: float):
        self.lm, self.callback, self.start = lm, callback, start
        self.ids: list[int] = []
        self.emitted = ""
        self.first: float | None = None

    def put(self, value: torch.Tensor) -> None:
        if value.numel() == 0:
            return
        if self.first is None:
            self.first = time.perf_counter() - self.start
        self.ids.extend(int(x) for x in value.reshape(-1).tolist())
        text = self.lm.tokenizer.decode(self.ids, skip_special_tokens=True)
        # Hold back a trailing replacement char: a multi-byte character may be half-decoded.
        if self.callback and not text.endswith("\ufffd") and len(text) > len(self.emitted):
            self.callback(text[len(self.emitted):])
            self.emitted = text

    def end(self) -> None:
        text = self.lm.tokenizer.decode(self.ids, skip_special_tokens=True)
        if self.callback and len(text) > len(self.emitted):
            self.callback(text[len(self.emitted):])
            self.emitted = text


class Reader:
    """Answers prompts read after a fixed memory (every segment's vectors in order), or after no
    memory at all.

    With ``use_cache`` (the default) the framed memory is run through the model once and its KV
    cache reused for every prompt; without it each prompt recomputes it (for checking).
    """

    def __init__(self, lm: LoadedModel, memory: torch.Tensor | None, use_cache: bool = True):
        self.lm = lm
        self.memory = None if memory is None else memory.reshape(1, -1, memory.shape[-1])
        self.cache = None
        if use_cache and self.memory is not None:
            from transformers import DynamicCache

            self.cache = DynamicCache(config=lm.model.config)
            with torch.no_grad(), reading(lm):
                lm.model(inputs_embeds=lm.frame(self.memory), cache=self.cache, use_cache=True)

    def answer(
        self,
        user_text: str,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        on_text: Callable[[str], None] | None = None,
        seed: int = 0,
        template: bool = True,
    ) -> Answer:
        lm = self.lm
        prompt, at = framed_prompt(lm, user_text, template)
        ids = torch.tensor([prompt], dtype=torch.long, device=lm.device)
        embeds = lm.frame(self.memory, ids if ids.shape[1] else None, at=at)
        kwargs: dict = {}
        if self.cache is not None and not at:  # the cache holds [prefix; memory]: only for a memory in front
            kwargs["cache"] = copy.deepcopy(self.cache)
        if temperature > 0:
            torch.manual_seed(seed)
            kwargs.update(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_k=None, top_p=None)
        start = time.perf_counter()
        streamer = _Streamer(lm, on_text, start)
        with torch.no_grad(), reading(lm):
            out = lm.model.generate(
                inputs_embeds=embeds,
                attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long, device=lm.device),
                max_new_tokens=max_new_tokens,
                streamer=streamer,
                pad_token_id=lm.tokenizer.pad_token_id or lm.tokenizer.eos_token_id,
                **kwargs,
            )
        seconds = time.perf_counter() - start
        generated = out[0].tolist()
        text = lm.tokenizer.decode(generated, skip_special_tokens=True)
        return Answer(text=text.strip(), ids=generated, tokens=len(generated), seconds=seconds,
                      first_token_seconds=streamer.first)


    def hits(self, user_text: str, target: list[int], template: bool = True) -> list[bool]:
        """:func:`target_hits` of ``target`` after this reader's memory and the prompt, framed as
        :meth:`answer` frames it."""
        prompt, at = framed_prompt(self.lm, user_text, template)
        return target_hits(self.lm, self.memory, prompt, target, at)


def reconstruct(lm: LoadedModel, memory: torch.Tensor, lengths: list[int]) -> list[list[int]]:
    """Greedy-decode each segment from its own memory alone: ``[prefix; M_s]`` -> its tokens.

    Decoding runs exactly ``lengths[s]`` tokens (no stop token), all segments as one batch.
    """
    rows = lm.frame(memory)
    with torch.no_grad():
        out = lm.model.generate(
            inputs_embeds=rows,
            attention_mask=torch.ones(rows.shape[:2], dtype=torch.long, device=lm.device),
            max_new_tokens=max(lengths),
            do_sample=False,
            temperature=None,
            top_k=None,
            top_p=None,
            eos_token_id=None,
            pad_token_id=0,
        )
    return [out[s, :n].tolist() for s, n in enumerate(lengths)]
