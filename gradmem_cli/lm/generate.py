"""READ: answer from ``[prefix; memory; lead; prompt]``, rebuild a text from memory alone, and check a
gold continuation teacher-forced.

The memory's space (:mod:`~gradmem_cli.lm.spaces`) puts it into the model's cache once per reader:
an embedding memory by one forward pass, a kv memory by placing its slots; after each question the
cache is cut back to the memory, so asking many questions pays for the memory once. Generation is a
plain loop over that cache (greedy, or sampling at a temperature), streamed as a generator. A trained
reader (:mod:`~gradmem_cli.lm.adapter`), if attached, is on while answering. Without memory the same
prefix starts the prompt, so every condition shares one framing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from gradmem_cli.lm import cache
from gradmem_cli.lm.adapter import reading
from gradmem_cli.lm.cache import Context
from gradmem_cli.lm.spaces import SPACES

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


@dataclass
class Answer:
    text: str
    ids: list[int]  # the generated tokens, with the end-of-turn token if generation stopped on it
    tokens: int
    seconds: float
    first_token_seconds: float | None


def stop_ids(lm: LoadedModel) -> set[int]:
    """The tokens that end an answer: the model's generation end tokens and the tokenizer's."""
    configured = getattr(lm.model.generation_config, "eos_token_id", None)
    ids = set(configured if isinstance(configured, list) else [] if configured is None else [configured])
    if lm.tokenizer.eos_token_id is not None:
        ids.add(lm.tokenizer.eos_token_id)
    return ids


def sample(lm: LoadedModel, ctx: Context, max_new_tokens: int, temperature: float = 0.0, seed: int = 0,
           stops: set[int] | None = None) -> Iterator[int]:
    """Token ids generated after ``ctx`` (one row; ``ctx.logits`` predicts the first), greedy at
    temperature 0, else sampled from the softmax at ``temperature`` (seeded). Stops after a token of
    ``stops`` or ``max_new_tokens`` tokens; ``ctx`` moves along."""
    generator = torch.Generator().manual_seed(seed) if temperature > 0 else None
    for step in range(max_new_tokens):
        logits = ctx.logits[0]
        if generator is None:
            token = int(logits.argmax())
        else:
            probs = torch.softmax(logits.float().cpu() / temperature, dim=-1)
            token = int(torch.multinomial(probs, 1, generator=generator))
        yield token
        if (stops and token in stops) or step == max_new_tokens - 1:
            return
        cache.extend(lm, ctx, torch.tensor([[token]], device=lm.device), keep=1)


def greedy(lm: LoadedModel, ctx: Context, steps: int) -> torch.Tensor:
    """``steps`` greedy tokens [B, steps] after each row of ``ctx`` (no stop token)."""
    out = []
    for step in range(steps):
        token = ctx.logits.argmax(-1, keepdim=True)
        out.append(token)
        if step < steps - 1:
            cache.extend(lm, ctx, token, keep=1)
    return torch.cat(out, dim=1)


def target_hits(lm: LoadedModel, memory: torch.Tensor | None, prompt: list[int], target: list[int],
                at: int = 0, space: str = "embed") -> list[bool]:
    """Teacher-forced check of a gold continuation: is each target token the argmax given
    ``[prefix; prompt[:at]; memory; lead; prompt[at:]; target before it]``? (The paper's exact-match metric.)"""
    return Reader(lm, memory, space, use_cache=False).hits_ids(prompt, target, at)


class Reader:
    """Answers prompts read after a fixed memory (every segment's slots in order, in ``space``), or
    after no memory at all.

    With ``use_cache`` (the default) the memory is read into the cache once and the cache cut back to
    it after every prompt; without it each prompt reads the memory again (for checking).
    """

    def __init__(self, lm: LoadedModel, memory: torch.Tensor | None, space: str = "embed", use_cache: bool = True):
        self.lm = lm
        self.space = SPACES[space]
        self.memory = None if memory is None else memory.reshape(1, -1, memory.shape[-1])
        self.base: Context | None = self._read() if use_cache else None

    @property
    def occupied(self) -> int:
        """Positions taken before a prompt: the prefix, the memory's slots and what the space puts after them."""
        if self.base is not None:
            return self.base.position
        slots = 0 if self.memory is None else self.memory.shape[1] + len(self.space.lead_ids(self.lm))
        return len(self.lm.prefix_ids) + slots

    @classmethod
    def over(cls, lm: LoadedModel, ctx: Context) -> Reader:
        """A reader of whatever ``ctx`` has read (a cache built elsewhere), kept for every prompt."""
        reader = cls(lm, None, use_cache=False)
        reader.base = ctx
        return reader

    def _read(self, before: list[int] | None = None) -> Context:
        with torch.no_grad(), reading(self.lm):
            return self.space.context(self.lm, self.memory, before)

    def _open(self, at_ids: list[int]) -> tuple[Context, Callable[[], None]]:
        """A context for one prompt (``at_ids``: prompt tokens before an in-prompt memory), and what
        restores the shared cache afterwards."""
        if self.base is None or at_ids:
            return self._read(at_ids), lambda: None
        base = self.base
        length, position, logits = base.length, base.position, base.logits
        return base, lambda: base.rewind(length, position, logits)

    def hits_ids(self, prompt: list[int], target: list[int], at: int = 0) -> list[bool]:
        """Teacher-forced: is each ``target`` token the argmax after the memory, ``prompt`` (the memory
        after its first ``at`` tokens) and the target before it?"""
        ctx, restore = self._open(prompt[:at])
        seq = prompt[at:] + target
        try:
            if ctx.logits is None and len(seq) == len(target):
                raise ValueError("the first target token needs something before it to be predicted from")
            first = ctx.logits
            with torch.no_grad(), reading(self.lm):
                logits = cache.extend(self.lm, ctx, torch.tensor([seq], device=self.lm.device))[0]
        finally:
            restore()
        # logits[j] predicts seq[j + 1]; what was read before (if anything) predicts seq[0]
        start = len(seq) - len(target)
        predicting = logits[start - 1:-1] if start else torch.cat([first, logits[:-1]])
        predicted = predicting.argmax(-1).tolist()
        return [p == t for p, t in zip(predicted, target)]

    def hits(self, user_text: str, target: list[int], template: bool = True) -> list[bool]:
        """:func:`target_hits` of ``target`` after this reader's memory and the prompt, framed as
        :meth:`answer` frames it."""
        prompt, at = framed_prompt(self.lm, user_text, template)
        return self.hits_ids(prompt, target, at)

    def stream(self, user_text: str, max_new_tokens: int = 128, temperature: float = 0.0, seed: int = 0,
               template: bool = True) -> Iterator[int]:
        """The answer's token ids as they are generated."""
        lm = self.lm
        prompt, at = framed_prompt(lm, user_text, template)
        ctx, restore = self._open(prompt[:at])
        try:
            with torch.no_grad(), reading(lm):
                if prompt[at:]:
                    cache.extend(lm, ctx, torch.tensor([prompt[at:]], device=lm.device), keep=1)
                yield from sample(lm, ctx, max_new_tokens, temperature, seed, stop_ids(lm))
        finally:
            restore()

    def pieces(self, tokens: Iterable[int], ids: list[int]) -> Iterator[str]:
        """The text of ``tokens`` piece by piece as they come (each token is appended to ``ids``)."""
        emitted = ""
        for token in tokens:
            ids.append(token)
            text = self.lm.tokenizer.decode(ids, skip_special_tokens=True)
            # Hold back a trailing replacement char: a multi-byte character may be half-decoded.
            if not text.endswith("\ufffd") and len(text) > len(emitted):
                yield text[len(emitted):]
                emitted = text
        text = self.lm.tokenizer.decode(ids, skip_special_tokens=True)
        if len(text) > len(emitted):
            yield text[len(emitted):]

    def answer(self, user_text: str, max_new_tokens: int = 128, temperature: float = 0.0,
               on_text: Callable[[str], None] | None = None, seed: int = 0, template: bool = True) -> Answer:
        start = time.perf_counter()
        first: list[float] = []

        def timed() -> Iterator[int]:
            for token in self.stream(user_text, max_new_tokens, temperature, seed, template):
                if not first:
                    first.append(time.perf_counter() - start)
                yield token

        ids: list[int] = []
        for piece in self.pieces(timed(), ids):
            if on_text:
                on_text(piece)
        text = self.lm.tokenizer.decode(ids, skip_special_tokens=True)
        return Answer(text=text.strip(), ids=ids, tokens=len(ids), seconds=time.perf_counter() - start,
                      first_token_seconds=first[0] if first else None)


def reconstruct(lm: LoadedModel, memory: torch.Tensor, lengths: list[int], space: str = "embed") -> list[list[int]]:
    """Greedy-decode each segment from its own memory alone: ``[prefix; M_s; lead]`` -> its tokens.

    Decoding runs exactly ``lengths[s]`` tokens (no stop token), all segments as one batch.
    """
    with torch.no_grad():
        ctx = SPACES[space].context(lm, memory)
        out = greedy(lm, ctx, max(lengths))
    return [out[s, :n].tolist() for s, n in enumerate(lengths)]
